"""The reliability source (three-object videos of unequal lengths, and one frame-folder video
that a test can hold open: `held_frame`) and its uninterrupted store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.runs import (
    FRAMES_PER_SHARD,
    HELD_VIDEO,
    ITEMS_PER_SHARD,
    HeldFrame,
    frame_held,
)
from helpers.stores import build_store, three_object_videos

from prebake.demo import SampleVideo, write_sample


def _videos() -> list[SampleVideo]:
    # Unequal lengths, so shards end part-full and units take different times.
    return three_object_videos("sav_7000", 240, 176, first_length=26, step=3)


def held_video() -> SampleVideo:
    shape = _videos()[0]
    return SampleVideo(HELD_VIDEO, shape.width, shape.height, 9, shape.objects)


@pytest.fixture(scope="session")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_sample(tmp_path_factory.mktemp("reliability") / "src", "train", _videos())
    write_sample(root / "frames", "frames", [held_video()])
    return root


@pytest.fixture
def held_frame(src: Path) -> Iterator[HeldFrame]:
    """Frame 8 of HELD_VIDEO as a named pipe: its unit blocks there, its first shard written."""
    with frame_held(src / "frames" / "JPEGImages" / HELD_VIDEO) as held:
        yield held


@pytest.fixture(scope="session")
def reference(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of an uninterrupted build, one worker."""
    out = tmp_path_factory.mktemp("reference") / "store.zarr"
    return build_store(src, out, frames_per_shard=FRAMES_PER_SHARD, items_per_shard=ITEMS_PER_SHARD)
