"""A built store follows its schema document, and its shards are byte for byte what zarr-python
writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from prebake.store.schema import DATA_ARRAYS, array_specs, schema_document


def test_store_structure_follows_the_schema(train_store: Path) -> None:
    document = schema_document()
    root = zarr.open_group(train_store, mode="r")
    attrs = root.attrs["prebake"]
    assert attrs["schema"] == document["name"] and attrs["schema_version"] == document["version"]
    assert attrs["state"] == "complete"
    for key in (
        "frame_rows",
        "item_rows",
        "masklet_types",
        "params",
        "versions",
        "source",
        "counts",
        "failures",
        "build",
    ):
        assert key in attrs
    for name, spec in array_specs().items():
        metadata = json.loads((train_store / name / "zarr.json").read_text())
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
    assert {"pixel_values", "g_pixel_values", "prompt_masks", "masks"} <= set(root.array_keys())


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
