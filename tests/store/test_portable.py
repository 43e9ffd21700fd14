"""A schema v2 store is core Zarr v3: every array has a core data type and only the codecs
bytes, zstd, crc32c and sharding_indexed, and a second implementation (tensorstore's zarr3
driver) opens every array of it and reads the values zarr-python reads, text columns included.
A v1 store's zarr-python string tables are what tensorstore refuses."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import zarr
from helpers.stores import build_store, text_column

from prebake.demo import SampleObject, SampleVideo, write_sample

# Zarr v3's core data types (zarr-specs, v3.0 "data types") and the codecs every implementation
# knows that prebake uses.
CORE_DATA_TYPES = {
    "bool",
    *(f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)),
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
}
PORTABLE_CODECS = {"bytes", "zstd", "crc32c", "sharding_indexed"}


def array_nodes(store: Path) -> list[Path]:
    """Every array's folder, found from the zarr.json files alone."""
    return sorted(
        path.parent
        for path in store.rglob("zarr.json")
        if json.loads(path.read_text())["node_type"] == "array"
    )


def codec_names(codecs: list[dict[str, Any]]) -> set[str]:
    names = set()
    for codec in codecs:
        names.add(codec["name"])
        if codec["name"] == "sharding_indexed":
            names |= codec_names(codec["configuration"]["codecs"])
            names |= codec_names(codec["configuration"]["index_codecs"])
    return names


def tensorstore_values(folder: Path) -> np.ndarray:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(folder)}}
    return np.asarray(ts.open(spec, open=True, read=True).result().read().result())


@pytest.fixture(scope="module")
def unicode_store(module_folder: Path) -> Path:
    """A Loop-1 store whose source paths hold non-ASCII names (UTF-8 bytes differ from chars)."""
    root = module_folder
    disc = SampleObject("manual", "disc", (230, 60, 40), (0.3, 0.4), (0.01, 0.004), 0.15)
    videos = [SampleVideo(f"sav_90100{i}", 64, 48, 9, (disc,)) for i in range(3)]
    write_sample(root / "src" / "Vidéos ß 東京", "train", videos)
    return build_store(root / "src", root / "store.zarr", fields=("pixel_values", "prompt_masks"))


def test_every_array_is_core_zarr_v3(train_store: Path, unicode_store: Path) -> None:
    for store in (train_store, unicode_store):
        for folder in array_nodes(store):
            metadata = json.loads((folder / "zarr.json").read_text())
            where = folder.relative_to(store)
            assert metadata["data_type"] in CORE_DATA_TYPES, where
            assert codec_names(metadata["codecs"]) <= PORTABLE_CODECS, where
            assert metadata["chunk_key_encoding"]["name"] == "default", where


@pytest.mark.parametrize("which", ["all fields", "Loop 1, non-ASCII sources"])
def test_tensorstore_reads_every_array_as_zarr_python_does(
    which: str, train_store: Path, unicode_store: Path
) -> None:
    store = train_store if which == "all fields" else unicode_store
    root = zarr.open_group(store, mode="r")
    folders = array_nodes(store)
    names = {str(folder.relative_to(store)) for folder in folders}
    fields = root.attrs["prebake"]["params"]["fields"]  # type: ignore[index]
    assert set(fields) <= names and "videos/video_id/utf8" in names
    for folder in folders:
        name = str(folder.relative_to(store))
        expected = np.asarray(root[name][...])  # type: ignore[index]
        found = tensorstore_values(folder)
        assert found.dtype == expected.dtype and found.shape == expected.shape, name
        assert np.array_equal(found, expected), name
    # The text columns, decoded from tensorstore's bytes: row i is utf8[offsets[i]:offsets[i+1]].
    for column in ("video_id", "source", "fingerprint"):
        folder = store / "videos" / column
        offsets = tensorstore_values(folder / "offsets").tolist()
        data = tensorstore_values(folder / "utf8").tobytes()
        texts = [data[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]
        assert texts == text_column(root, f"videos/{column}"), column
    if which != "all fields":
        sources = text_column(root, "videos/source")
        assert all(source.startswith("Vidéos ß 東京/") for source in sources), sources
        names_attr = root.attrs["prebake"]["statuses"]  # type: ignore[index]
        status = tensorstore_values(store / "videos" / "status")
        assert [names_attr[code] for code in status] == ["ok"] * 3


def test_tensorstore_refuses_the_string_tables_of_a_v1_store(v1_store: Path) -> None:
    """Why v2 exists: v1's text columns use zarr-python's 'string' type (vlen-utf8), not core
    Zarr v3; its numeric arrays open."""
    refused = []
    for folder in array_nodes(v1_store):
        try:
            tensorstore_values(folder)
        except ValueError as error:
            assert "string" in str(error), error
            refused.append(str(folder.relative_to(v1_store)))
    assert sorted(refused) == [
        "videos/fingerprint",
        "videos/layout",
        "videos/source",
        "videos/status",
        "videos/video_id",
    ]


def test_a_partial_store_holds_only_its_fields(unicode_store: Path) -> None:
    assert sorted(p.name for p in unicode_store.iterdir() if p.is_dir()) == [
        "frames",
        "items",
        "pixel_values",
        "prompt_masks",
        "videos",
    ]
    root = zarr.open_group(unicode_store, mode="r")
    assert set(root.array_keys()) == {"pixel_values", "prompt_masks"}
