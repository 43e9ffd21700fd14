"""`PrebakedDataset`: the training-side reader of a prebake store, items and clips as tensors.

Everything that can be done once is done at open: the row tables are read (zarr-python,
`prebake.reader.items`), the items are filtered, the array layouts are checked
(`prebake.reader.layout`). What is per process (open shard files and their indexes, zarr
arrays of the fallback: `prebake.reader.rows`) is opened lazily in the process that reads, so
the dataset pickles small and works in DataLoader workers under fork and spawn.

The fallback path reads each row through zarr-python's `arr[row]`; it serves any array whose
layout cannot be read as byte ranges (for instance images stored with a compressor), everything
when `fast=False`, and every array of a remote store (an fsspec URL: no file to `pread`; copy
the store to a local disk for the fast path). The tests prove both paths give identical tensors.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from prebake.errors import StoreError
from prebake.reader.items import ItemTables, VideoFilter, load_tables
from prebake.reader.layout import layout_of, open_store
from prebake.reader.rows import (
    DEFAULT_MAX_OPEN_SHARDS,
    RowReaders,
    page_aligned_empty,
    tune_allocator,
)
from prebake.storage import StorageOptions, as_path
from prebake.store.schema import DATA_ARRAYS, ITEM_ARRAYS, array_specs

FIELDS = DATA_ARRAYS  # ("pixel_values", "g_pixel_values", "prompt_masks", "masks")
LOOP1_FIELDS = ("pixel_values", "prompt_masks")  # mask -> caption
LOOP2_FIELDS = ("pixel_values", "g_pixel_values", "masks")  # caption -> mask
METADATA_KEYS = ("video_id", "frame_index", "masklet_id", "masklet_type")

# Served dtypes: masks are stored as uint8 0/1 but the mask loss wants floats.
OUTPUT_DTYPES = {
    "pixel_values": torch.float32,
    "g_pixel_values": torch.uint8,
    "prompt_masks": torch.bool,
    "masks": torch.float32,
}


class PrebakedDataset(Dataset[dict[str, Any]]):
    """Items of a complete prebake store as torch tensors, for Sa2VA-style training loops.

    `ds[i]` is a dict holding the requested `fields` (default: every field the store holds; a
    store built with `--fields` holds only those) and the metadata
    `video_id` (str), `frame_index` (int, 24 fps index of the frame), `masklet_id` (int) and
    `masklet_type` (str):

    - `pixel_values` float32 (3, 448, 448), ImageNet-normalized (InternVL);
    - `g_pixel_values` uint8 (3, 1024, 1024), 0..255 (SAM 2);
    - `prompt_masks` bool (16, 16) (visual prompt);
    - `masks` float32 (1024, 1024), exactly 0.0 and 1.0 (ground truth).

    Only the arrays in `fields` are read: `LOOP1_FIELDS` (mask -> caption) or `LOOP2_FIELDS`
    (caption -> mask). Items are ordered by video, annotated frame, masklet. Asking for a field
    the store does not hold raises StoreError (one line naming the store and the field); an
    unknown field name raises ValueError.

    Stores of schema v1 and v2 serve the same tensors: v2 stores `pixel_values` as its uint8
    448 x 448 levels and serves `pixel_table()[c][level]` (`prebake.transforms`), bit for bit
    the float32 v1 stores.

    `clip_len=T` serves T consecutive annotated frames of one masklet instead: every tensor gains
    a leading T dimension, `frame_index` becomes an int64 tensor (T,), and `present` (bool (T,))
    says where the masklet has a mask; where it has none, `prompt_masks` and `masks` are zero.
    A clip starts at an item (its first frame always has the masklet) and never crosses a video:
    only items with `t + T <= frames of the video` start a clip, so the last T - 1 annotated
    frames of a video start none (no padding).

    Filters: `masklet_types=("manual",)` keeps those types; `min_prompt_cells=4` drops items
    whose prompt has fewer cells on (Sa2VA v2's rule); `videos=` keeps the items of some videos,
    for train/val splits by video: a collection of video ids, or a callable on the id
    (`lambda video_id: hash_split(video_id) < 0.9`). `videos` is resolved at open into the ids
    kept (`self.videos`, a tuple in store order), so the dataset pickles into DataLoader workers
    under spawn even with a lambda. With clips, the filters apply to the first frame.
    `prebake info --videos` lists a store's videos, their annotated frames and items.

    Errors: ValueError for an unknown field name, a bad `clip_len` or `min_prompt_cells`, a
    masklet type that is not one (naming the types the store's items hold), video ids the store
    does not hold (naming a few, and how many), and options that leave no item of a store that
    holds items (naming the option and the limit it passes: the longest video's annotated
    frames, the largest prompt, the types held, or the options that together leave nothing; a
    store that itself holds no items gives an empty dataset). StoreError (one line naming the
    store) for an incomplete or unreadable store and a field it does not hold.

    `fast=False` reads every row through zarr-python (slow; for checking). With `fast=True`,
    arrays whose layout cannot be read as byte ranges fall back to zarr-python on their own
    (`read_paths` says which path each field takes). `verify_checksums=True` also checks the
    crc32c of raw image chunks (compressed chunks are always checked). `max_open_shards` bounds
    the shard files kept open per process (and per thread). `tune_allocator` raises glibc's
    mmap and trim thresholds in each reading process (see `tune_allocator`).

    `path` may be an fsspec URL (`s3://bucket/store.zarr`, with `storage_options` for fsspec:
    endpoint, credentials): such a store is read through zarr-python, a request per row; copy
    it to a local disk for the fast path.
    """

    def __init__(
        self,
        path: str | Path,
        fields: Sequence[str] | None = None,
        clip_len: int | None = None,
        masklet_types: Sequence[str] | None = None,
        min_prompt_cells: int = 0,
        *,
        videos: VideoFilter | None = None,
        fast: bool = True,
        verify_checksums: bool = False,
        max_open_shards: int = DEFAULT_MAX_OPEN_SHARDS,
        tune_allocator: bool = True,
        storage_options: StorageOptions | None = None,
    ) -> None:
        self.path = as_path(path, storage_options)
        store = open_store(self.path, fields)
        attrs, self.version = store.attrs, store.version
        self.stored_fields, self.fields = store.stored_fields, store.fields
        if clip_len is not None and (isinstance(clip_len, bool) or int(clip_len) < 1):
            raise ValueError(f"clip_len must be a positive number of frames, got {clip_len!r}")
        self.clip_len = None if clip_len is None else int(clip_len)
        # The row counts the tables must match (small: the dataset pickles to workers).
        self.rows = {
            "items": int(attrs["counts"]["items"]),
            "videos": int(attrs["counts"]["videos"]),
            "frame_rows": int(attrs["frame_rows"]),
            "item_rows": int(attrs["item_rows"]),
        }
        self.type_names = [str(name) for name in attrs["masklet_types"]]
        if isinstance(masklet_types, str):
            masklet_types = (masklet_types,)
        self.masklet_types = None if masklet_types is None else tuple(masklet_types)
        if int(min_prompt_cells) < 0:
            raise ValueError(f"min_prompt_cells must be >= 0, got {min_prompt_cells!r}")
        self.min_prompt_cells = int(min_prompt_cells)
        if max_open_shards < 1:
            raise ValueError(f"max_open_shards must be >= 1, got {max_open_shards!r}")
        self.max_open_shards = int(max_open_shards)
        self.verify_checksums = verify_checksums
        self.tune_allocator = tune_allocator
        specs = array_specs(self.version)
        self.layouts = {name: layout_of(self.path, specs[name], fast) for name in self.fields}
        self.videos: tuple[str, ...] | None = None  # `videos` resolved at open: picklable
        self._tables: ItemTables | None = self._read_tables(videos)
        self.videos = self._tables.videos_kept
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

    def _read_tables(self, videos: VideoFilter | None = None) -> ItemTables:
        return load_tables(
            self.path,
            self.type_names,
            self.clip_len,
            self.masklet_types,
            self.min_prompt_cells,
            self.version,
            self.rows,
            self.videos if videos is None else videos,
        )

    def _ensure_tables(self) -> ItemTables:
        if self._tables is None:
            tables = self._read_tables()
            if len(tables.selected) != self._length:
                raise StoreError(f"{self.path}: store changed since the dataset was created")
            self._tables = tables
        return self._tables

    def _ensure_state(self) -> RowReaders:
        if self._local is None:  # unpickled in this process
            self._local = threading.local()
        state: RowReaders | None = getattr(self._local, "state", None)
        # A forked worker inherits the parent's state: it opens its own (pid differs).
        if state is None or state.pid != os.getpid():
            if self.tune_allocator:
                tune_allocator()
            state = RowReaders(
                self.path, self.layouts, self.max_open_shards, self.verify_checksums, self.version
            )
            self._local.state = state
        return state

    @property
    def read_paths(self) -> dict[str, str]:
        """How each field is read: 'pread' (raw byte ranges of the shard files), 'pread+zstd'
        (zstd frames) or 'zarr' (the fallback)."""
        return {name: layout.mode for name, layout in self.layouts.items()}

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[index] for index in range(self._length))

    def __getitem__(self, index: int) -> dict[str, Any]:
        lead = () if self.clip_len is None else (self.clip_len,)
        tensors, out = {}, {}
        for name in self.fields:
            tensors[name], out[name] = _empty(name, lead)
        return {**tensors, **self.read_into(index, out)}

    def read_into(self, index: int, out: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Write item (or clip) `index`'s fields into `out` and return its metadata.

        `out[name]` is a writable numpy array of the field's shape ((T, ...) with clips) for
        every field of `self.fields`: of the served dtype (`OUTPUT_DTYPES`), or uint8 for
        `pixel_values` of a schema v2 store (the stored levels, for a device to normalize)
        and for `masks` (0 and 1). The metadata are what `ds[index]` holds besides the fields.
        Raises IndexError for an index out of range, StoreError for a damaged store."""
        position = int(index)
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError(f"index {index} out of range for {self._length} items")
        tables = self._ensure_tables()
        state = self._ensure_state()
        item = int(tables.selected[position])
        if self.clip_len is None:
            return self._read_item(tables, state, item, out)
        return self._read_clip(tables, state, item, self.clip_len, out)

    def items_metadata(self, indices: Sequence[int]) -> dict[str, Any]:
        """The metadata of items `indices` (a dataset without clips) as `default_collate` stacks
        what `ds[index]` holds besides the fields: `video_id` and `masklet_type` lists of str,
        `frame_index` and `masklet_id` int64 tensors (len(indices),); read from the tables in
        one gather, where collating items one by one costs more than reading a batch's small
        rows (the loader gathers a block of batches at once). Raises IndexError for an index out of
        range, ValueError for a dataset of clips (their metadata come with the rows)."""
        if self.clip_len is not None:
            raise ValueError("items_metadata serves items, not clips: read_into returns theirs")
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        if positions.size and not (
            -self._length <= positions.min() and positions.max() < self._length
        ):
            raise IndexError(f"an index of {indices!r} is out of range for {self._length} items")
        tables = self._ensure_tables()
        items = tables.selected[positions % max(self._length, 1)]
        return {
            "video_id": [tables.video_ids[video] for video in tables.video[items].tolist()],
            "frame_index": torch.from_numpy(tables.frame_index[items].astype(np.int64)),
            "masklet_id": torch.from_numpy(tables.masklet_id[items].astype(np.int64)),
            "masklet_type": [self.type_names[code] for code in tables.masklet_type[items].tolist()],
        }

    def _read_item(
        self, tables: ItemTables, state: RowReaders, item: int, out: Mapping[str, np.ndarray]
    ) -> dict[str, Any]:
        frame_row, mask_row = int(tables.frame_row[item]), int(tables.mask_row[item])
        for name in self.fields:
            state.rows[name].read_into(mask_row if name in ITEM_ARRAYS else frame_row, out[name])
        return {
            "video_id": tables.video_ids[int(tables.video[item])],
            "frame_index": int(tables.frame_index[item]),
            "masklet_id": int(tables.masklet_id[item]),
            "masklet_type": self.type_names[int(tables.masklet_type[item])],
        }

    def _read_clip(
        self,
        tables: ItemTables,
        state: RowReaders,
        item: int,
        clip_len: int,
        out: Mapping[str, np.ndarray],
    ) -> dict[str, Any]:
        assert tables.frames_frame_index is not None
        frame_rows, clip_items, present = tables.clip(item, clip_len)
        for name in self.fields:
            rows, target = state.rows[name], out[name]
            for step in range(clip_len):
                if name not in ITEM_ARRAYS:
                    rows.read_into(int(frame_rows[step]), target[step])
                elif present[step]:
                    rows.read_into(int(tables.mask_row[clip_items[step]]), target[step])
                else:
                    target[step] = 0  # the masklet has no mask on this frame
        return {
            "video_id": tables.video_ids[int(tables.video[item])],
            "frame_index": torch.from_numpy(tables.frames_frame_index[frame_rows].astype(np.int64)),
            "masklet_id": int(tables.masklet_id[item]),
            "masklet_type": self.type_names[int(tables.masklet_type[item])],
            "present": torch.from_numpy(present),
        }

    def __repr__(self) -> str:
        options = [f"fields={self.fields}"]
        if self.clip_len is not None:
            options.append(f"clip_len={self.clip_len}")
        if self.masklet_types is not None:
            options.append(f"masklet_types={self.masklet_types}")
        if self.min_prompt_cells:
            options.append(f"min_prompt_cells={self.min_prompt_cells}")
        if self.videos is not None:
            options.append(f"videos=<{len(self.videos)} ids>")
        return f"PrebakedDataset({str(self.path)!r}, {', '.join(options)}): {self._length} items"


def _empty(name: str, lead: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
    """A fresh torch-owned output tensor (page-aligned: rows are read straight into it) and a
    writable numpy view of it (no copy, no warning)."""
    shape = (*lead, *array_specs()[name].row_shape)
    tensor = page_aligned_empty(shape, OUTPUT_DTYPES[name])
    return tensor, tensor.numpy()
