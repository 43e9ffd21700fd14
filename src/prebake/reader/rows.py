"""Row readers: each fills a caller-given output buffer with one row of one data array.

`ShardRows` is the fast path: an image row is a plain byte range of a memory map of its shard
file (uncompressed inner chunks, REFERENCE.md section 6), copied straight into the output; a
mask row is a zstd frame decoded into a reusable buffer, then cast by numpy into the output.
Each shard's index is read once and cached; zarr-python is not called per row. `ZarrRows` is
the fallback (`arr[row]`). `RowReaders` are what one process (and thread) opens; opening is
lazy, in the process that reads, so a dataset pickles small. `tune_allocator` keeps glibc from
handing every multi-MB output fresh pages.

A reader's `read_into(row, out)` writes into any `out` of the row's shape (a fresh tensor's
numpy view, or a slot of a preallocated batch): the dtype cast happens on the copy. A schema v2
store holds `pixel_values` as uint8 levels: read into a float32 `out`, each level is looked up in
the normalization table (`prebake.transforms.pixel_table`), fused with the copy out of the
memory map; read into a uint8 `out`, the levels are copied as they are (for a device that
normalizes them itself).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import cv2
import google_crc32c
import numcodecs
import numpy as np
import zarr

from prebake.errors import StoreError, one_line
from prebake.reader.layout import ArrayLayout
from prebake.storage import RemotePath, zarr_store
from prebake.store.schema import ArraySpec, array_specs
from prebake.store.shard import CHECKSUM_BYTES, INDEX_ENTRY_BYTES, NO_CHUNK, parse_index, shard_key
from prebake.transforms import pixel_table

DEFAULT_MAX_OPEN_SHARDS = 64  # each open memory map holds one file descriptor
INDEX_CACHE_SHARDS = 1024  # cached shard indexes per array (at most 16 KB each at 1024 rows)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum: a 4 MB float32 mask stays on the heap
TRIM_THRESHOLD_BYTES = 256 << 20  # keep freed heap for the next items instead of re-faulting it
_tuned_pid: int | None = None


def tune_allocator() -> bool:
    """Keep glibc from handing each multi-MB output tensor fresh mmap'd pages (and trimming them).

    By default glibc serves a 2.4 MB allocation with a new mmap and trims freed heap back to the
    kernel, so every item's output tensors page-fault again (about 2 ms per 2.4 MB, REFERENCE.md
    section 6). Raising both thresholds lets freed tensors be reused. Called once per process
    (lazily, on the first read); returns whether glibc accepted the settings.
    """
    global _tuned_pid
    if _tuned_pid == os.getpid():
        return True
    _tuned_pid = os.getpid()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return bool(ok_mmap and ok_trim)


def normalize_into(levels: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """`out[c] = table[c][levels[c]]` for each channel: uint8 (C, H, W) levels to float32 through
    a (C, 256) float32 table, exactly (a lookup copies the table's values).

    OpenCV's `cv2.LUT` does a channel of 448 x 448 in about 0.07 ms here, on the calling thread
    (it goes parallel only from 2**18 values), 3.5 x faster than `np.take`, which first widens
    the levels to int64 (`prebake bench --schemas` measures both); `np.take` serves an `out`
    LUT cannot write into (not float32, or a channel not contiguous)."""
    for channel in range(levels.shape[0]):
        target = out[channel]
        if target.dtype == np.float32 and target.flags.c_contiguous:
            cv2.LUT(levels[channel], table[channel], dst=target)
        else:
            target[...] = np.take(table[channel], levels[channel])


class RowSource(Protocol):
    def read_into(self, row: int, out: np.ndarray) -> None:
        """Write row `row` into `out` (the row's shape; cast to `out`'s dtype)."""
        ...


class ShardRows:
    """Rows of one array read from memory maps of its shard files (the fast path)."""

    def __init__(
        self,
        store: Path,
        spec: ArraySpec,
        layout: ArrayLayout,
        maps: OrderedDict[tuple[str, int], mmap.mmap],
        max_open_shards: int,
        verify_checksums: bool,
        table: np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.spec = spec
        self.layout = layout
        self.table = table  # uint8 levels served through this table (float32 outputs)
        self.maps = maps  # shared by the arrays of one process: one bound on open files
        self.max_open_shards = max_open_shards
        self.indexes: OrderedDict[int, np.ndarray] = OrderedDict()
        self.crc_bytes = CHECKSUM_BYTES if layout.checksummed else 0
        self.compressed = layout.mode == "memmap+zstd"
        # Compressed chunks are small (about 1 KB a mask): checking their crc costs next to
        # nothing. A raw image chunk's crc costs more than copying it; `prebake verify` checks.
        self.verify = layout.checksummed and (verify_checksums or self.compressed)
        self.dtype = spec.numpy_dtype  # computed once: the property builds a new dtype each call
        self.zstd = numcodecs.Zstd() if self.compressed else None
        self.scratch = np.empty(spec.row_shape, dtype=self.dtype) if self.compressed else None

    def read_into(self, row: int, out: np.ndarray) -> None:
        shard, local = divmod(row, self.layout.rows_per_shard)
        index = self._index(shard)
        offset, nbytes = int(index[local, 0]), int(index[local, 1])
        if offset == NO_CHUNK:
            raise StoreError(
                f"{self._path(shard)}: row {row} of {self.spec.name} was never written"
            )
        data = self._map(shard)
        end = offset + nbytes - self.crc_bytes
        if self.verify:
            stored = int.from_bytes(data[end : end + CHECKSUM_BYTES], "little")
            if google_crc32c.value(data[offset:end]) != stored:
                raise StoreError(f"{self._path(shard)}: crc32c mismatch in row {row}")
        if self.compressed:
            assert self.zstd is not None and self.scratch is not None
            try:
                self.zstd.decode(memoryview(data)[offset:end], out=self.scratch)
            except (RuntimeError, ValueError, TypeError) as error:  # numcodecs' zstd errors
                raise StoreError(
                    f"{self._path(shard)}: row {row} of {self.spec.name} is not a zstd frame "
                    f"of one row ({one_line(str(error))})"
                ) from None
            if self.table is not None and out.dtype != self.dtype:
                normalize_into(self.scratch, self.table, out)
            else:
                np.copyto(out, self.scratch, casting="unsafe")  # uint8 -> float32 by numpy (fast)
        elif out.dtype == self.dtype:
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8, end - offset, offset)
        elif self.table is not None:
            levels = np.frombuffer(data, self.dtype, out.size, offset).reshape(out.shape)
            normalize_into(levels, self.table, out)
        else:
            row_values = np.frombuffer(data, self.dtype, out.size, offset)
            np.copyto(out, row_values.reshape(out.shape), casting="unsafe")

    def _path(self, shard: int) -> Path:
        return self.store / shard_key(self.spec.name, 1 + len(self.spec.row_shape), shard)

    def _map(self, shard: int) -> mmap.mmap:
        key = (self.spec.name, shard)
        data = self.maps.get(key)
        if data is not None:
            self.maps.move_to_end(key)
            return data
        path = self._path(shard)
        try:
            with path.open("rb") as handle:
                data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as error:
            raise StoreError(f"{path}: cannot open shard ({error})") from None
        self.maps[key] = data
        while len(self.maps) > self.max_open_shards:
            # Dropping the last reference unmaps it and closes its descriptor.
            self.maps.popitem(last=False)
        return data

    def _index(self, shard: int) -> np.ndarray:
        index = self.indexes.get(shard)
        if index is not None:
            self.indexes.move_to_end(shard)
            return index
        data = self._map(shard)
        rows = self.layout.rows_per_shard
        try:
            index = parse_index(data[-(rows * INDEX_ENTRY_BYTES + CHECKSUM_BYTES) :], rows)
        except ValueError as error:
            raise StoreError(f"{self._path(shard)}: {error}") from None
        written = index[:, 0] != NO_CHUNK
        end = np.uint64(len(data) - rows * INDEX_ENTRY_BYTES - CHECKSUM_BYTES)
        offsets, sizes = index[written, 0], index[written, 1]
        # offset + nbytes <= end, written so that no uint64 sum can wrap around past 2**64
        beyond = (offsets > end) | (sizes > end - np.minimum(offsets, end))
        if beyond.any() or (sizes < self.crc_bytes).any():
            raise StoreError(f"{self._path(shard)}: shard index points past the chunks")
        if not self.compressed:
            expected = self.spec.row_nbytes + self.crc_bytes
            if np.any(index[written, 1] != expected):
                raise StoreError(f"{self._path(shard)}: a chunk is not {expected} bytes long")
        self.indexes[shard] = index
        while len(self.indexes) > INDEX_CACHE_SHARDS:
            self.indexes.popitem(last=False)
        return index


class ZarrRows:
    """Rows of one array read through zarr-python (the fallback path)."""

    def __init__(
        self, store: Path | RemotePath, spec: ArraySpec, table: np.ndarray | None = None
    ) -> None:
        self.where = store / spec.name
        try:
            self.array = zarr.open_array(zarr_store(self.where), mode="r", zarr_format=3)
        except Exception as error:  # zarr raises many types for a broken array
            raise StoreError(f"{self.where}: cannot open the array ({_reason(error)})") from None
        self.table = table

    def read_into(self, row: int, out: np.ndarray) -> None:
        try:
            values = np.asarray(self.array[row])
        except Exception as error:  # zarr raises many types for a broken shard or chunk
            raise StoreError(f"{self.where}: row {row} unreadable ({_reason(error)})") from None
        if values.shape != out.shape:
            raise StoreError(f"{self.where}: row {row} is {values.shape}, not {out.shape}")
        if self.table is not None and out.dtype != values.dtype:
            normalize_into(values, self.table, out)
        else:
            np.copyto(out, values, casting="unsafe")


def _reason(error: Exception) -> str:
    return one_line(f"{type(error).__name__}: {error}")


def served_table(spec: ArraySpec) -> np.ndarray | None:
    """The table an array's stored values are served through: a v2 store's `pixel_values`
    (uint8 levels) through the normalization table; None: served as stored (cast)."""
    if spec.name == "pixel_values" and spec.dtype == "uint8":
        return pixel_table()
    return None


class RowReaders:
    """What one process (one thread) opens to read: a row reader per field, the fields' memory
    maps bounded together by `max_open_shards`."""

    def __init__(
        self,
        store: Path | RemotePath,
        layouts: dict[str, ArrayLayout],
        max_open_shards: int,
        verify_checksums: bool,
        version: int,
    ) -> None:
        self.pid = os.getpid()
        maps: OrderedDict[tuple[str, int], mmap.mmap] = OrderedDict()
        specs = array_specs(version)
        self.rows: dict[str, RowSource] = {}
        for name, layout in layouts.items():
            table = served_table(specs[name])
            if layout.mode == "zarr":
                self.rows[name] = ZarrRows(store, specs[name], table)
            else:
                assert isinstance(store, Path), "remote stores are read through zarr-python"
                self.rows[name] = ShardRows(
                    store, specs[name], layout, maps, max_open_shards, verify_checksums, table
                )
