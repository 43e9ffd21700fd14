"""Issue 5, safety: a build run twice at once, with other settings, on a complete store or on a
folder that is not a store; an incomplete store refused by verify and the reader; the build
bench's pieces."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers.processes import kill9
from helpers.runs import (
    DEADLINE,
    HELD_VIDEO,
    HeldFrame,
    frame_held,
    planning_blocked,
    resume,
    run_build,
    start_build,
    wait_for,
)
from helpers.stores import CLI, assert_same_store, build_store, records

from prebake.build import BuildOptions, build
from prebake.errors import StoreError
from prebake.store.layout import BUILD_DIR, StoreDir
from prebake.store.lock import StoreLock


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
    ]  # --limit and --videos select what to add: tests/build/test_growing_store.py
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
def incomplete(src: Path, module_folder: Path) -> Path:
    """A store whose build was killed mid-bake (do not modify it)."""
    out = module_folder / "store.zarr"
    with frame_held(src / "frames" / "JPEGImages" / HELD_VIDEO) as held:
        process = start_build(src, out)
        held.wait_read(process)  # the last unit is held: the build cannot finish
        kill9(process)
    assert process.returncode == -9 and len(records(out)) < 7
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


def test_verify_and_info_on_a_store_a_running_build_holds(
    src: Path, tmp_path: Path, held_frame: HeldFrame
) -> None:
    """While a build runs, verify says so (host, pid) and info shows its progress; once it is
    killed, verify says to rerun it and info that no build runs."""
    out = tmp_path / "store.zarr"
    process = start_build(src, out)
    held_frame.wait_read(process)
    wait_for(lambda: len(records(out)) == 6, process, "the six other videos are committed")
    holder = f"host {socket.gethostname()}, pid {process.pid}"

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=DEADLINE)

    verified = command("verify", str(out))
    assert verified.returncode == 2 and verified.stderr.count("\n") == 1, verified.stderr
    assert f"store is being built right now ({holder}" in verified.stderr
    assert "wait for that build to finish" in verified.stderr
    described = command("info", str(out))
    assert described.returncode == 0, described.stderr
    assert f"build: 6 of 7 videos committed; running now ({holder})" in described.stdout
    assert "does not match the schema" not in described.stdout  # a build is not damage
    described_json = json.loads(command("info", str(out), "--json").stdout)
    assert described_json["metadata_problems"] is None
    progress = described_json["progress"]
    assert (progress["videos_planned"], progress["videos_committed"]) == (7, 6)
    assert progress["running"]["pid"] == process.pid
    kill9(process)
    verified = command("verify", str(out))
    assert verified.returncode == 2 and "rerun the same prebake build" in verified.stderr
    assert "no build is running" in command("info", str(out)).stdout


def test_reader_refuses_an_incomplete_store(incomplete: Path) -> None:
    reader = pytest.importorskip("prebake.reader")
    with pytest.raises(StoreError, match="incomplete"):
        reader.PrebakedDataset(incomplete)


def test_build_bench_pieces_on_a_small_source(tmp_path: Path) -> None:
    """The benchmark's parts (prebake bench --build-src) on two short 720p videos, so they do
    not rot: the full benchmark takes a minute or two and is not part of the tests."""
    from prebake.bench.build import (
        BuildRun,
        bare_compute,
        build_verdicts,
        decoder_speed,
        format_build,
        resize_speeds,
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
    speeds = resize_speeds(src)  # refuses paths that give other rows than Pillow's
    assert set(speeds) >= {"pillow", "torch_cpu"} and all(ms > 0 for ms in speeds.values())
    torched = run_build(
        src, tmp_path / "torch.zarr", workers=1, extra=("--resize", "torch"), keep=True
    )
    assert torched.seconds > 0 and (tmp_path / "torch.zarr" / "zarr.json").is_file()
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
            "torch_cpu_2": 24.0,
        },
        "ratios": {"scaling": 1.8, "overhead": 0.75, "resize_share": 0.6},
        "resize_ms_per_frame": {"pillow": 27.0, "torch_cpu": 30.0},
        "cores_used": {"workers_1": 1.0, "workers_2": 1.8, "torch_cpu_2": 1.8},
        "cpu_ms_per_frame": {
            "bare_compute": 45.0,
            "workers_1": 57.0,
            "workers_2": 58.0,
            "torch_cpu_2": 66.0,
        },
        "rss": {"short": memory, "long": run.memory(40)},
    }
    results["verdicts"] = build_verdicts(results)
    lines = format_build(results)
    assert any(
        line.startswith("  decoder (PyAV as a build decodes)") and "200.0 video" in line
        for line in lines
    )
    assert "  PASS  2 workers / 1 worker             1.80 x   (target >= 1.6 x)" in lines
    assert "  PASS  1 worker / bare compute          0.75 x   (target >= 0.7 x)" in lines
    assert (
        "    ... --resize torch --device cpu           24.0 frames/s (0.89 x Pillow's; CPU ms per frame 66.0)"
        in lines
    )
    assert (
        "  resize step per frame (both sizes, stored forms), one core: Pillow 27.0 ms, "
        "torch on cpu 30.00 ms (0.90 x Pillow's speed)" in lines
    )
    assert (
        "  Pillow's resize step is 60 % of a 1-worker build's CPU per frame: with it free "
        "(on a GPU), the same cores bake at most 2.50 x faster" in lines
    )
