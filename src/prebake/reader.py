"""`PrebakedDataset`: the training-side reader of a prebake store.

Hot path (the "fast" path): an item's image rows are plain byte ranges of their shard files
(uncompressed inner chunks, REFERENCE.md section 6), so they are copied straight from a memory
map of the shard into a fresh torch-owned tensor; mask rows are zstd frames decoded with
numcodecs into a reusable buffer, then cast to float32 by numpy into the output tensor. Each
shard's index is read once and cached; zarr-python is not called per item.

Everything that can be done once is done at open: the row tables are read (zarr-python), the
items are filtered, the array layouts are checked. What is per process (memory maps, shard
indexes, zarr arrays of the fallback) is opened lazily in the process that reads, so the
dataset pickles small and works in DataLoader workers under fork and spawn.

The fallback path reads each row through zarr-python's `arr[row]`; it serves any array whose
layout cannot be memory-mapped (for instance images stored with a compressor), everything when
`fast=False`, and every array of a remote store (an fsspec URL: nothing to memory-map; copy the
store to a local disk for the fast path). The tests prove both paths give identical tensors.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from prebake.errors import StoreError
from prebake.storage import RemotePath, StorageOptions, as_path, zarr_store
from prebake.store.layout import StoreDir
from prebake.store.schema import DATA_ARRAYS, ITEM_ARRAYS, ArraySpec, array_specs
from prebake.store.shard import CHECKSUM_BYTES, INDEX_ENTRY_BYTES, NO_CHUNK, parse_index, shard_key

__all__ = [
    "DEFAULT_MAX_OPEN_SHARDS",
    "FIELDS",
    "LOOP1_FIELDS",
    "LOOP2_FIELDS",
    "METADATA_KEYS",
    "PrebakedDataset",
    "tune_allocator",
]

FIELDS = DATA_ARRAYS  # ("pixel_values", "g_pixel_values", "prompt_masks", "masks")
LOOP1_FIELDS = ("pixel_values", "prompt_masks")  # mask -> caption
LOOP2_FIELDS = ("pixel_values", "g_pixel_values", "masks")  # caption -> mask
METADATA_KEYS = ("video_id", "frame_index", "masklet_id", "masklet_type")
DEFAULT_MAX_OPEN_SHARDS = 64  # each open memory map holds one file descriptor
INDEX_CACHE_SHARDS = 1024  # cached shard indexes per array (at most 16 KB each at 1024 rows)

# Served dtypes: masks are stored as uint8 0/1 but the mask loss wants floats.
OUTPUT_DTYPES = {
    "pixel_values": torch.float32,
    "g_pixel_values": torch.uint8,
    "prompt_masks": torch.bool,
    "masks": torch.float32,
}

# Bit layout of an item key (video, annotated frame t, masklet type, masklet id), sorted like
# the items table; a clip looks up its frames with one searchsorted over these keys.
_ID_BITS, _TYPE_BITS, _T_BITS, _VIDEO_BITS = 22, 1, 16, 24
_T_SHIFT = _ID_BITS + _TYPE_BITS
_VIDEO_SHIFT = _T_SHIFT + _T_BITS


# -- allocator -----------------------------------------------------------------------------------

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


# -- array layouts (decided once, at open) --------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """How one data array is read: small and picklable (it travels to worker processes)."""

    name: str
    rows_per_shard: int
    mode: str  # "memmap" (raw byte range), "memmap+zstd" (zstd frame) or "zarr" (fallback)
    checksummed: bool  # inner chunks end with a crc32c
    why: str = ""  # why an array falls back to zarr-python


def _layout_of(store: Path | RemotePath, spec: ArraySpec, allow_fast: bool) -> _Layout:
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
        problem = "remote store (copy it to a local disk to memory-map it)"
    else:
        problem = _unmappable(metadata, spec)
    if problem:
        return _Layout(spec.name, rows_per_shard, "zarr", checksummed=False, why=problem)
    inner = [codec["name"] for codec in metadata["codecs"][0]["configuration"]["codecs"][1:]]
    checksummed = inner[-1:] == ["crc32c"]
    mode = "memmap+zstd" if "zstd" in inner else "memmap"
    return _Layout(spec.name, rows_per_shard, mode, checksummed)


def _unmappable(metadata: dict[str, Any], spec: ArraySpec) -> str:
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


# -- row tables (read once, at open) -------------------------------------------------------------


@dataclass
class _Tables:
    """The items the dataset serves and what it needs to read them, as numpy arrays."""

    # Columns keep the tables' dtypes (int32 where the schema says so): at SA-V scale (35 M
    # items) each byte per item is 35 MB in every worker that reads the tables.
    selected: np.ndarray  # int64: dataset index -> item
    frame_row: np.ndarray  # int64 per item
    mask_row: np.ndarray  # int64 per item
    video: np.ndarray  # int32 per item
    frame_index: np.ndarray  # int32 per item
    masklet_id: np.ndarray  # int32 per item
    masklet_type: np.ndarray  # uint8 per item
    t: np.ndarray  # int32 per item: annotated frame within the video
    video_ids: list[str]
    video_frame_row: np.ndarray  # int64 per video
    frames_frame_index: np.ndarray | None  # int32 per frame row (clips only)
    sorted_keys: np.ndarray | None  # item keys in ascending order (clips only)
    key_order: np.ndarray | None  # item of each sorted key (clips only)


def _load_tables(
    path: Path | RemotePath,
    type_names: list[str],
    clip_len: int | None,
    masklet_types: tuple[str, ...] | None,
    min_prompt_cells: int,
) -> _Tables:
    root = zarr.open_group(zarr_store(path), mode="r", zarr_format=3)

    def column(name: str) -> np.ndarray:
        return np.asarray(root[name][:])  # type: ignore[index]

    video = column("items/video")
    video_frame_row = column("videos/frame_row")
    frame_row = column("items/frame_row")
    t = (frame_row - video_frame_row[video]).astype(np.int32)
    masklet_type = column("items/masklet_type")
    masklet_id = column("items/masklet_id")
    keep = np.ones(len(video), dtype=bool)
    if masklet_types is not None:
        codes = [type_names.index(name) for name in masklet_types]
        keep &= np.isin(masklet_type, codes)
    if min_prompt_cells > 0:
        keep &= column("items/prompt_cells") >= min_prompt_cells
    frames_frame_index = sorted_keys = key_order = None
    if clip_len is not None:
        # A clip starts only where it fits: t + T <= the video's annotated frames (no padding).
        video_frames = column("videos/frames")
        keep &= t + clip_len <= video_frames[video]
        frames_frame_index = column("frames/frame_index")
        keys = _item_keys(path, video, t, masklet_type, masklet_id)
        key_order = np.argsort(keys, kind="stable")
        sorted_keys = keys[key_order]
    return _Tables(
        selected=np.flatnonzero(keep).astype(np.int64),
        frame_row=frame_row,
        mask_row=column("items/mask_row"),
        video=video,
        frame_index=column("items/frame_index"),
        masklet_id=masklet_id,
        masklet_type=masklet_type,
        t=t,
        video_ids=[str(value) for value in column("videos/video_id")],
        video_frame_row=video_frame_row,
        frames_frame_index=frames_frame_index,
        sorted_keys=sorted_keys,
        key_order=key_order,
    )


def _item_keys(
    path: Path | RemotePath,
    video: np.ndarray,
    t: np.ndarray,
    masklet_type: np.ndarray,
    masklet_id: np.ndarray,
) -> np.ndarray:
    limits = (
        (video, _VIDEO_BITS),
        (t, _T_BITS),
        (masklet_type, _TYPE_BITS),
        (masklet_id, _ID_BITS),
    )
    for values, bits in limits:
        if len(values) and (values.min() < 0 or values.max() >= 1 << bits):
            raise StoreError(f"{path}: item tables hold values too large for clip lookup")
    return (
        (video.astype(np.int64) << _VIDEO_SHIFT)
        | (t.astype(np.int64) << _T_SHIFT)
        | (masklet_type.astype(np.int64) << _ID_BITS)
        | masklet_id.astype(np.int64)
    )


# -- per-process readers -------------------------------------------------------------------------


class _ShardRows:
    """Rows of one array read from memory maps of its shard files (the fast path)."""

    def __init__(
        self,
        store: Path,
        spec: ArraySpec,
        layout: _Layout,
        maps: OrderedDict[tuple[str, int], mmap.mmap],
        max_open_shards: int,
        verify_checksums: bool,
    ) -> None:
        self.store = store
        self.spec = spec
        self.layout = layout
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
            self.zstd.decode(memoryview(data)[offset:end], out=self.scratch)
            np.copyto(out, self.scratch, casting="unsafe")  # uint8 -> float32 by numpy (fast)
        elif out.dtype == self.dtype:
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8, end - offset, offset)
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
        ends = index[written, 0] + index[written, 1]
        if len(ends) and int(ends.max()) > len(data) - rows * INDEX_ENTRY_BYTES - CHECKSUM_BYTES:
            raise StoreError(f"{self._path(shard)}: shard index points past the chunks")
        if not self.compressed:
            expected = self.spec.row_nbytes + self.crc_bytes
            if np.any(index[written, 1] != expected):
                raise StoreError(f"{self._path(shard)}: a chunk is not {expected} bytes long")
        self.indexes[shard] = index
        while len(self.indexes) > INDEX_CACHE_SHARDS:
            self.indexes.popitem(last=False)
        return index


class _ZarrRows:
    """Rows of one array read through zarr-python (the fallback path)."""

    def __init__(self, store: Path | RemotePath, spec: ArraySpec) -> None:
        self.array = zarr.open_array(zarr_store(store / spec.name), mode="r", zarr_format=3)

    def read_into(self, row: int, out: np.ndarray) -> None:
        np.copyto(out, np.asarray(self.array[row]), casting="unsafe")


class _ProcessState:
    """What one process opens to read: row readers per field (memory maps, indexes, zarr)."""

    def __init__(
        self,
        store: Path | RemotePath,
        layouts: dict[str, _Layout],
        max_open_shards: int,
        verify_checksums: bool,
    ) -> None:
        self.pid = os.getpid()
        maps: OrderedDict[tuple[str, int], mmap.mmap] = OrderedDict()
        specs = array_specs()
        self.rows: dict[str, _ShardRows | _ZarrRows] = {}
        for name, layout in layouts.items():
            if layout.mode == "zarr":
                self.rows[name] = _ZarrRows(store, specs[name])
            else:
                assert isinstance(store, Path), "remote stores are read through zarr-python"
                self.rows[name] = _ShardRows(
                    store, specs[name], layout, maps, max_open_shards, verify_checksums
                )


# -- the dataset ----------------------------------------------------------------------------------


class PrebakedDataset(Dataset[dict[str, Any]]):
    """Items of a complete prebake store as torch tensors, for Sa2VA-style training loops.

    `ds[i]` is a dict holding the requested `fields` (default: all four) and the metadata
    `video_id` (str), `frame_index` (int, 24 fps index of the frame), `masklet_id` (int) and
    `masklet_type` (str):

    - `pixel_values` float32 (3, 448, 448), ImageNet-normalized (InternVL);
    - `g_pixel_values` uint8 (3, 1024, 1024), 0..255 (SAM 2);
    - `prompt_masks` bool (16, 16) (visual prompt);
    - `masks` float32 (1024, 1024), exactly 0.0 and 1.0 (ground truth).

    Only the arrays in `fields` are read: `LOOP1_FIELDS` (mask -> caption) or `LOOP2_FIELDS`
    (caption -> mask). Items are ordered by video, annotated frame, masklet.

    `clip_len=T` serves T consecutive annotated frames of one masklet instead: every tensor gains
    a leading T dimension, `frame_index` becomes an int64 tensor (T,), and `present` (bool (T,))
    says where the masklet has a mask; where it has none, `prompt_masks` and `masks` are zero.
    A clip starts at an item (its first frame always has the masklet) and never crosses a video:
    only items with `t + T <= frames of the video` start a clip, so the last T - 1 annotated
    frames of a video start none (no padding).

    Filters: `masklet_types=("manual",)` keeps those types; `min_prompt_cells=4` drops items
    whose prompt has fewer cells on (Sa2VA v2's rule). With clips, both apply to the first frame.

    `fast=False` reads every row through zarr-python (slow; for checking). With `fast=True`,
    arrays whose layout cannot be memory-mapped fall back to zarr-python on their own
    (`read_paths` says which path each field takes). `verify_checksums=True` also checks the
    crc32c of raw image chunks (compressed chunks are always checked). `max_open_shards` bounds
    the shard files kept mapped per process (and per thread). `tune_allocator` raises glibc's
    mmap and trim thresholds in each reading process (see `tune_allocator`).

    `path` may be an fsspec URL (`s3://bucket/store.zarr`, with `storage_options` for fsspec:
    endpoint, credentials): such a store is read through zarr-python, a request per row; copy
    it to a local disk for the memory-mapped path.
    """

    def __init__(
        self,
        path: str | Path,
        fields: Sequence[str] | None = None,
        clip_len: int | None = None,
        masklet_types: Sequence[str] | None = None,
        min_prompt_cells: int = 0,
        *,
        fast: bool = True,
        verify_checksums: bool = False,
        max_open_shards: int = DEFAULT_MAX_OPEN_SHARDS,
        tune_allocator: bool = True,
        storage_options: StorageOptions | None = None,
    ) -> None:
        self.path = as_path(path, storage_options)
        attrs = StoreDir(self.path).require_complete()
        self.fields = _check_fields(fields)
        if clip_len is not None and (isinstance(clip_len, bool) or int(clip_len) < 1):
            raise ValueError(f"clip_len must be a positive number of frames, got {clip_len!r}")
        self.clip_len = None if clip_len is None else int(clip_len)
        self.type_names = [str(name) for name in attrs["masklet_types"]]
        if masklet_types is not None:
            if isinstance(masklet_types, str):
                masklet_types = (masklet_types,)
            unknown = sorted(set(masklet_types) - set(self.type_names))
            if unknown:
                raise ValueError(
                    f"unknown masklet types {unknown}; the store has {self.type_names}"
                )
        self.masklet_types = None if masklet_types is None else tuple(masklet_types)
        if int(min_prompt_cells) < 0:
            raise ValueError(f"min_prompt_cells must be >= 0, got {min_prompt_cells!r}")
        self.min_prompt_cells = int(min_prompt_cells)
        if max_open_shards < 1:
            raise ValueError(f"max_open_shards must be >= 1, got {max_open_shards!r}")
        self.max_open_shards = int(max_open_shards)
        self.verify_checksums = verify_checksums
        self.tune_allocator = tune_allocator
        specs = array_specs()
        self.layouts = {name: _layout_of(self.path, specs[name], fast) for name in self.fields}
        self._tables: _Tables | None = self._read_tables()
        self._length = len(self._tables.selected)
        # Open files and buffers, per process and per thread: threads must not share the
        # LRU or the decode buffer, and a forked worker must not use its parent's.
        self._local: threading.local | None = threading.local()

    # -- pickling: parameters only; tables and open files are rebuilt in the receiving process
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tables"] = None
        state["_local"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _read_tables(self) -> _Tables:
        return _load_tables(
            self.path, self.type_names, self.clip_len, self.masklet_types, self.min_prompt_cells
        )

    def _ensure_tables(self) -> _Tables:
        if self._tables is None:
            tables = self._read_tables()
            if len(tables.selected) != self._length:
                raise StoreError(f"{self.path}: store changed since the dataset was created")
            self._tables = tables
        return self._tables

    def _ensure_state(self) -> _ProcessState:
        if self._local is None:  # unpickled in this process
            self._local = threading.local()
        state: _ProcessState | None = getattr(self._local, "state", None)
        # A forked worker inherits the parent's state: it opens its own (pid differs).
        if state is None or state.pid != os.getpid():
            if self.tune_allocator:
                tune_allocator()
            state = _ProcessState(
                self.path, self.layouts, self.max_open_shards, self.verify_checksums
            )
            self._local.state = state
        return state

    @property
    def read_paths(self) -> dict[str, str]:
        """How each field is read: 'memmap', 'memmap+zstd' or 'zarr' (the fallback)."""
        return {name: layout.mode for name, layout in self.layouts.items()}

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[index] for index in range(self._length))

    def __getitem__(self, index: int) -> dict[str, Any]:
        position = int(index)
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError(f"index {index} out of range for {self._length} items")
        tables = self._ensure_tables()
        state = self._ensure_state()
        item = int(tables.selected[position])
        if self.clip_len is None:
            return self._read_item(tables, state, item)
        return self._read_clip(tables, state, item, self.clip_len)

    def _read_item(self, tables: _Tables, state: _ProcessState, item: int) -> dict[str, Any]:
        sample: dict[str, Any] = {}
        frame_row, mask_row = int(tables.frame_row[item]), int(tables.mask_row[item])
        for name in self.fields:
            tensor, out = _empty(name, ())
            state.rows[name].read_into(mask_row if name in ITEM_ARRAYS else frame_row, out)
            sample[name] = tensor
        sample["video_id"] = tables.video_ids[int(tables.video[item])]
        sample["frame_index"] = int(tables.frame_index[item])
        sample["masklet_id"] = int(tables.masklet_id[item])
        sample["masklet_type"] = self.type_names[int(tables.masklet_type[item])]
        return sample

    def _read_clip(
        self, tables: _Tables, state: _ProcessState, item: int, clip_len: int
    ) -> dict[str, Any]:
        assert tables.sorted_keys is not None and tables.key_order is not None
        assert tables.frames_frame_index is not None
        video = int(tables.video[item])
        steps = np.arange(clip_len, dtype=np.int64)
        start_key = (
            (video << _VIDEO_SHIFT)
            | (int(tables.t[item]) << _T_SHIFT)
            | (int(tables.masklet_type[item]) << _ID_BITS)
            | int(tables.masklet_id[item])
        )
        wanted = start_key + (steps << _T_SHIFT)
        found = np.searchsorted(tables.sorted_keys, wanted)
        found = np.minimum(found, len(tables.sorted_keys) - 1)
        present = tables.sorted_keys[found] == wanted
        clip_items = tables.key_order[found]
        frame_rows = int(tables.video_frame_row[video]) + int(tables.t[item]) + steps
        sample: dict[str, Any] = {}
        for name in self.fields:
            tensor, out = _empty(name, (clip_len,))
            rows = state.rows[name]
            for step in range(clip_len):
                if name not in ITEM_ARRAYS:
                    rows.read_into(int(frame_rows[step]), out[step])
                elif present[step]:
                    rows.read_into(int(tables.mask_row[clip_items[step]]), out[step])
                else:
                    out[step] = 0  # the masklet has no mask on this frame
            sample[name] = tensor
        sample["video_id"] = tables.video_ids[video]
        sample["frame_index"] = torch.from_numpy(
            tables.frames_frame_index[frame_rows].astype(np.int64)
        )
        sample["masklet_id"] = int(tables.masklet_id[item])
        sample["masklet_type"] = self.type_names[int(tables.masklet_type[item])]
        sample["present"] = torch.from_numpy(present)
        return sample

    def __repr__(self) -> str:
        options = [f"fields={self.fields}"]
        if self.clip_len is not None:
            options.append(f"clip_len={self.clip_len}")
        if self.masklet_types is not None:
            options.append(f"masklet_types={self.masklet_types}")
        if self.min_prompt_cells:
            options.append(f"min_prompt_cells={self.min_prompt_cells}")
        return f"PrebakedDataset({str(self.path)!r}, {', '.join(options)}): {self._length} items"


def _check_fields(fields: Sequence[str] | None) -> tuple[str, ...]:
    if fields is None:
        return FIELDS
    if isinstance(fields, str):
        fields = (fields,)
    unknown = [name for name in fields if name not in FIELDS]
    if unknown:
        raise ValueError(f"unknown fields {unknown}; choose from {list(FIELDS)}")
    return tuple(name for name in FIELDS if name in fields)  # store order, no duplicates


def _empty(name: str, lead: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
    """A fresh torch-owned output tensor and a writable numpy view of it (no copy, no warning)."""
    tensor = torch.empty((*lead, *array_specs()[name].row_shape), dtype=OUTPUT_DTYPES[name])
    return tensor, tensor.numpy()
