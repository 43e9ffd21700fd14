"""A private copy of the session store, free to damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def store_copy(train_store: Path, tmp_path: Path) -> Path:
    """A private copy of the session store, free to damage."""
    return Path(shutil.copytree(train_store, tmp_path / "store.zarr"))


@pytest.fixture
def v1_store_copy(v1_store: Path, tmp_path: Path) -> Path:
    """A private copy of the session's schema v1 store, free to damage."""
    return Path(shutil.copytree(v1_store, tmp_path / "store-v1.zarr"))
