"""The list of `prebake verify`'s checks: each runs a function of its family's module, each is
named in `verify --help`, and each problem a report holds names the check that found it."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

from helpers.damage import run_verify
from typer.testing import CliRunner

from prebake.cli import app
from prebake.verify import CHECKS, verify_store


def test_every_check_runs_a_function_of_its_family() -> None:
    names = [check.name for check in CHECKS]
    assert len(set(names)) == len(names)
    for check in CHECKS:
        function = check.function()
        assert function.__module__ == f"prebake.verify.{check.family}"
        assert list(inspect.signature(function).parameters) == ["context"]
    # every function over the context in the family modules is in the list
    registered = {(check.family, check.name) for check in CHECKS}
    for family in {check.family for check in CHECKS}:
        module = importlib.import_module(f"prebake.verify.{family}")
        over_context = [
            name
            for name, function in vars(module).items()
            if name.startswith("check_")
            and inspect.isfunction(function)
            and list(inspect.signature(function).parameters) == ["context"]
        ]
        for name in over_context:
            assert (family, name.removeprefix("check_")) in registered, name


def test_help_lists_every_check() -> None:
    result = CliRunner().invoke(app, ["verify", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for check in CHECKS:
        assert f"{check.name}: " in result.output


def test_the_command_line_imports_no_check() -> None:
    """`prebake --help` stays fast: the list is read without importing what the checks need."""
    code = "import sys, prebake.cli; print(sorted(m for m in sys.modules if m.startswith('prebake.verify')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "['prebake.verify', 'prebake.verify.checks']"


def test_each_problem_names_its_check(store_copy: Path) -> None:
    chunk = next(path for path in (store_copy / "pixel_values" / "c").rglob("*") if path.is_file())
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = verify_store(store_copy, progress=False)
    assert report.found and {problem.check for problem in report.found} == {"shards"}
    assert report.problems == [problem.message for problem in report.found]
    code, output = run_verify(store_copy)
    assert code == 1 and report.problems[0] in output
    # A table that cannot be read stops the checks after the tables: the damaged chunk is not
    # reached.
    (store_copy / "items" / "area" / "zarr.json").unlink()
    report = verify_store(store_copy, progress=False)
    checks = [problem.check for problem in report.found]
    assert checks[0] == "metadata" and set(checks) == {"metadata", "tables"}
