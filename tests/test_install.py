"""Issue 14: prebake as users install and run it: imported from beside a clone, and the built
wheel installed into a fresh virtual environment running `prebake demo` and `prebake verify`
(which tests `prebake demo` itself, the README's first command)."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import prebake


def test_import_from_the_folder_that_holds_the_clone(tmp_path: Path) -> None:
    """A script beside a clone folder named prebake/ imports the installed package (the
    folder is on sys.path as the script's own, and must not shadow it)."""
    (tmp_path / "prebake").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", "from prebake import PrebakedDataset; print(PrebakedDataset)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "prebake.reader.dataset.PrebakedDataset" in result.stdout


def test_the_wheel_in_a_fresh_venv_runs_demo_and_verify(
    project_wheel: Path, tmp_path: Path
) -> None:
    """The wheel, built offline, installed without its dependencies into a new venv that sees
    this venv's packages (a .pth line; not its editable prebake, whose finder is a .pth of its
    own and is not run for a path added that way): `prebake` is the wheel's, run outside the
    repository."""
    wheel = project_wheel
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (Path(purelib) / "this_venv.pth").write_text("\n".join(sorted(ours)) + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    command = venv / "bin" / "prebake"
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(command), *args], cwd=work, capture_output=True, text=True, timeout=300
        )

    version = run("--version")
    assert version.stdout == f"prebake {prebake.__version__}\n", version.stderr
    where = subprocess.run(
        [str(python), "-c", "import prebake.verify, prebake; print(prebake.__file__)"],
        cwd=work, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(purelib), where.stdout  # the wheel's, not the checkout's
    demo = run("demo", "--out", "demo-out")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    lines = demo.stdout.splitlines()
    assert lines[0].startswith("sample: 3 SA-V-format videos")
    assert lines[1].startswith("build: 3 videos, 21 frames, 58 items")
    assert lines[2] == "verify: demo-out/store.zarr: OK"
    assert "batch of 4 items through DataLoader(num_workers=2):" in lines
    assert any(line.split()[:3] == ["masks", "torch.float32", "(4,"] for line in lines), lines
    verified = run("verify", "demo-out/store.zarr", "--src", "demo-out/sample", "--json", "-q")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["source"]["items_checked"] == 16
