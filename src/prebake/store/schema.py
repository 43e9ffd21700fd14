"""The store schemas (`prebake/schemas/prebake-store-v<N>.json`, package data; `schemas/` at the
repository's root shows them): the one description of every array that `build` creates, the
reader trusts and `verify` checks. New stores are written in `SCHEMA_VERSION` (2); version 1
stores are read and verified as before (`array_specs(1)`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np

from prebake.sources.base import MASKLET_TYPES

SCHEMA_NAME = "prebake-store"
SCHEMA_VERSION = 2  # what a build writes
SCHEMA_VERSIONS = (1, 2)  # what the reader, verify, info and show read
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
IMAGE_ARRAYS = ("pixel_values", "g_pixel_values")  # one row per annotated frame
ITEM_ARRAYS = ("prompt_masks", "masks")  # one row per (annotated frame, masklet) item
DATA_ARRAYS = IMAGE_ARRAYS + ITEM_ARRAYS  # the training arrays ("fields"), in store order
# The names behind the codes of coded columns (v2), by the root attribute that lists them.
CODES: dict[str, tuple[str, ...]] = {
    "masklet_types": MASKLET_TYPES,
    "layouts": ("train", "frames", "png"),
    "statuses": ("ok", "failed"),
}
TEXT_PARTS = ("offsets", "utf8")  # the arrays of a text column's group (v2)


def schema_path(version: int = SCHEMA_VERSION) -> Path:
    return SCHEMA_DIR / f"{SCHEMA_NAME}-v{version}.json"


@dataclass(frozen=True)
class ArraySpec:
    name: str
    rows: str  # "frame_rows", "item_rows", "items" or "videos"
    row_shape: tuple[int, ...]
    dtype: str  # numpy dtype name; "string" (v1: zarr-python strings) or "utf8" (v2: text group)
    fill_value: Any
    sharded: bool
    rows_per_shard: str | None  # the params key giving rows per shard
    codecs: tuple[dict[str, Any], ...]
    codes: str | None = None  # coded column: the root attribute listing its names (v2)
    chunk_alignment: int = 1  # a sharded array's inner chunks start at multiples of this (bytes)

    @property
    def numpy_dtype(self) -> np.dtype:
        """The stored values' dtype (text columns: str)."""
        if self.dtype in ("string", "utf8"):
            return np.dtype(str)
        return np.dtype(self.dtype).newbyteorder("<")

    @property
    def text(self) -> bool:
        """Whether the column's values are strings (stored as text, or as codes of names)."""
        return self.dtype in ("string", "utf8") or self.codes is not None

    @property
    def values_dtype(self) -> np.dtype:
        """The dtype of the column's values as tables are made and read (str for text)."""
        return np.dtype(str) if self.text else self.numpy_dtype

    @property
    def row_nbytes(self) -> int:
        return int(np.prod(self.row_shape)) * self.numpy_dtype.itemsize

    @property
    def compressed(self) -> bool:
        return any(codec["name"] not in ("bytes", "crc32c") for codec in self.codecs)


def load_document(path: Path) -> dict[str, Any]:
    """A JSON document shipped with the package (a schema), as a dict."""
    with path.open() as handle:
        document: dict[str, Any] = json.load(handle)
    return document


@cache
def schema_document(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    return load_document(schema_path(version))


@cache
def array_specs(version: int = SCHEMA_VERSION) -> dict[str, ArraySpec]:
    """Every array (and table column) of a store of schema `version`, in schema order."""
    document = schema_document(version)
    specs = {}
    for name, entry in document["arrays"].items():
        codecs = list(
            entry.get("codecs")
            or document["string_table_codecs" if entry["dtype"] == "string" else "table_codecs"]
        )
        if (
            entry["dtype"] not in ("string", "utf8")
            and np.dtype(entry["dtype"]).itemsize == 1
            and codecs[0]["name"] == "bytes"
        ):
            codecs[0] = {"name": "bytes"}  # zarr writes no endian for 1-byte types
        specs[name] = ArraySpec(
            name=name,
            rows=entry["rows"],
            row_shape=tuple(entry["shape"]),
            dtype=entry["dtype"],
            fill_value=entry.get("fill_value"),
            sharded=entry.get("sharded", False),
            rows_per_shard=entry.get("rows_per_shard"),
            codecs=tuple(codecs),
            codes=entry.get("codes") if version >= 2 else None,
            chunk_alignment=entry.get("chunk_alignment", 1),
        )
    return specs


def text_part_spec(spec: ArraySpec, part: str) -> ArraySpec:
    """One array of a v2 text column's group: 'offsets' (int64) or 'utf8' (uint8)."""
    dtype = {"offsets": "int64", "utf8": "uint8"}[part]
    codecs = list(schema_document(2)["table_codecs"])
    if dtype == "uint8":
        codecs[0] = {"name": "bytes"}
    return ArraySpec(
        name=f"{spec.name}/{part}",
        rows=spec.rows,
        row_shape=(),
        dtype=dtype,
        fill_value=0,
        sharded=False,
        rows_per_shard=None,
        codecs=tuple(codecs),
    )


def fields_of(params: dict[str, Any]) -> tuple[str, ...]:
    """The training arrays a store holds, in store order (a v1 store: all four)."""
    fields = params.get("fields")
    if fields is None:
        return DATA_ARRAYS
    return tuple(name for name in DATA_ARRAYS if name in fields)


def store_version(attrs: dict[str, Any]) -> int:
    """The schema version of a store's root attributes (-1 when it is not a whole number):
    the caller refuses a version not in SCHEMA_VERSIONS."""
    version = attrs.get("schema_version")
    return version if isinstance(version, int) and not isinstance(version, bool) else -1


def table_columns(group: str, version: int = SCHEMA_VERSION) -> tuple[str, ...]:
    """The columns of one row table ("frames", "items" or "videos"), in schema order."""
    return tuple(
        name.split("/")[1] for name in array_specs(version) if name.startswith(f"{group}/")
    )


def encode_chunk_parts(spec: ArraySpec, row: np.ndarray) -> list[bytes | np.ndarray]:
    """One inner chunk (a row) encoded with the array's codecs, as consecutive parts: a raw row
    is not copied (frames are megabytes), its crc32c follows it as a part of its own."""
    if row.shape != spec.row_shape or row.dtype != spec.numpy_dtype:
        raise ValueError(
            f"{spec.name}: row is {row.dtype}{row.shape}, schema says {spec.dtype}{spec.row_shape}"
        )
    data: bytes | np.ndarray = np.ascontiguousarray(row).reshape(-1).view(np.uint8)
    codecs = list(spec.codecs[1:])
    checksummed = bool(codecs) and codecs[-1]["name"] == "crc32c"
    for codec in codecs[:-1] if checksummed else codecs:
        data = _byte_codec(json.dumps(codec, sort_keys=True)).encode(bytes(data))
    if not checksummed:
        return [data]
    return [data, struct.pack("<I", google_crc32c.value(data))]


def encode_chunk(spec: ArraySpec, row: np.ndarray) -> bytes:
    """One inner chunk (a row) encoded with the array's codecs, exactly as zarr-python would."""
    return b"".join(bytes(part) for part in encode_chunk_parts(spec, row))


def decode_chunk(spec: ArraySpec, data: bytes | memoryview) -> np.ndarray:
    """Inverse of `encode_chunk`, verifying the crc32c."""
    for codec in reversed(spec.codecs[1:]):
        data = _byte_codec(json.dumps(codec, sort_keys=True)).decode(data)
    return np.frombuffer(data, dtype=spec.numpy_dtype).reshape(spec.row_shape)


class ChecksumError(ValueError):
    pass


class _Crc32c:
    @staticmethod
    def encode(data: bytes) -> bytes:
        return data + struct.pack("<I", google_crc32c.value(data))

    @staticmethod
    def decode(data: bytes | memoryview) -> bytes | memoryview:
        body, stored = data[:-4], bytes(data[-4:])
        if isinstance(body, memoryview):
            body = body.tobytes()  # google_crc32c takes bytes only
        if struct.pack("<I", google_crc32c.value(body)) != stored:
            raise ChecksumError("crc32c mismatch")
        return body


class _Zstd:
    def __init__(self, configuration: dict[str, Any]) -> None:
        self._codec = numcodecs.Zstd(
            level=configuration["level"], checksum=configuration["checksum"]
        )

    def encode(self, data: bytes) -> bytes:
        return bytes(self._codec.encode(data))

    def decode(self, data: bytes | memoryview) -> bytes:
        return bytes(self._codec.decode(data))


@cache
def _byte_codec(codec_json: str) -> _Crc32c | _Zstd:
    codec = json.loads(codec_json)
    if codec["name"] == "crc32c":
        return _Crc32c()
    if codec["name"] == "zstd":
        return _Zstd(codec["configuration"])
    raise ValueError(f"codec {codec['name']!r} is not in the prebake schema")
