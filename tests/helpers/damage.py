"""Damage done to a copy of a built store, for `prebake verify` to find: rows re-encoded with valid
checksums, metadata edited; and the verify command's output read back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from prebake import transforms
from prebake.cli import app
from prebake.store.layout import StoreDir
from prebake.store.rows import RowReader
from prebake.store.schema import ArraySpec, array_specs, encode_chunk
from prebake.store.shard import NO_CHUNK, ShardWriter, read_index

PREBAKE = str(Path(sys.executable).with_name("prebake"))  # the console script of this venv


MEAN = np.asarray(transforms.IMAGENET_MEAN, dtype=np.float32)[:, None, None]


STD = np.asarray(transforms.IMAGENET_STD, dtype=np.float32)[:, None, None]


def spec_of(store: Path, name: str) -> ArraySpec:
    """The array's spec in the store's schema version."""
    return array_specs(StoreDir(store).schema_version())[name]


def rows_per_shard(store: Path, name: str) -> int:
    attrs = StoreDir(store).attrs()
    assert attrs is not None
    key = spec_of(store, name).rows_per_shard
    assert key is not None
    return int(attrs["params"][key])


def reader(store: Path, name: str) -> RowReader:
    return RowReader(StoreDir(store), spec_of(store, name), rows_per_shard(store, name))


def read_row(store: Path, name: str, row: int) -> np.ndarray:
    return reader(store, name).read(row).copy()


def shard_file(store: Path, name: str, row: int) -> Path:
    return StoreDir(store).shard_path(spec_of(store, name), row // rows_per_shard(store, name))


def replace_row(store: Path, name: str, row: int, value: np.ndarray) -> None:
    """Re-encode one row and rewrite its shard with ShardWriter (valid checksums everywhere)."""
    spec, per = spec_of(store, name), rows_per_shard(store, name)
    path = shard_file(store, name, row)
    index = read_index(path, per)
    blob = path.read_bytes()
    written = [position for position in range(per) if index[position, 0] != NO_CHUNK]
    assert written == list(range(len(written))), "honest shards hold a prefix of their rows"
    writer = ShardWriter(path, path.with_name(path.name + ".tmp"), per)
    for position in written:
        if position == row % per:
            writer.append(encode_chunk(spec, value))
        else:
            offset, nbytes = (int(v) for v in index[position])
            writer.append(blob[offset : offset + nbytes])
    writer.close()


def tables(store: Path) -> dict[str, np.ndarray]:
    import zarr

    names = ("items/frame_row", "items/mask_row", "items/area")
    return {name: np.asarray(zarr.open_array(store / name, mode="r")[...]) for name in names}


def first_item_rows(store: Path) -> tuple[int, int]:
    """(frame row, mask row) of the item with the largest area: a visible object."""
    t = tables(store)
    item = int(np.argmax(t["items/area"]))
    return int(t["items/frame_row"][item]), int(t["items/mask_row"][item])


def run_verify(store: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", str(store), "--quiet", *args])
    return result.exit_code, result.output


def problems(output: str) -> list[str]:
    lines = output.splitlines()
    return (
        [line.strip() for line in lines[lines.index("problems:") + 1 :]]
        if "problems:" in lines
        else []
    )


def as_stored(store: Path, levels: np.ndarray) -> np.ndarray:
    """A pixel_values row of these levels as the store holds it (v2: the levels, v1: floats)."""
    return levels if spec_of(store, "pixel_values").dtype == "uint8" else normalize(levels)


def normalize(levels: np.ndarray) -> np.ndarray:
    """The reference normalization of uint8 CHW levels (as transforms.pixel_values does it)."""
    values = levels.astype(np.float32)
    values /= np.float32(255)
    values -= MEAN
    values /= STD
    return values


def levels_of(pixel: np.ndarray) -> np.ndarray:
    """The 8-bit levels of a pixel_values row: a v2 row is them, a v1 row is normalized."""
    if pixel.dtype == np.uint8:
        return pixel
    return np.rint((pixel.astype(np.float64) * STD + MEAN) * 255).clip(0, 255).astype(np.uint8)


# -- schema faults ----------------------------------------------------------------------------


def edit_metadata(store: Path, name: str, key: str, value: object) -> None:
    path = store / name / "zarr.json"
    metadata = json.loads(path.read_text())
    metadata[key] = value
    path.write_text(json.dumps(metadata))
