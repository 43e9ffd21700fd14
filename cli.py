"""Run the prebake command from a checkout: `python cli.py build --src ... --out ...`."""

from prebake.cli import main

if __name__ == "__main__":
    main()
