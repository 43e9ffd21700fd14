"""A built store follows its schema document (v2, and v1 as the hidden v1 writer makes it), and
its shards are byte for byte what zarr-python writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from prebake.sources import LAYOUTS
from prebake.store.schema import CODES, DATA_ARRAYS, array_specs, schema_document


@pytest.mark.parametrize("version", [2, 1])
def test_store_structure_follows_the_schema(
    version: int, train_store: Path, v1_store: Path
) -> None:
    store = train_store if version == 2 else v1_store
    document = schema_document(version)
    root = zarr.open_group(store, mode="r")
    attrs = root.attrs["prebake"]
    assert attrs["schema"] == document["name"] and attrs["schema_version"] == version
    assert attrs["state"] == "complete"
    assert set(document["attributes"]["required"]) <= set(attrs)
    if version == 2:
        assert attrs["params"]["fields"] == list(DATA_ARRAYS)
        assert (attrs["layouts"], attrs["statuses"]) == (
            ["train", "frames", "png"],
            ["ok", "failed"],
        )
    else:
        assert "fields" not in attrs["params"] and "layouts" not in attrs
    for name, spec in array_specs(version).items():
        if spec.dtype == "utf8":  # a group of UTF-8 bytes and int64 offsets
            group = json.loads((store / name / "zarr.json").read_text())
            assert group["node_type"] == "group"
            assert group["attributes"] == {"prebake": {"encoding": "utf8-offsets"}}
            offsets = json.loads((store / name / "offsets" / "zarr.json").read_text())
            utf8 = json.loads((store / name / "utf8" / "zarr.json").read_text())
            assert offsets["data_type"] == "int64" and utf8["data_type"] == "uint8", name
            assert offsets["shape"] == [attrs["counts"]["videos"] + 1], name
            continue
        metadata = json.loads((store / name / "zarr.json").read_text())
        rows = {"frame_rows": attrs["frame_rows"], "item_rows": attrs["item_rows"]}.get(spec.rows)
        if rows is not None:
            assert metadata["shape"] == [rows, *spec.row_shape], name
        assert metadata["data_type"] == spec.dtype, name
        if spec.sharded:
            (sharding,) = metadata["codecs"]
            assert sharding["name"] == "sharding_indexed"
            config = sharding["configuration"]
            assert config["chunk_shape"] == [1, *spec.row_shape]
            assert metadata["chunk_grid"]["configuration"]["chunk_shape"] == [
                attrs["params"][spec.rows_per_shard],
                *spec.row_shape,
            ]
            assert config["codecs"] == list(spec.codecs), name
            assert config["index_location"] == "end"
        else:
            assert metadata["codecs"] == list(spec.codecs), name
    # The data arrays sit at the root under exactly the seed's names.
    assert set(DATA_ARRAYS) <= set(root.array_keys())
    pixel = root["pixel_values"]
    assert pixel.dtype == (np.uint8 if version == 2 else np.float32)  # type: ignore[union-attr]


def test_code_lists_are_the_sources_names() -> None:
    assert CODES["layouts"] == tuple(LAYOUTS)
    assert CODES["statuses"] == ("ok", "failed")


def test_shards_are_byte_identical_to_zarr_python(train_store: Path, tmp_path: Path) -> None:
    """Our streamed shards are exactly what zarr-python writes for the same rows."""
    source = zarr.open_group(train_store, mode="r")
    attrs = source.attrs["prebake"]
    for name in DATA_ARRAYS:
        original = source[name]
        per_shard = original.shards[0]
        copy = zarr.open_group(tmp_path / "copy.zarr", mode="a").create_array(
            name,
            shape=original.shape,
            dtype=original.dtype,
            chunks=original.chunks,
            shards=original.shards,
            serializer=original.serializer,
            compressors=original.compressors,
            fill_value=original.fill_value,
        )
        rows_table = (
            source["items/mask_row"][:]
            if name in ("masks", "prompt_masks")
            else np.flatnonzero(source["frames/video"][:] >= 0)
        )
        for shard in (
            0,
            int(rows_table[-1]) // per_shard,
        ):  # a full shard and a video's last (maybe partial) one
            rows = [int(r) for r in rows_table if r // per_shard == shard]
            for row in rows:
                copy[row] = original[row]
            key = Path(name, "c", str(shard), *(["0"] * (original.ndim - 1)))
            assert (train_store / key).read_bytes() == (
                tmp_path / "copy.zarr" / key
            ).read_bytes(), (name, shard)
    assert attrs["counts"]["items"] > 0
