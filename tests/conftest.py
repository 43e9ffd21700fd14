"""Shared fixtures: synthetic SA-V samples in each layout, stores built from them, the real fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from prebake.build import BuildOptions, build
from prebake.demo import write_sample

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_SAV = SHARED / "fixtures" / "sav_real"
REAL_VIDEO = SHARED / "fixtures" / "real_video" / "01_dog.mp4"


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
