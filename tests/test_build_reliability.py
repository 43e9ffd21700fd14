"""Issue 5, resume and safety: real `prebake build` processes killed (SIGKILL), interrupted
(SIGINT), run twice at once or with other settings; every resumed store must be bitwise
identical to an uninterrupted build."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CLI, build_store, children_of, cli_build, kill9, three_object_videos

from prebake.build import BuildOptions, build
from prebake.demo import SampleVideo, write_sample
from prebake.errors import StoreError
from prebake.store.layout import BUILD_DIR, StoreDir
from prebake.store.lock import StoreLock
from prebake.store.plan import UnitPlan
from prebake.store.schema import array_specs

FRAMES_PER_SHARD = 2  # small shards: every video spans several, so kills land between them
ITEMS_PER_SHARD = 4


def _videos() -> list[SampleVideo]:
    # Unequal lengths, so shards end part-full and units take different times.
    return three_object_videos("sav_7000", 240, 176, first_length=26, step=3)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("reliability") / "src", "train", _videos())


@pytest.fixture(scope="module")
def reference(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of an uninterrupted build, one worker."""
    out = tmp_path_factory.mktemp("reference") / "store.zarr"
    return build_store(src, out, frames_per_shard=FRAMES_PER_SHARD, items_per_shard=ITEMS_PER_SHARD)


def cli_args(src: Path, out: Path, *extra: str, workers: int = 1) -> list[str]:
    return cli_build(
        src,
        out,
        *extra,
        workers=workers,
        frames_per_shard=FRAMES_PER_SHARD,
        items_per_shard=ITEMS_PER_SHARD,
    )


def start_build(src: Path, out: Path, *extra: str, workers: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_args(src, out, *extra, workers=workers),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C would reach it
    )


def run_build(
    src: Path, out: Path, *extra: str, workers: int = 1
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_args(src, out, *extra, workers=workers), capture_output=True, text=True, timeout=120
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"build ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def records(out: Path) -> list[Path]:
    units = out / BUILD_DIR / "units"
    return sorted(units.glob("*.json")) if units.is_dir() else []


def resume(src: Path, out: Path, workers: int = 1) -> None:
    build_store(
        src,
        out,
        workers=workers,
        frames_per_shard=FRAMES_PER_SHARD,
        items_per_shard=ITEMS_PER_SHARD,
    )


def root_attrs(store: Path) -> dict[str, object]:
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]["prebake"]
    del attrs["build"]  # start/finish times and worker count: the only values allowed to differ
    return dict(attrs)


def assert_same_store(store: Path, reference: Path) -> None:
    """Every file bitwise equal, the root's attributes equal apart from build timing."""
    files = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    expected = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == expected
    assert not (store / BUILD_DIR).exists()
    assert StoreDir(store).require_complete()["state"] == "complete"
    for relative in files:
        if relative == Path("zarr.json"):
            continue
        assert (store / relative).read_bytes() == (reference / relative).read_bytes(), relative
    root = json.loads((store / "zarr.json").read_text())
    reference_root = json.loads((reference / "zarr.json").read_text())
    assert root_attrs(store) == root_attrs(reference)
    root["attributes"].pop("prebake")
    reference_root["attributes"].pop("prebake")
    assert root == reference_root


@contextlib.contextmanager
def planning_blocked(src: Path) -> Iterator[None]:
    """Replace the last video's manual JSON by a FIFO: planning blocks when it opens it, as on
    a stalled network file system, so a signal is sure to land while the build plans."""
    annotation = sorted(src.glob("*_manual.json"))[-1]
    saved, stat = annotation.read_bytes(), annotation.stat()
    annotation.unlink()
    os.mkfifo(annotation)
    try:
        yield
    finally:
        annotation.unlink()
        annotation.write_bytes(saved)
        # As it was: its modification time is part of the video's fingerprint in the store.
        os.utime(annotation, ns=(stat.st_atime_ns, stat.st_mtime_ns))


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


def test_second_build_on_the_same_store_fails_fast(
    src: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store.zarr"
    lock = out / BUILD_DIR / "lock"
    with planning_blocked(src):  # the first build holds the lock for as long as we need
        first = start_build(src, out)
        wait_for(lambda: lock.is_file() and lock.stat().st_size > 0, first, "the lock is taken")
        started = time.monotonic()
        second = run_build(src, out)
        assert time.monotonic() - started < 20
        assert first.poll() is None, "the first build should still be running"
        # The first build is killed: its lock is stale (it names a dead process) and is taken
        # over by the next build.
        kill9(first)
    assert second.returncode == 2
    message = second.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "another build is writing this store" in message
    assert f"pid {first.pid}" in message and f"host {socket.gethostname()}" in message
    assert json.loads(lock.read_text())["pid"] == first.pid
    with StoreLock(lock, out) as taken:
        assert taken.took_over is not None and taken.took_over["pid"] == first.pid
    resume(src, out)
    assert_same_store(out, reference)


def test_other_settings_are_refused_and_overwrite_starts_over(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    sample = sample_sources["train"]
    out = build_store(sample, tmp_path / "store.zarr")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other_src = shutil.copytree(sample, tmp_path / "other_src")
    refused = [
        ({"masklets": "manual"}, "masklets: store 'all', this command 'manual'"),
        ({"masklets": "auto"}, "masklets: store 'all', this command 'auto'"),
        ({"frames_per_shard": 8}, "frames_per_shard: store 4, this command 8"),
        ({"items_per_shard": 16}, "items_per_shard: store 8, this command 16"),
        ({"src": other_src}, "source root"),
    ]  # --limit and --videos select what to add: tests/test_growing_store.py
    for change, message in refused:
        options = {"src": sample, **change}
        source = options.pop("src")
        with pytest.raises(StoreError, match="built with other settings") as error:
            build_store(source, out, **options)  # type: ignore[arg-type]
        assert message in str(error.value) and "--overwrite" in str(error.value)
    cli = subprocess.run(
        [*CLI, "build", "--src", str(sample), "--out", str(out), "--masklets", "manual", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 2
    assert cli.stderr.count("\n") == 1 and "built with other settings" in cli.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    build_store(sample, out, masklets="manual", overwrite=True)
    attrs = StoreDir(out).require_complete()
    assert attrs["settings"]["params"]["masklets"] == "manual"
    assert_same_store(out, build_store(sample, tmp_path / "clean.zarr", masklets="manual"))


def test_rerun_on_a_complete_store_changes_nothing(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    sample = sample_sources["train"]
    out = build_store(sample, tmp_path / "store.zarr")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    report = build(
        BuildOptions(
            src=sample,
            out=out,
            masklets="all",
            frames_per_shard=4,
            items_per_shard=8,
            progress=False,
        )
    )
    assert report.already_complete
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # A crash between marking the store complete and removing the build folder leaves it
    # behind: the next run removes it.
    (out / BUILD_DIR / "units").mkdir(parents=True)
    (out / BUILD_DIR / "units" / "0000000.json").write_text("{}")
    assert build_store(sample, out) == out
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_refuses_a_folder_that_is_not_a_store(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "photos"
    (out / "2024").mkdir(parents=True)
    (out / "2024" / "beach.jpg").write_bytes(b"not really a jpeg")
    (out / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    before = sorted((p, p.read_bytes() if p.is_file() else b"") for p in out.rglob("*"))
    result = subprocess.run(
        [*CLI, "build", "--src", str(sample_sources["train"]), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "not a prebake store; refusing to write into it" in result.stderr
    assert sorted((p, p.read_bytes() if p.is_file() else b"") for p in out.rglob("*")) == before
    not_a_folder = tmp_path / "file.zarr"
    not_a_folder.write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        build_store(sample_sources["train"], not_a_folder)
    assert not_a_folder.read_text() == "x"


@pytest.fixture(scope="module")
def incomplete(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose build was killed mid-bake (do not modify it)."""
    out = tmp_path_factory.mktemp("incomplete") / "store.zarr"
    process = start_build(src, out)
    wait_for(lambda: len(records(out)) >= 1, process, "a unit is committed")
    kill9(process)
    return out


def test_incomplete_store_is_not_complete(incomplete: Path) -> None:
    with pytest.raises(StoreError, match=r"incomplete.*rerun the same prebake build"):
        StoreDir(incomplete).require_complete()


def test_verify_refuses_an_incomplete_store(incomplete: Path) -> None:
    pytest.importorskip("prebake.verify")
    result = subprocess.run(
        [*CLI, "verify", str(incomplete)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "incomplete" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_reader_refuses_an_incomplete_store(incomplete: Path) -> None:
    reader = pytest.importorskip("prebake.reader")
    with pytest.raises(StoreError, match="incomplete"):
        reader.PrebakedDataset(incomplete)


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


def test_build_bench_pieces_on_a_small_source(tmp_path: Path) -> None:
    """The benchmark's parts (prebake bench --build-src) on two short 720p videos, so they do
    not rot: the full benchmark takes a minute or two and is not part of the tests."""
    from prebake.bench.build import (
        BuildRun,
        bare_compute,
        decoder_speed,
        format_build,
        run_build,
        write_synthetic,
    )

    src = write_synthetic(tmp_path / "src", 2, 8)
    assert sorted(p.name for p in src.iterdir()) == [
        "sav_990000.mp4",
        "sav_990000_auto.json",
        "sav_990000_manual.json",
        "sav_990001.mp4",
        "sav_990001_auto.json",
        "sav_990001_manual.json",
    ]
    wall, cpu = bare_compute(src)
    assert wall > 0 and cpu > 0
    decoded, seconds = decoder_speed(src)
    assert decoded == 2 * 5 and seconds > 0  # frames 0 and 4 annotated: 0..4 decoded
    run = run_build(src, tmp_path / "store.zarr", workers=2)
    assert isinstance(run, BuildRun) and run.seconds > 0 and run.cpu_seconds > 0
    memory = run.memory(8)
    assert memory["processes"] >= 3  # the command and its two workers
    assert 50 < memory["largest_process_mib"] < memory["sum_of_peaks_mib"] < 1536
    assert not (tmp_path / "store.zarr").exists()
    results = {
        "source": "synthetic 1280x720",
        "videos": 2,
        "frames": 4,
        "cores": 2,
        "decoded_video_frames": 10,
        "frames_per_s": {
            "decoder": 80.0,
            "bare_compute": 20.0,
            "workers_1": 15.0,
            "workers_2": 27.0,
        },
        "ratios": {"scaling": 1.8, "overhead": 0.75},
        "cores_used": {"workers_1": 1.0, "workers_2": 1.8},
        "cpu_ms_per_frame": {"bare_compute": 45.0, "workers_1": 57.0, "workers_2": 58.0},
        "rss": {"short": memory, "long": run.memory(40)},
    }
    lines = format_build(results)
    assert any(
        line.startswith("  decoder (PyAV as a build decodes)") and "200.0 video" in line
        for line in lines
    )
    assert "  PASS  2 workers / 1 worker             1.80 x   (target >= 1.6 x)" in lines
    assert "  PASS  1 worker / bare compute          0.75 x   (target >= 0.7 x)" in lines
