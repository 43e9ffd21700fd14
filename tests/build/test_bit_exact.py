"""Every stored value of every layout equals the independent reference (tests/reference), on the
sample, odd sizes, masklet and video selections, the real SA-V sample and a real H.264 clip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import reference
import zarr
from helpers.stores import REAL_VIDEO, build_store, video_ids
from reference.expected import assert_store_matches, expected_items

from prebake.demo import SampleObject, SampleVideo, write_sample


@pytest.mark.parametrize("layout", ["train", "frames", "png"])
def test_every_item_of_every_layout_is_bit_exact(
    layout: str, sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    src = sample_sources[layout]
    store = build_store(src, tmp_path / "store.zarr")
    frames, items = expected_items(src, layout, ("manual", "auto"))
    assert_store_matches(store, frames, items)


def odd_sample() -> list[SampleVideo]:
    """Odd and portrait sizes, late and never-visible objects, overlaps (JPEG layouts allow odd sizes)."""
    late = SampleObject(
        "manual", "disc", (200, 30, 30), (0.5, 0.5), (0.01, -0.01), 0.2, visible=(3, 10**9)
    )
    never = SampleObject("manual", "box", (0, 0, 0), (0.2, 0.2), (0.0, 0.0), 0.1, visible=(0, 0))
    under = SampleObject("manual", "box", (10, 200, 10), (0.45, 0.5), (0.0, 0.01), 0.25)
    early = SampleObject("auto", "disc", (10, 10, 250), (0.5, 0.5), (0.0, 0.0), 0.1, visible=(0, 2))
    return [
        SampleVideo("sav_000317", 317, 243, 30, (late, never, under, early)),
        SampleVideo("sav_000181", 181, 333, 21, (under, late), write_auto=False),
        SampleVideo("sav_000017", 17, 9, 5, (under,)),
    ]


@pytest.mark.parametrize("layout", ["frames", "png"])
def test_odd_sizes_late_and_empty_objects(layout: str, tmp_path: Path) -> None:
    src = write_sample(tmp_path / "src", layout, odd_sample())
    store = build_store(src, tmp_path / "store.zarr", frames_per_shard=3, items_per_shard=5)
    frames, items = expected_items(src, layout, ("manual", "auto"))
    assert_store_matches(store, frames, items)
    attrs = zarr.open_group(store, mode="r").attrs["prebake"]
    assert attrs["counts"] == {
        "videos": 3,
        "videos_failed": 0,
        "frames": len(frames),
        "items": len(items),
    }


@pytest.mark.parametrize("masklets", ["manual", "auto"])
def test_masklet_selection(masklets: str, sample_sources: dict[str, Path], tmp_path: Path) -> None:
    src = sample_sources["train"]
    store = build_store(src, tmp_path / "store.zarr", masklets=masklets)
    frames, items = expected_items(src, "train", (masklets,))
    if masklets == "auto":  # a video without an _auto.json is not baked for auto masklets
        frames = {key: value for key, value in frames.items() if key[0] != "sav_900003"}
    assert_store_matches(store, frames, items, sample_every=5)


def test_videos_file_and_limit(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    from prebake.build import BuildOptions, build

    report = build(
        BuildOptions(
            src=sample_sources["train"],
            out=tmp_path / "a.zarr",
            video_ids=["sav_900002"],
            progress=False,
        )
    )
    assert report.videos == 1
    assert video_ids(zarr.open_group(tmp_path / "a.zarr", mode="r")) == ["sav_900002"]
    report = build(
        BuildOptions(src=sample_sources["train"], out=tmp_path / "b.zarr", limit=2, progress=False)
    )
    assert video_ids(zarr.open_group(tmp_path / "b.zarr", mode="r")) == [
        "sav_900001",
        "sav_900002",
    ]


def test_real_sample_counts_and_values(real_sav: Path, tmp_path: Path) -> None:
    """The real SA-V sav_000001 annotations: float sizes, float first-appeared frames, None scores."""
    store = build_store(
        real_sav,
        tmp_path / "real.zarr",
        masklets="manual",
        frames_per_shard=64,
        items_per_shard=256,
    )
    manual = next(real_sav.rglob("sav_000001_manual.json"))
    data = json.loads(manual.read_text())
    assert isinstance(data["video_height"], float) and data["masklet_stability_score"][0] is None
    _, masks = reference.json_masks(manual)
    non_empty = sum(int(m.any()) for frame in masks for m in frame)
    root = zarr.open_group(store, mode="r")
    counts = root.attrs["prebake"]["counts"]
    assert counts == {"videos": 1, "videos_failed": 0, "frames": 121, "items": non_empty}
    assert len(data["masklet"]) == 121
    frames, items = expected_items(real_sav, "train", ("manual",))
    assert_store_matches(store, frames, items, sample_every=23)


def test_real_h264_video_decodes_bit_exactly(tmp_path: Path) -> None:
    """The real 1280 x 720 phone clip, with an annotation we write for it, bakes bit-exactly."""
    if not REAL_VIDEO.is_file():
        pytest.skip("../shared/fixtures/real_video is absent")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(REAL_VIDEO, src / "sav_777777.mp4")
    from pycocotools import mask as mask_utils

    ys, xs = np.mgrid[0:720, 0:1280]
    annotated = list(range(0, 289, 4))[::6]  # keep the build short: every 24th frame annotated...
    masklet = []
    for t in range(len(range(0, 289, 4))):
        mask = (
            (((xs - 640 - 3 * t) ** 2 + (ys - 360) ** 2) < 150**2).astype(np.uint8)
            if 4 * t in annotated
            else np.zeros((720, 1280), np.uint8)
        )
        rle = mask_utils.encode(np.asfortranarray(mask))
        masklet.append([{"size": [720, 1280], "counts": rle["counts"].decode()}])
    annotation = {
        "video_id": "sav_777777",
        "video_height": 720.0,
        "video_width": 1280.0,
        "video_frame_count": 289.0,
        "masklet": masklet,
        "masklet_id": [0],
    }
    (src / "sav_777777_manual.json").write_text(json.dumps(annotation))
    store = build_store(src, tmp_path / "dog.zarr", masklets="manual", frames_per_shard=32)
    frames, items = expected_items(src, "train", ("manual",))
    assert len(frames) == 73 and len(items) == len(annotated)
    assert_store_matches(store, frames, items)


def test_a_source_without_videos_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from prebake.cli import app

    (tmp_path / "src").mkdir()
    result = CliRunner().invoke(
        app, ["build", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "s.zarr"), "-q"]
    )
    assert result.exit_code == 2
    assert "no SA-V videos found" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()
