"""Run the prebake command from a checkout: `python cli.py build --src ... --out ...`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # the package, if not installed

from prebake.cli import main

if __name__ == "__main__":
    main()
