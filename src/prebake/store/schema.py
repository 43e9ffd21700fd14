"""The store schema (`prebake/schemas/prebake-store-v1.json`, package data; `schemas/` at the
repository's root shows it): the one description of every array that `build` creates, the
reader trusts and `verify` checks."""

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

SCHEMA_NAME = "prebake-store"
SCHEMA_VERSION = 1
SCHEMA_PATH = (
    Path(__file__).resolve().parents[1] / "schemas" / f"{SCHEMA_NAME}-v{SCHEMA_VERSION}.json"
)
IMAGE_ARRAYS = ("pixel_values", "g_pixel_values")  # one row per annotated frame
ITEM_ARRAYS = ("prompt_masks", "masks")  # one row per (annotated frame, masklet) item
DATA_ARRAYS = IMAGE_ARRAYS + ITEM_ARRAYS


@dataclass(frozen=True)
class ArraySpec:
    name: str
    rows: str  # "frame_rows", "item_rows", "items" or "videos"
    row_shape: tuple[int, ...]
    dtype: str  # numpy dtype name, or "string"
    fill_value: Any
    sharded: bool
    rows_per_shard: str | None  # the params key giving rows per shard
    codecs: tuple[dict[str, Any], ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(str) if self.dtype == "string" else np.dtype(self.dtype).newbyteorder("<")

    @property
    def row_nbytes(self) -> int:
        return int(np.prod(self.row_shape)) * self.numpy_dtype.itemsize

    @property
    def compressed(self) -> bool:
        return any(codec["name"] not in ("bytes", "crc32c") for codec in self.codecs)


@cache
def schema_document() -> dict[str, Any]:
    with SCHEMA_PATH.open() as handle:
        document: dict[str, Any] = json.load(handle)
    return document


@cache
def array_specs() -> dict[str, ArraySpec]:
    document = schema_document()
    specs = {}
    for name, entry in document["arrays"].items():
        codecs = list(
            entry.get("codecs")
            or document["string_table_codecs" if entry["dtype"] == "string" else "table_codecs"]
        )
        if (
            entry["dtype"] != "string"
            and np.dtype(entry["dtype"]).itemsize == 1
            and codecs[0]["name"] == "bytes"
        ):
            codecs[0] = {"name": "bytes"}  # zarr writes no endian for 1-byte types
        specs[name] = ArraySpec(
            name=name,
            rows=entry["rows"],
            row_shape=tuple(entry["shape"]),
            dtype=entry["dtype"],
            fill_value=entry["fill_value"],
            sharded=entry.get("sharded", False),
            rows_per_shard=entry.get("rows_per_shard"),
            codecs=tuple(codecs),
        )
    return specs


def table_columns(group: str) -> tuple[str, ...]:
    """The columns of one row table ("frames", "items" or "videos"), in schema order."""
    return tuple(name.split("/")[1] for name in array_specs() if name.startswith(f"{group}/"))


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
