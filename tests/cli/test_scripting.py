"""Issue 14: the command as scripts and logs use it: `--version`, `build --json`, progress in a
log (stderr not a terminal), failures named as they happen, the resume summary, workers capped,
one default for each build option, and bench verdicts only for its documented targets."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import typer.main
import zarr
from helpers.stores import CLI, video_ids
from typer.testing import CliRunner

import prebake
from prebake.bench import format_bench
from prebake.bench.targets import BUILD_TARGETS, LOADER_TARGETS, READER_TARGETS
from prebake.build import BuildOptions
from prebake.build.options import default_workers
from prebake.cli import app
from prebake.demo import default_sample
from prebake.progress import LOG_INTERVAL_SECONDS

BROKEN = "sav_900003"  # truncated in the copy of the sample: it fails to bake


def prebake_command(*args: str) -> subprocess.CompletedProcess[str]:
    """The command with stdout and stderr piped: stderr is a log, not a terminal."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_version() -> None:
    result = prebake_command("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"prebake {importlib.metadata.version('prebake')}\n"
    assert prebake.__version__ == importlib.metadata.version("prebake")


@pytest.fixture
def broken_sample(sample_sources: dict[str, Path], tmp_path: Path) -> Path:
    """The train sample with one video truncated."""
    src = Path(shutil.copytree(sample_sources["train"], tmp_path / "src"))
    mp4 = src / f"{BROKEN}.mp4"
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    return src


def stored_bytes(store: Path) -> int:
    """Bytes of every file under the store, by os.walk (the build folder is gone)."""
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(store)
        for name in names
    )


def test_build_json_logs_progress_and_names_failures(broken_sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "store.zarr"
    result = prebake_command(
        "build", "--src", str(broken_sample), "--out", str(out), "--masklets", "all",
        "--workers", "8", "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # one JSON document, nothing else on stdout
    ok_videos = [video for video in default_sample() if video.video_id != BROKEN]
    frames = sum(math.ceil(video.frame_count / 4) for video in ok_videos)
    assert (report["videos"], report["videos_failed"], report["videos_baked"]) == (3, 1, 2)
    assert report["frames"] == report["frames_baked"] == frames
    root = zarr.open_group(out, mode="r")
    assert report["items"] == len(root["items/mask_row"][:])
    assert report["bytes"] == stored_bytes(out) and report["seconds"] > 0
    assert report["ok"] is False and report["built"] is True
    (failure,) = report["failures"]
    assert failure["video_id"] == BROKEN and failure["reason"].startswith(str(failure["path"]))
    # stderr, a log: plain lines, the failure named, the workers capped at the videos to bake
    log = result.stderr.splitlines()
    assert "\r" not in result.stderr
    assert any(line.startswith("baking: ") for line in log), log
    assert f"failed: {BROKEN}: {failure['reason']}" in log
    assert "note: 3 videos to bake: 3 workers, not 8" in log
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["prebake"]
    assert attrs["build"]["workers"] == 3


def test_a_failure_is_named_when_it_happens(broken_sample: Path, tmp_path: Path) -> None:
    """In the log, the failed video's line comes before the summary at the end; progress is
    a line when the bar starts, one every LOG_INTERVAL_SECONDS at most, and one at its end."""
    out = tmp_path / "store.zarr"
    started = time.monotonic()
    result = prebake_command(
        "build", "--src", str(broken_sample), "--out", str(out), "--workers", "1"
    )
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    log = result.stderr.splitlines()
    named = [i for i, line in enumerate(log) if line.startswith(f"failed: {BROKEN}: ")]
    summary = log.index("1 videos failed and were skipped:")
    assert len(named) == 1 and named[0] < summary
    baking = [line for line in log if line.startswith("baking: ")]
    assert 2 <= len(baking) <= 2 + seconds // LOG_INTERVAL_SECONDS, log
    assert baking[0].startswith("baking:   0%") and "videos 3/3, failed 1" in baking[-1], log


def test_videos_file_takes_blank_lines_and_comments(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    listing = tmp_path / "videos.txt"
    listing.write_text("# the landscape one\n\nsav_900001   # first\n  \n# sav_900002\n")
    out = tmp_path / "store.zarr"
    result = prebake_command(
        "build", "--src", str(sample_sources["train"]), "--out", str(out),
        "--videos", str(listing), "--json", "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["videos"] == 1
    assert video_ids(zarr.open_group(out, mode="r")) == ["sav_900001"]


def test_build_options_and_the_command_share_their_defaults() -> None:
    """Every `prebake build` option defaults to BuildOptions' default of the same setting."""
    command = typer.main.get_command(app).commands["build"]  # type: ignore[attr-defined]
    cli = {param.name: param.default for param in command.params}
    options = BuildOptions(src="x", out="y")
    renamed = {"match_pillow": "pillow_rule", "videos": "video_ids"}
    for name, default in cli.items():
        field = renamed.get(name, name)
        if name == "workers":  # None: the machine's cores, as BuildOptions' default
            assert default is None and options.workers == default_workers()
        elif name == "quiet":
            assert default is False and options.progress is True
        elif name in ("src", "out", "as_json"):
            continue  # required, or how the report is printed
        else:
            assert getattr(options, field) == default, name


def test_bench_verdicts_only_for_documented_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """PASS or FAIL is printed for the documented targets alone, and a FAIL exits 1."""
    results = {
        "reader": reader_results(all_vs_floor=0.5),  # below its 0.8 target
    }
    documented = {t.label for t in READER_TARGETS} | {t.label for t in BUILD_TARGETS}
    text = format_bench(results)
    verdicts = [line for line in text.splitlines() if line.lstrip().startswith(("PASS", "FAIL"))]
    assert len(verdicts) == 3 and all(line[8:36].strip() in documented for line in verdicts)
    assert sum(line.lstrip().startswith("FAIL") for line in verdicts) == 1
    monkeypatch.setattr("prebake.bench.run_bench", lambda *args, **kwargs: results)
    failed = CliRunner().invoke(app, ["bench", "--discovery", "10"])
    assert failed.exit_code == 1
    assert "1 target missed: all fields / memmap floor" in failed.output
    results["reader"] = reader_results(all_vs_floor=0.9)
    passed = CliRunner().invoke(app, ["bench", "--discovery", "10"])
    assert passed.exit_code == 0 and "FAIL" not in passed.output


def test_bench_loader_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader's targets (all four fields) are printed PASS or FAIL; a miss exits 1."""
    results = {"loader": loader_results(all_vs_dataloader=5.0, all_vs_floor=0.7)}
    text = format_bench(results)
    verdicts = [line for line in text.splitlines() if line.lstrip().startswith(("PASS", "FAIL"))]
    assert [line[8:36].strip() for line in verdicts] == [t.label for t in LOADER_TARGETS]
    assert [line.lstrip()[:4] for line in verdicts] == ["PASS", "FAIL"]
    monkeypatch.setattr("prebake.bench.run_bench", lambda *args, **kwargs: results)
    failed = CliRunner().invoke(app, ["bench", "--discovery", "10"])
    assert failed.exit_code == 1 and "loader / floor, same threads" in failed.output
    results["loader"] = loader_results(all_vs_dataloader=5.0, all_vs_floor=0.9)
    assert CliRunner().invoke(app, ["bench", "--discovery", "10"]).exit_code == 0


def loader_results(all_vs_dataloader: float, all_vs_floor: float) -> dict[str, Any]:
    """What `bench_loader` returns, with these figures (no measurement is made here)."""
    speed = {"loader": 800.0, "dataloader": 800.0 / all_vs_dataloader}
    speed |= {"floor_threads": 800.0 / all_vs_floor, "floor_1": 700.0, "floor_pread": 850.0}
    ratios = {}
    for label in ("all", "loop1"):
        ratios[f"{label}_vs_dataloader"] = all_vs_dataloader
        ratios[f"{label}_vs_floor"] = all_vs_floor
        ratios[f"{label}_vs_floor_1"] = 800.0 / 700.0
        ratios[f"{label}_vs_floor_pread"] = 800.0 / 850.0
    return {
        "store": "s.zarr",
        "batch_size": 8,
        "threads": 2,
        "items_per_s": {"all": {**speed, "reads": 232}, "loop1": {**speed, "reads": 232}},
        "ratios": ratios,
        "verdicts": [t.check(ratios[t.key]) for t in LOADER_TARGETS],
        "memory": {"vm_rss": [650.0] * 3, "rss_anon_in_use": [458.0] * 3, "items_per_epoch": 58},
    }


def reader_results(all_vs_floor: float) -> dict[str, Any]:
    """What `bench_reader` returns, with these figures (no measurement is made here)."""
    from prebake.bench.targets import READER_TARGETS

    ratios = {"all_vs_floor": all_vs_floor, "all_vs_zarr": 6.0, "loop1_vs_all": 3.0}
    rss = [200.0, 200.5, 200.4]
    return {
        "store": "s.zarr",
        "store_items": 58,
        "reads": 20,
        "read_paths": {"pixel_values": "pread"},
        "items_per_s": {
            "all_fields": 800.0,
            "loop1_fields": 2400.0,
            "memmap_floor": 800.0 / all_vs_floor,
            "zarr_python": 800.0 / 6.0,
        },
        "ratios": ratios,
        "verdicts": [t.check(ratios[t.key]) for t in READER_TARGETS if t.key in ratios],
        "worker_rss": {
            "items_per_epoch": 400,
            "max_open_shards": 4,
            **{key: rss for key in ("vm_rss", "vm_rss_in_use", "rss_anon", "rss_anon_in_use")},
        },
        "allocator": {"glibc defaults": {"items_per_s": 600.0, "faults_per_item": 376.0}},
    }


def test_bench_says_what_it_measures_before_it_measures() -> None:
    """A run lasts from seconds to minutes: each part is named on stderr as it starts."""
    from prebake.bench import run_bench

    heard: list[str] = []
    results = run_bench(None, discovery_files=10, echo=heard.append)
    assert heard == ["bench: discovery of a tree of 10 files"] and "discovery" in results


@pytest.mark.parametrize("files", [1, 5, 100])
def test_bench_discovery_of_a_small_tree(files: int) -> None:
    """A tree too small for a whole frame folder still has exactly the files asked for."""
    from prebake.bench.sources import bench_discovery

    assert bench_discovery(files)["files"] == files
