"""A built store follows its schema document (v2, and v1 as the hidden v1 writer makes it), and
its shards hold what zarr-python writes (byte for byte where no chunk alignment is asked for)."""

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


def _chunks(shard: bytes, rows: int) -> list[tuple[int, bytes]]:
    """(offset, bytes) of each inner chunk, read from the index at the shard's end as the
    sharding spec lays it out (rows pairs of little-endian uint64, then a 4-byte crc32c)."""
    index = np.frombuffer(shard[-(16 * rows + 4) : -4], dtype="<u8").reshape(rows, 2)
    return [(int(o), shard[int(o) : int(o) + int(n)]) for o, n in index if o != 2**64 - 1]


@pytest.mark.parametrize("version", [2, 1])
def test_shards_hold_what_zarr_python_writes(
    version: int, train_store: Path, v1_store: Path, tmp_path: Path
) -> None:
    """Our streamed shards hold zarr-python's chunks, in the same order, with its index (offsets
    aside). Where the schema asks for no alignment (v1, masks, prompts) the files are byte for
    byte what zarr-python writes; v2's images start each chunk on a 4096-byte boundary, with
    zero bytes between chunks (the sharding spec allows unused space between them)."""
    store = train_store if version == 2 else v1_store
    specs = array_specs(version)
    source = zarr.open_group(store, mode="r")
    attrs = source.attrs["prebake"]
    aligned = set()
    for name in DATA_ARRAYS:
        original = source[name]
        per_shard = original.shards[0]
        copy = zarr.open_group(tmp_path / f"copy-{name}.zarr", mode="a").create_array(
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
        alignment = specs[name].chunk_alignment
        for shard in (
            0,
            int(rows_table[-1]) // per_shard,
        ):  # a full shard and a video's last (maybe partial) one
            rows = [int(r) for r in rows_table if r // per_shard == shard]
            for row in rows:
                copy[row] = original[row]
            key = Path(name, "c", str(shard), *(["0"] * (original.ndim - 1)))
            ours = (store / key).read_bytes()
            theirs = (tmp_path / f"copy-{name}.zarr" / key).read_bytes()
            if alignment == 1:
                assert ours == theirs, (name, shard)
                continue
            aligned.add(name)
            our_chunks, their_chunks = _chunks(ours, per_shard), _chunks(theirs, per_shard)
            assert [c for _, c in our_chunks] == [c for _, c in their_chunks], (name, shard)
            end = 0
            for offset, chunk in our_chunks:
                assert offset % alignment == 0 and offset - end < alignment, (name, offset)
                assert not any(ours[end:offset]), (name, shard, "the gap holds zero bytes")
                end = offset + len(chunk)
            assert len(ours) == end + 16 * per_shard + 4, (name, shard)
    assert aligned == ({"pixel_values", "g_pixel_values"} if version == 2 else set())
    assert attrs["counts"]["items"] > 0
