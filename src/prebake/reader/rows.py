"""Row readers: each fills a caller-given output buffer with one row of one data array.

`ShardRows` is the fast path: an image row is a plain byte range of its shard file
(uncompressed inner chunks, REFERENCE.md section 6), read by `os.preadv` straight into the
output (one copy from the page cache, the GIL released, so threads read in parallel); a mask row
is a zstd frame read into a small buffer and decoded into a reusable one, then cast by numpy
into the output. Each open shard's index is read once, with its descriptor (`OpenShards`);
zarr-python is not called per row. Rows are read, not memory-mapped: a shard truncated on disk
while mapped kills the reading process with SIGBUS, a short read is a `StoreError` naming the
file. `ZarrRows` is the fallback (`arr[row]`). `RowReaders` are what one process (and thread)
opens; opening is lazy, in the process that reads, so a dataset pickles small. `tune_allocator`
keeps glibc from handing every multi-MB output fresh pages.

A reader's `read_into(row, out)` writes into any `out` of the row's shape (a fresh tensor's
numpy view, or a slot of a preallocated batch): the dtype cast happens on the copy. A schema v2
store holds `pixel_values` as uint8 levels: read into a float32 `out`, each level is looked up in
the normalization table (`prebake.transforms.pixel_table`); read into a uint8 `out`, the levels
are copied as they are (for a device that normalizes them itself).
"""

from __future__ import annotations

import ctypes
import math
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
import torch
import zarr

from prebake.errors import StoreError, one_line
from prebake.reader.layout import ArrayLayout
from prebake.storage import RemotePath, zarr_store
from prebake.store.schema import ArraySpec, array_specs
from prebake.store.shard import CHECKSUM_BYTES, INDEX_ENTRY_BYTES, NO_CHUNK, parse_index, shard_key
from prebake.transforms import pixel_table

# numpy dtypes the store's arrays hold, as torch dtypes
SERVED_AS = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
    np.dtype(np.float32): torch.float32,
}
DEFAULT_MAX_OPEN_SHARDS = 64  # open shard files (descriptors) per process and thread

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


PAGE = mmap.PAGESIZE


def page_aligned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor whose data start on a page boundary (so does every row of it
    whose size is a multiple of the page). `os.preadv` copies from the page cache much slower
    into some misaligned buffers: measured here (CPU time per 3 MB row), 0.19 ms into a
    page-aligned buffer, 0.20 ms at 64 bytes past one (torch's own alignment), 0.80 ms at 16
    bytes past (numpy's and glibc's alignment), 0.44 ms at 1 byte past."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    raw = torch.empty(nbytes + PAGE, dtype=torch.uint8)
    start = -raw.data_ptr() % PAGE
    return raw[start : start + nbytes].view(dtype).view(shape)


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


class OpenShards:
    """Shard files open for reading, shared by the arrays of one `RowReaders`: a descriptor, the
    file's size and its parsed index per shard, at most `limit` kept (least recently used
    closed first). A shard replaced on disk (renamed over) while open keeps being read from the
    file that was opened: its old, consistent bytes, with the index read from that same file."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.files: OrderedDict[Path, tuple[int, int, np.ndarray]] = OrderedDict()

    def get(
        self, path: Path, rows_per_shard: int, crc_bytes: int = 0
    ) -> tuple[int, int, np.ndarray]:
        """(descriptor, size in bytes, index (rows, 2) uint64) of the shard at `path`, whose
        chunks end with `crc_bytes` of checksum; StoreError for an index that points outside
        the chunks."""
        entry = self.files.get(path)
        if entry is not None:
            self.files.move_to_end(path)
            return entry
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as error:
            raise StoreError(f"{path}: cannot open shard ({error.strerror or error})") from None
        try:
            size = os.fstat(fd).st_size
            index_bytes = rows_per_shard * INDEX_ENTRY_BYTES + CHECKSUM_BYTES
            if size < index_bytes:
                raise StoreError(f"{path}: shard is shorter than its index")
            tail = os.pread(fd, index_bytes, size - index_bytes)
            try:
                index = parse_index(tail, rows_per_shard)
            except ValueError as error:
                raise StoreError(f"{path}: {error}") from None
            written = index[:, 0] != NO_CHUNK
            end = np.uint64(size - index_bytes)
            offsets, sizes = index[written, 0], index[written, 1]
            # offset + nbytes <= end, written so that no uint64 sum can wrap around past 2**64
            beyond = (offsets > end) | (sizes > end - np.minimum(offsets, end))
            if beyond.any() or (sizes < crc_bytes).any():
                raise StoreError(f"{path}: shard index points past the chunks")
        except OSError as error:
            os.close(fd)
            raise StoreError(f"{path}: cannot read shard ({error.strerror or error})") from None
        except BaseException:
            os.close(fd)
            raise
        self.files[path] = entry = (fd, size, index)
        while len(self.files) > self.limit:
            os.close(self.files.popitem(last=False)[1][0])
        return entry

    def close(self) -> None:
        while self.files:
            os.close(self.files.popitem()[1][0])

    def __del__(self) -> None:
        self.close()


def read_exactly(fd: int, buffers: list[memoryview], offset: int, path: Path, row: int) -> None:
    """`os.preadv` into `buffers` (one copy from the page cache, the GIL released); a short read
    (the shard truncated since it was opened) or an I/O error is a StoreError naming the file."""
    wanted = sum(buffer.nbytes for buffer in buffers)
    try:
        got = os.preadv(fd, buffers, offset)
    except OSError as error:
        raise StoreError(f"{path}: cannot read row {row} ({error.strerror or error})") from None
    if got != wanted:
        raise StoreError(
            f"{path}: row {row} ends past the end of the file (truncated while being read?)"
        )


class ShardRows:
    """Rows of one array read from its shard files by `pread` at the offsets of each shard's
    index (the fast path). Not memory-mapped: a shard truncated while mapped kills the process
    with SIGBUS, while a short `pread` is an error naming the file."""

    def __init__(
        self,
        store: Path,
        spec: ArraySpec,
        layout: ArrayLayout,
        files: OpenShards,
        verify_checksums: bool,
        table: np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.spec = spec
        self.layout = layout
        self.table = table  # uint8 levels served through this table (float32 outputs)
        self.files = files  # shared by the arrays of one process (thread): one bound on open files
        self.crc_bytes = CHECKSUM_BYTES if layout.checksummed else 0
        self.compressed = layout.mode == "pread+zstd"
        # Compressed chunks are small (about 1 KB a mask): checking their crc costs next to
        # nothing. A raw image chunk's crc costs more than copying it; `prebake verify` checks.
        self.verify = layout.checksummed and (verify_checksums or self.compressed)
        self.dtype = spec.numpy_dtype  # computed once: the property builds a new dtype each call
        self.row_nbytes = spec.row_nbytes  # likewise (np.prod per call costs more than a read)
        self.zstd = numcodecs.Zstd() if self.compressed else None
        # Decoded or stored values (page-aligned: a faster pread target).
        self.scratch = page_aligned_empty(spec.row_shape, SERVED_AS[self.dtype]).numpy()
        self.chunk = bytearray(0)  # a compressed chunk as read (grown on demand)
        self.crc = bytearray(CHECKSUM_BYTES)
        self.paths: dict[int, Path] = {}  # shard -> file (pathlib joins cost more than a read)

    def read_into(self, row: int, out: np.ndarray) -> None:
        shard, local = divmod(row, self.layout.rows_per_shard)
        path = self._path(shard)
        fd, _, index = self.files.get(path, self.layout.rows_per_shard, self.crc_bytes)
        offset, nbytes = int(index[local, 0]), int(index[local, 1])
        if offset == NO_CHUNK:
            raise StoreError(f"{path}: row {row} of {self.spec.name} was never written")
        size = nbytes - self.crc_bytes
        if self.compressed:
            assert self.zstd is not None
            if len(self.chunk) < nbytes:
                self.chunk = bytearray(nbytes)
            chunk = memoryview(self.chunk)[:nbytes]
            read_exactly(fd, [chunk], offset, path, row)
            if self.verify and google_crc32c.value(bytes(chunk[:size])) != int.from_bytes(
                chunk[size:], "little"
            ):
                raise StoreError(f"{path}: crc32c mismatch in row {row}")
            try:
                self.zstd.decode(chunk[:size], out=self.scratch)
            except (RuntimeError, ValueError, TypeError) as error:  # numcodecs' zstd errors
                raise StoreError(
                    f"{path}: row {row} of {self.spec.name} is not a zstd frame of one row "
                    f"({one_line(str(error))})"
                ) from None
            self._serve(self.scratch, out)
            return
        if size != self.row_nbytes:
            raise StoreError(
                f"{path}: a chunk is not {self.row_nbytes + self.crc_bytes} bytes long"
            )
        direct = out.dtype == self.dtype and out.flags.c_contiguous
        target = out if direct else self.scratch
        buffers = [target.reshape(-1).view(np.uint8).data]
        if self.verify:
            buffers.append(memoryview(self.crc))
        read_exactly(fd, buffers, offset, path, row)
        if self.verify and google_crc32c.value(bytes(buffers[0])) != int.from_bytes(
            self.crc, "little"
        ):
            raise StoreError(f"{path}: crc32c mismatch in row {row}")
        if not direct:
            self._serve(self.scratch, out)

    def _serve(self, values: np.ndarray, out: np.ndarray) -> None:
        """Stored values into `out`: through the table (float32 out of uint8 levels), or cast."""
        if self.table is not None and out.dtype != self.dtype:
            normalize_into(values, self.table, out)
        else:
            np.copyto(out, values, casting="unsafe")  # uint8 -> float32 by numpy (fast)

    def _path(self, shard: int) -> Path:
        path = self.paths.get(shard)
        if path is None:
            key = shard_key(self.spec.name, 1 + len(self.spec.row_shape), shard)
            path = self.paths[shard] = self.store / key
        return path


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
    """What one process (one thread) opens to read: a row reader per field, the fields' open
    shard files bounded together by `max_open_shards`."""

    def __init__(
        self,
        store: Path | RemotePath,
        layouts: dict[str, ArrayLayout],
        max_open_shards: int,
        verify_checksums: bool,
        version: int,
    ) -> None:
        self.pid = os.getpid()
        files = OpenShards(max_open_shards)
        specs = array_specs(version)
        self.rows: dict[str, RowSource] = {}
        for name, layout in layouts.items():
            table = served_table(specs[name])
            if layout.mode == "zarr":
                self.rows[name] = ZarrRows(store, specs[name], table)
            else:
                assert isinstance(store, Path), "remote stores are read through zarr-python"
                self.rows[name] = ShardRows(
                    store, specs[name], layout, files, verify_checksums, table
                )
