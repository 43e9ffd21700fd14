"""Issue 5, resume: real `prebake build` processes killed (SIGKILL, a worker too), interrupted
(SIGINT) or stopped by a full disk; every resumed store must be bitwise identical to an
uninterrupted build. Each signal lands while a unit is held open (a named pipe in place of one
of its frames: `held_frame`), never in a window of time, and each test checks that the signal
was seen and the held unit baked again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.processes import children_of, kill9
from helpers.runs import (
    DEADLINE,
    FRAMES_PER_SHARD,
    HELD_VIDEO,
    HELD_VIDEO_FRAMES,
    HeldFrame,
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

VIDEOS = 7  # six mp4s and HELD_VIDEO


def planned_units(out: Path) -> list[UnitPlan]:
    plan = json.loads((out / BUILD_DIR / "plan.json").read_text())
    return [UnitPlan.from_json(unit) for unit in plan["units"]]


def held_unit(out: Path) -> UnitPlan:
    (unit,) = [u for u in planned_units(out) if u.video_id == HELD_VIDEO]
    return unit


def record_of(out: Path, unit: UnitPlan) -> Path:
    return out / BUILD_DIR / "units" / f"{unit.index:07d}.json"


def test_kill_during_planning_then_resume(src: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "store.zarr"
    lock = out / BUILD_DIR / "lock"
    with planning_blocked(src):
        process = start_build(src, out, workers=2)
        wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers start")
        kill9(process)
    assert process.returncode == -signal.SIGKILL
    assert lock.is_file() and not (out / BUILD_DIR / "plan.json").exists()
    with pytest.raises(StoreError, match="incomplete"):
        StoreDir(out).require_complete()
    report = resume(src, out)
    assert (report.resumed, report.videos_baked) == (0, VIDEOS)  # planned and baked afresh
    assert_same_store(out, reference)


def test_kill_inside_a_unit_then_resume(
    src: Path, reference: Path, tmp_path: Path, held_frame: HeldFrame
) -> None:
    """Killed after six units are committed, inside the seventh: its first shard is in place,
    its record is not. The resumed run keeps the six and bakes the seventh again."""
    out = tmp_path / "store.zarr"
    process = start_build(src, out)
    held_frame.wait_read(process)
    unit = held_unit(out)
    first_shard = StoreDir(out).shard_path(
        array_specs()["g_pixel_values"], unit.frame_row // FRAMES_PER_SHARD
    )
    wait_for(lambda: len(records(out)) == VIDEOS - 1, process, "the other units are committed")
    wait_for(first_shard.is_file, process, "the held unit's first shard is in place")
    assert not record_of(out, unit).exists()
    kill9(process)
    assert process.returncode == -signal.SIGKILL
    assert len(records(out)) == VIDEOS - 1 and not record_of(out, unit).exists()
    held_frame.restore()
    report = resume(src, out)
    assert (report.resumed, report.videos_baked) == (VIDEOS - 1, 1)
    assert report.frames_baked == HELD_VIDEO_FRAMES
    assert_same_store(out, reference)


def test_kill_with_two_workers_then_resume_with_two(
    src: Path, reference: Path, tmp_path: Path, held_frame: HeldFrame
) -> None:
    out = tmp_path / "store.zarr"
    process = start_build(src, out, workers=2)
    held_frame.wait_read(process)
    unit = held_unit(out)
    kill9(process)
    assert process.returncode == -signal.SIGKILL and not record_of(out, unit).exists()
    committed = len(records(out))
    held_frame.restore()
    report = resume(src, out, workers=2)
    assert report.resumed == committed and report.videos_baked == VIDEOS - committed >= 1
    assert_same_store(out, reference)


def test_two_workers_give_the_same_store_as_one(src: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "store.zarr"
    result = run_build(src, out, workers=2)
    assert result.returncode == 0, result.stderr
    assert_same_store(out, reference)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_cleanly_and_resumes(
    src: Path, reference: Path, tmp_path: Path, workers: int, held_frame: HeldFrame
) -> None:
    out = tmp_path / "store.zarr"
    process = start_build(src, out, workers=workers)
    held_frame.wait_read(process)
    unit = held_unit(out)
    os.killpg(process.pid, signal.SIGINT)  # the whole group, as a terminal's Ctrl-C
    _, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "interrupted" in lines[0] and "run the same command again to resume" in lines[0]
    committed = len(records(out))
    assert f"{committed} of {VIDEOS} videos are committed" in lines[0]
    assert not record_of(out, unit).exists(), "the held unit was in flight"
    left = [u for u in planned_units(out) if not record_of(out, u).exists()]
    assert "Traceback" not in stderr
    assert (out / BUILD_DIR / "lock").read_text() == "", "the lock was not released"
    held_frame.restore()
    # Another setting is refused on the incomplete store; the same command finishes it.
    other = run_build(src, out, "--frames-per-shard", "3", workers=workers)
    assert other.returncode == 2
    assert "frames_per_shard: store 2, this command 3" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    again = run_build(src, out, workers=workers)
    assert again.returncode == 0, again.stderr
    # The summary counts this run's videos and frames, not the store's.
    frames_left = sum(len(u.frame_indices) for u in left)
    videos = f"{len(left)} more video" + "s" * (len(left) != 1)
    assert f"baked {videos}, {frames_left} frames in " in again.stdout, again.stdout
    kept = f"{committed} video was" if committed == 1 else f"{committed} videos were"
    assert f"({kept} already baked)" in again.stdout
    assert_same_store(out, reference)


def test_ctrl_c_while_planning(src: Path, reference: Path, tmp_path: Path) -> None:
    """Workers being spawned get the Ctrl-C too, and must not print tracebacks."""
    out = tmp_path / "store.zarr"
    with planning_blocked(src):
        process = start_build(src, out, workers=2)
        wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers start")
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=DEADLINE)
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
    src: Path, reference: Path, tmp_path: Path, held_frame: HeldFrame
) -> None:
    """A worker that dies (a decoder crash, the OOM killer) costs only a retry: the units it
    may have been baking are redone each in a worker of its own, and the store is whole."""
    out = tmp_path / "store.zarr"
    process = start_build(src, out, workers=2)
    held_frame.wait_read(process)
    (worker,) = held_frame.wait_readers(process.pid, process)
    unit = held_unit(out)
    held_frame.restore()  # the retry reads the real frame; the killed worker never got it
    os.kill(worker, signal.SIGKILL)
    _, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, stderr
    assert not Path(f"/proc/{worker}").exists()
    # The held unit's worker never read its frame 8: the store holds the video whole (as the
    # reference does), so the unit was baked again after the kill.
    assert unit.video_id == HELD_VIDEO
    assert_same_store(out, reference)
