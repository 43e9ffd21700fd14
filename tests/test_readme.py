"""Every python block of the README runs as pasted (issue 14, item 2): alone, in a fresh
interpreter on this CPU machine, in a folder holding the demo's store as `store.zarr`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from prebake.build import BuildOptions, build
from prebake.demo import write_sample

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DEADLINE_S = 120  # a block reads the demo store's 58 items a few times


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m[1]) for m in BLOCK.finditer(text)]


def test_the_readme_has_the_training_loops() -> None:
    code = "\n".join(block for _, block in python_blocks())
    for needed in ("PrebakedDataset(", "PrebakedLoader(", "clip_len=", "state_dict()", "dist."):
        assert needed in code, needed


@pytest.fixture(scope="module")
def demo_folder(module_folder: Path) -> Path:
    """A folder holding `store.zarr`, built from the demo's sample as `prebake demo` builds it."""
    folder = module_folder
    write_sample(folder / "sample", "train")
    build(BuildOptions(src=folder / "sample", out=folder / "store.zarr", progress=False))
    return folder


@pytest.mark.parametrize(
    ("line", "code"),
    [pytest.param(line, code, id=f"README.md:{line}") for line, code in python_blocks()],
)
def test_a_python_block_runs_as_pasted(demo_folder: Path, line: int, code: str, tmp_path: Path) -> None:  # fmt: skip
    run_in = tmp_path / "here"
    run_in.mkdir()
    (run_in / "store.zarr").symlink_to(demo_folder / "store.zarr")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=run_in,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},  # nothing of the test's setup
    )
    assert result.returncode == 0, f"README.md line {line}:\n{result.stderr[-2000:]}"
