"""The package's shape: a wheel that carries the schema documents."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "prebake"


def test_the_wheel_carries_the_schema_documents(tmp_path: Path) -> None:
    """`pip wheel` of the project holds the package and its schema documents (package data).
    Built from a copy, so that setuptools' build folders stay out of the checkout."""
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(ROOT / "src", project / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), "--quiet", str(project)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("prebake-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    schemas = sorted(path.name for path in (PACKAGE / "schemas").glob("*.json"))
    assert schemas, "the package holds its schema documents"
    for schema in schemas:
        assert f"prebake/schemas/{schema}" in names
    assert "prebake/cli.py" in names and "prebake/py.typed" in names
