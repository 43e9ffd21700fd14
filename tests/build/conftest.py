"""The reliability source (three-object videos of unequal lengths) and its uninterrupted store."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.runs import FRAMES_PER_SHARD, ITEMS_PER_SHARD
from helpers.stores import build_store, three_object_videos

from prebake.demo import SampleVideo, write_sample


def _videos() -> list[SampleVideo]:
    # Unequal lengths, so shards end part-full and units take different times.
    return three_object_videos("sav_7000", 240, 176, first_length=26, step=3)


@pytest.fixture(scope="session")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("reliability") / "src", "train", _videos())


@pytest.fixture(scope="session")
def reference(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of an uninterrupted build, one worker."""
    out = tmp_path_factory.mktemp("reference") / "store.zarr"
    return build_store(src, out, frames_per_shard=FRAMES_PER_SHARD, items_per_shard=ITEMS_PER_SHARD)
