"""Issue 5, resume: real `prebake build` processes killed (SIGKILL, a worker too), interrupted
(SIGINT) or stopped by a full disk; every resumed store must be bitwise identical to an
uninterrupted build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.processes import children_of, kill9
from helpers.runs import (
    FRAMES_PER_SHARD,
    planning_blocked,
    resume,
    run_build,
    start_build,
    wait_for,
)
from helpers.stores import assert_same_store, records

from prebake.errors import StoreError
from prebake.store.layout import BUILD_DIR, StoreDir
from prebake.store.plan import UnitPlan
from prebake.store.schema import array_specs


def test_kill_during_planning_then_resume(src: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "store.zarr"
    lock = out / BUILD_DIR / "lock"
    with planning_blocked(src):
        process = start_build(src, out, workers=2)
        wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers start")
        kill9(process)
    assert lock.is_file() and not (out / BUILD_DIR / "plan.json").exists()
    with pytest.raises(StoreError, match="incomplete"):
        StoreDir(out).require_complete()
    resume(src, out)
    assert_same_store(out, reference)


def test_kill_after_some_units_then_resume(src: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "store.zarr"
    process = start_build(src, out)
    wait_for(lambda: len(records(out)) >= 2, process, "two units are committed")
    kill9(process)
    assert 2 <= len(records(out)) < 6
    resume(src, out)
    assert_same_store(out, reference)


def test_kill_inside_a_unit_then_resume(src: Path, reference: Path, tmp_path: Path) -> None:
    """Some shards of a unit are in place, its record is not: the unit is redone."""
    out = tmp_path / "store.zarr"
    plan_path = out / BUILD_DIR / "plan.json"
    process = start_build(src, out)
    wait_for(plan_path.is_file, process, "the plan is written")
    units = [UnitPlan.from_json(u) for u in json.loads(plan_path.read_text())["units"]]
    # Units are baked longest first: the last in plan order is the first baked.
    unit = max(units, key=lambda u: (len(u.frame_indices), -u.index))
    second_shard = unit.frame_row // FRAMES_PER_SHARD + 1
    shard = StoreDir(out).shard_path(array_specs()["g_pixel_values"], second_shard)
    record = out / BUILD_DIR / "units" / f"{unit.index:07d}.json"
    wait_for(shard.is_file, process, "a unit's second shard is written")
    kill9(process)
    assert shard.is_file() and not record.exists(), "the kill was meant to land inside the unit"
    resume(src, out)
    assert_same_store(out, reference)


def test_kill_with_two_workers_then_resume_with_two(
    src: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store.zarr"
    process = start_build(src, out, workers=2)
    wait_for(lambda: len(records(out)) >= 1, process, "a unit is committed")
    kill9(process)
    resume(src, out, workers=2)
    assert_same_store(out, reference)


def test_two_workers_give_the_same_store_as_one(src: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "store.zarr"
    result = run_build(src, out, workers=2)
    assert result.returncode == 0, result.stderr
    assert_same_store(out, reference)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_cleanly_and_resumes(
    src: Path, reference: Path, tmp_path: Path, workers: int
) -> None:
    out = tmp_path / "store.zarr"
    process = start_build(src, out, workers=workers)
    wait_for(lambda: len(records(out)) >= 1, process, "a unit is committed")
    os.killpg(process.pid, signal.SIGINT)  # the whole group, as a terminal's Ctrl-C
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "interrupted" in lines[0] and "run the same command again to resume" in lines[0]
    assert "Traceback" not in stderr
    assert (out / BUILD_DIR / "lock").read_text() == "", "the lock was not released"
    # Another setting is refused on the incomplete store; the same command finishes it.
    other = run_build(src, out, "--frames-per-shard", "3", workers=workers)
    assert other.returncode == 2
    assert "frames_per_shard: store 2, this command 3" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    again = run_build(src, out, workers=workers)
    assert again.returncode == 0, again.stderr
    assert_same_store(out, reference)


def test_ctrl_c_while_planning(src: Path, reference: Path, tmp_path: Path) -> None:
    """Workers being spawned get the Ctrl-C too, and must not print tracebacks."""
    out = tmp_path / "store.zarr"
    with planning_blocked(src):
        process = start_build(src, out, workers=2)
        wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers start")
        time.sleep(0.1)  # the workers are starting: importing their modules
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted while planning" in lines[0], stderr
    assert "run the same command again" in lines[0]
    assert not out.exists(), "nothing was committed: the build leaves nothing behind"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB tmpfs (needs root and mount rights; skipped elsewhere), grown by remounting."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_stops_the_build_and_resumes(
    src: Path, reference: Path, small_disk: Path
) -> None:
    """A full disk is the store's fault, not the videos': the build stops (exit 2, one line),
    records no video as failed, and resumes once there is room."""
    out = small_disk / "store.zarr"
    result = run_build(src, out, workers=2)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "No space left on device" in result.stderr
    failed = [r for r in records(out) if json.loads(r.read_text())["status"] != "ok"]
    assert failed == []
    subprocess.run(["mount", "-o", "remount,size=600m", str(small_disk)], check=True)
    again = run_build(src, out, workers=2)
    assert again.returncode == 0, again.stderr
    assert_same_store(out, reference)


def test_a_worker_killed_mid_unit_does_not_stop_the_build(
    src: Path, reference: Path, tmp_path: Path
) -> None:
    """A worker that dies (a decoder crash, the OOM killer) costs only a retry: the units it
    may have been baking are redone each in a worker of its own, and the store is whole."""
    out = tmp_path / "store.zarr"
    process = start_build(src, out, workers=2)
    wait_for(lambda: len(records(out)) >= 1, process, "a unit is committed")
    workers = [
        pid
        for pid in children_of(process.pid)
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert_same_store(out, reference)
