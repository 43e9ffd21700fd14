"""Shared fixtures: synthetic SA-V samples in each layout, stores built from them, the real fixtures
(their paths and the generators behind them: `helpers`; the independent reference: `reference`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.stores import REAL_SAV, ROOT, build_store

from prebake.demo import SampleObject, SampleVideo, write_sample


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C tests send SIGINT to the processes they start. A shell without job control starts
    a background job (`make test &`) with SIGINT ignored, and an ignored signal stays ignored
    in every child: catching it here hands the children the default again."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="module")
def module_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty folder for the module's fixtures, removed when the module's tests are done
    (tmp_path_factory keeps its folders to the end of the run: stores add up to gigabytes)."""
    folder = tmp_path_factory.mktemp("module")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline once (`pip wheel --no-deps --no-build-isolation`)."""
    folder = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(folder), "--quiet", str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = folder.glob("prebake-*.whl")
    return wheel


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
def v1_store(sample_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same store in schema v1 (float32 pixel_values, zarr-python string tables), as
    prebake built them before v2 (do not modify it)."""
    out = tmp_path_factory.mktemp("stores") / "train-v1.zarr"
    return build_store(sample_sources["train"], out, schema_version=1)


@pytest.fixture(scope="session")
def loop1_store(sample_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same store with Loop 1's fields only (--fields pixel_values,prompt_masks)."""
    out = tmp_path_factory.mktemp("stores") / "train-loop1.zarr"
    return build_store(sample_sources["train"], out, fields=("pixel_values", "prompt_masks"))


@pytest.fixture(scope="session")
def real_sav() -> Path:
    if not REAL_SAV.is_dir():
        pytest.skip("../shared/fixtures/sav_real is absent")
    return REAL_SAV


@pytest.fixture(scope="session")
def split_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small videos built with manual masklets only (the store's `masklet_types`
    attribute still lists every type name), one of which failed to bake."""
    disc = SampleObject("manual", "disc", (230, 60, 40), (0.4, 0.5), (0.01, 0.0), 0.3)
    auto = SampleObject("auto", "box", (30, 80, 220), (0.35, 0.45), (0.009, 0.003), 0.2)
    root = tmp_path_factory.mktemp("split")
    videos = [
        SampleVideo("sav_950001", 96, 64, 9, (disc, auto)),
        SampleVideo("sav_950002", 64, 64, 13, (disc,)),
        SampleVideo("sav_950003", 64, 48, 5, (disc,)),
    ]
    src = write_sample(root / "src", "train", videos)
    (src / "sav_950003.mp4").write_bytes(b"not a video")
    return build_store(src, root / "store.zarr", masklets="manual")
