"""Opening a store for reading (`open_store`: its metadata validated first), and how each data
array of it is read, decided once when a dataset opens the store.

The fast path reads an inner chunk as a byte range of its shard file (`pread`): possible when
the array's `zarr.json` says one row per inner chunk, plain little-endian bytes, at most zstd and
crc32c after them, and the shard index at the end. Anything else (a compressor on images, a
remote store, `fast=False`) falls back to zarr-python, and says why.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prebake.errors import StoreError
from prebake.storage import RemotePath
from prebake.store.layout import StoreDir
from prebake.store.metadata import ROOT, MetadataProblem, file_of, metadata_problems
from prebake.store.schema import DATA_ARRAYS, SCHEMA_VERSIONS, ArraySpec, fields_of, store_version


@dataclass(frozen=True)
class OpenStore:
    """A complete store whose metadata a reader may trust: what `open_store` established."""

    path: Path | RemotePath
    attrs: dict[str, Any]  # the root's prebake attributes
    version: int  # schema version
    stored_fields: tuple[str, ...]  # the training arrays the store holds, in store order
    fields: tuple[str, ...]  # those to read, in store order


def open_store(path: Path | RemotePath, fields: Sequence[str] | None = None) -> OpenStore:
    """Open the complete store at `path` to read `fields` (default: every field it holds).

    Before anything is read through it, the zarr.json of the root, of every row table and of
    each data array read is validated against the JSON Schema of the store's version
    (`prebake.store.metadata`). Raises StoreError (one line naming the file and the problem)
    for a missing, incomplete or damaged store and for a field the store does not hold;
    ValueError for an unknown field name.
    """
    attrs = StoreDir(path).require_complete()
    version = store_version(attrs)
    if version not in SCHEMA_VERSIONS:
        raise StoreError(
            f"{path}: store has schema version {attrs.get('schema_version')!r}; this "
            f"prebake reads versions {', '.join(map(str, SCHEMA_VERSIONS))}"
        )
    # One validation of every node; the data arrays may have any codecs zarr-python reads
    # (`layout_of` then falls back to it). The root first: it says which arrays are read.
    problems = metadata_problems(path, any_codecs=DATA_ARRAYS)
    _refuse(path, [problem for problem in problems if problem.file == file_of(ROOT)])
    stored = fields_of(attrs["params"])
    chosen = choose_fields(fields, stored, path)
    unread = {file_of(name) for name in DATA_ARRAYS if name not in chosen}
    _refuse(path, [problem for problem in problems if problem.file not in unread])
    return OpenStore(path, attrs, version, stored, chosen)


def _refuse(path: Path | RemotePath, problems: list[MetadataProblem]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StoreError(
            f"{path}/{problems[0]}{more}: the store's metadata does not match its schema; "
            "prebake verify lists every problem"
        )


def choose_fields(
    fields: Sequence[str] | None, stored: tuple[str, ...], path: object
) -> tuple[str, ...]:
    """The fields to read, in store order: ValueError for an unknown name, StoreError for a
    field the store does not hold."""
    if fields is None:
        return stored
    if isinstance(fields, str):
        fields = (fields,)
    unknown = [name for name in fields if name not in DATA_ARRAYS]
    if unknown:
        raise ValueError(f"unknown fields {unknown}; choose from {list(DATA_ARRAYS)}")
    lacking = [name for name in DATA_ARRAYS if name in fields and name not in stored]
    if lacking:
        raise StoreError(
            f"{path}: the store holds no {', '.join(lacking)} (it was built with --fields "
            f"{','.join(stored)}); rebuild it with the fields you need"
        )
    return tuple(name for name in DATA_ARRAYS if name in fields)  # store order, no duplicates


@dataclass(frozen=True)
class ArrayLayout:
    """How one data array is read: small and picklable (it travels to worker processes)."""

    name: str
    rows_per_shard: int
    mode: str  # "pread" (raw byte range), "pread+zstd" (zstd frame) or "zarr" (fallback)
    checksummed: bool  # inner chunks end with a crc32c
    why: str = ""  # why an array falls back to zarr-python


def layout_of(store: Path | RemotePath, spec: ArraySpec, allow_fast: bool) -> ArrayLayout:
    """Inspect the array's zarr.json: can its inner chunks be read as byte ranges of the shard?"""
    try:
        with (store / spec.name / "zarr.json").open() as handle:
            metadata = json.load(handle)
        grid = metadata["chunk_grid"]["configuration"]["chunk_shape"]
        rows_per_shard = int(grid[0])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise StoreError(f"{store}: array {spec.name} has unreadable metadata ({error})") from None
    if not allow_fast:
        problem = "fast=False"
    elif isinstance(store, RemotePath):
        problem = "remote store (copy it to a local disk to read it by byte ranges)"
    else:
        problem = unmappable(metadata, spec)
    if problem:
        return ArrayLayout(spec.name, rows_per_shard, "zarr", checksummed=False, why=problem)
    inner = [codec["name"] for codec in metadata["codecs"][0]["configuration"]["codecs"][1:]]
    checksummed = inner[-1:] == ["crc32c"]
    mode = "pread+zstd" if "zstd" in inner else "pread"
    return ArrayLayout(spec.name, rows_per_shard, mode, checksummed)


def unmappable(metadata: dict[str, Any], spec: ArraySpec) -> str:
    """Why the fast path cannot read this array ('' when it can)."""
    if sys.byteorder != "little":
        return "big-endian host"
    if metadata.get("data_type") != spec.dtype or metadata.get("storage_transformers"):
        return f"data type {metadata.get('data_type')!r} or storage transformers"
    encoding = metadata.get("chunk_key_encoding", {})
    separator = encoding.get("configuration", {}).get("separator", "/")
    if encoding.get("name") != "default" or separator != "/":
        return "chunk key encoding is not default '/'"
    codecs = metadata.get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return "not sharded"
    config = codecs[0].get("configuration", {})
    if list(config.get("chunk_shape", [])) != [1, *spec.row_shape]:
        return "inner chunks are not one row"
    if config.get("index_location", "end") != "end":
        return "shard index is not at the end"
    index_codecs = [codec.get("name") for codec in config.get("index_codecs", [])]
    endian = config.get("index_codecs", [{}])[0].get("configuration", {}).get("endian", "little")
    if index_codecs != ["bytes", "crc32c"] or endian != "little":
        return "shard index codecs are not [bytes little-endian, crc32c]"
    inner = config.get("codecs", [])
    if not inner or inner[0].get("name") != "bytes":
        return "inner chunks are not plain bytes"
    if inner[0].get("configuration", {}).get("endian", "little") != "little":
        return "inner chunks are big-endian"
    rest = [codec.get("name") for codec in inner[1:]]
    if rest not in ([], ["crc32c"], ["zstd"], ["zstd", "crc32c"]):
        return f"inner codecs {rest} (only zstd and crc32c are read directly)"
    return ""
