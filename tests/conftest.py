"""Shared fixtures: synthetic SA-V samples in each layout, stores built from them, the real fixtures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from prebake.build import BuildOptions, build
from prebake.demo import SampleObject, SampleVideo, write_sample

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_SAV = SHARED / "fixtures" / "sav_real"
REAL_VIDEO = SHARED / "fixtures" / "real_video" / "01_dog.mp4"
CLI = [sys.executable, "-c", "from prebake.cli import main; main()"]  # the command, in a subprocess


def cli_build(
    src: Path, out: Path, *extra: str, workers: int, frames_per_shard: int, items_per_shard: int
) -> list[str]:
    """A quiet `prebake build` command line with every masklet and the given shard sizes."""
    return [
        *CLI, "build", "--src", str(src), "--out", str(out), "--workers", str(workers), "--masklets", "all",
        "--frames-per-shard", str(frames_per_shard), "--items-per-shard", str(items_per_shard), "-q", *extra,
    ]  # fmt: skip


def three_object_videos(
    prefix: str, width: int, height: int, first_length: int, step: int
) -> list[SampleVideo]:
    """Six videos of unequal lengths, each with two manual masklets and one auto."""
    disc = SampleObject("manual", "disc", (230, 60, 40), (0.3, 0.4), (0.01, 0.004), 0.15)
    box = SampleObject("manual", "box", (40, 200, 90), (0.6, 0.6), (-0.008, -0.006), 0.12)
    auto = SampleObject("auto", "box", (30, 80, 220), (0.35, 0.45), (0.009, 0.003), 0.2)
    return [
        SampleVideo(f"{prefix}{i:02d}", width, height, first_length + step * i, (disc, box, auto))
        for i in range(6)
    ]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def kill9(process: subprocess.Popen[str]) -> None:
    """SIGKILL the build and check that its workers die with it (no orphan keeps writing)."""
    workers = children_of(process.pid)
    process.kill()
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "worker processes outlived the killed build"
        time.sleep(0.01)


def items_by_key(root: zarr.Group) -> dict[tuple[str, int, str, int], tuple[Any, ...]]:
    """Every item of a store by (video id, frame index, masklet type, masklet id): its four
    rows' bytes, area and prompt cells, read through zarr-python (not prebake's reader). Two
    stores of one source hold the same items, whatever their order (a store that grew)."""
    ids = root["videos/video_id"][:]
    kinds = root.attrs["prebake"]["masklet_types"]
    names = ("video", "frame_index", "masklet_type", "masklet_id", "frame_row", "mask_row")
    table = {name: root[f"items/{name}"][:] for name in (*names, "area", "prompt_cells")}
    found = {}
    for i in range(len(table["video"])):
        key = (
            str(ids[table["video"][i]]),
            int(table["frame_index"][i]),
            str(kinds[int(table["masklet_type"][i])]),
            int(table["masklet_id"][i]),
        )
        frame, mask = int(table["frame_row"][i]), int(table["mask_row"][i])
        found[key] = (
            *(
                np.asarray(root[name][frame]).tobytes()
                for name in ("pixel_values", "g_pixel_values")
            ),
            *(np.asarray(root[name][mask]).tobytes() for name in ("masks", "prompt_masks")),
            int(table["area"][i]),
            int(table["prompt_cells"][i]),
        )
    return found


def build_store(src: Path, out: Path, **options: object) -> Path:
    """Build quietly with small shards, so every video spans several shards."""
    settings: dict[str, object] = {
        "workers": 1,
        "masklets": "all",
        "frames_per_shard": 4,
        "items_per_shard": 8,
        "progress": False,
    }
    settings.update(options)
    build(BuildOptions(src=src, out=out, **settings))  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def sample_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The default sample written in each of the three layouts."""
    root = tmp_path_factory.mktemp("sources")
    return {layout: write_sample(root / layout, layout) for layout in ("train", "frames", "png")}


@pytest.fixture(scope="session")
def train_store(sample_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete store of the train-layout sample, manual and auto masklets (do not modify it)."""
    return build_store(sample_sources["train"], tmp_path_factory.mktemp("stores") / "train.zarr")


@pytest.fixture(scope="session")
def real_sav() -> Path:
    if not REAL_SAV.is_dir():
        pytest.skip("../shared/fixtures/sav_real is absent")
    return REAL_SAV
