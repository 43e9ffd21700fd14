"""The worker side of a build: plan one video, bake one unit (video) into the rows it owns.

Plain functions of picklable arguments, returning small records: they run in a worker process
of this machine (`prebake.build.pool`) or as Dask tasks (`prebake.build.dask`) and know
neither. A unit writes only its own shards, each atomically, with the same bytes every time, so
running it again (after a crash, or on another worker) is harmless; whoever runs it commits.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from prebake import transforms
from prebake.build.resizing import (
    ImageFields,
    ImageRows,
    Resizing,
    exit_if_unusable,
    frame_resizer,
)
from prebake.errors import PrebakeError, SourceError, one_line
from prebake.sources import open_video
from prebake.sources.base import Video, VideoRef
from prebake.storage import StorageOptions
from prebake.store.layout import StoreDir
from prebake.store.plan import UnitPlan, encode_ints, items_of
from prebake.store.schema import SCHEMA_VERSION, array_specs, fields_of
from prebake.store.writer import RowStream, StoreWriteError, remove_shards

PROMPT_CELLS_DTYPE = "<i2"  # cells on in a 16 x 16 prompt grid, as the items table stores them

_progress: Callable[[int], None] = lambda frames: None  # noqa: E731 (see set_progress)


def set_progress(report: Callable[[int], None]) -> None:
    """Call `report(frames)` as frames are baked in this process (a worker's progress queue)."""
    global _progress
    _progress = report


def tune_memory() -> None:
    """Keep freed frame-sized buffers in the heap for the next frame.

    Every frame allocates a dozen arrays of 1-3 MB; by default glibc gives much of that memory
    back after each frame and faults it in again for the next one (REFERENCE.md section 6):
    measured here, about 3 ms of a frame's ~50 ms. Only worker processes (and the benchmark's
    bare compute) are tuned; the heap stays bounded by one frame's working set.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024 * 1024)  # M_MMAP_THRESHOLD: frame buffers come from the heap
        libc.mallopt(-1, 256 * 1024 * 1024)  # M_TRIM_THRESHOLD: and stay there for reuse


def plan_units(
    refs: list[tuple[int, VideoRef]], storage_options: StorageOptions | None = None
) -> list[UnitPlan]:
    """`plan_unit` of each (video row, ref): one task plans a batch of videos."""
    return [plan_unit(index, ref, storage_options) for index, ref in refs]


def plan_unit(index: int, ref: VideoRef, storage_options: StorageOptions | None = None) -> UnitPlan:
    """Open and validate one video; a video that cannot be opened is a failed unit, not an error."""
    try:
        return UnitPlan.from_video(index, open_video(ref, storage_options))
    except PrebakeError as error:
        return UnitPlan.failed(index, ref, one_line(str(error)))
    except Exception as error:  # never let one broken video stop the build
        return UnitPlan.failed(index, ref, _unexpected(ref.frames, error))


def _unexpected(where: str, error: BaseException) -> str:
    return one_line(f"{where}: unexpected {type(error).__name__}: {error}")


def bake_unit(
    store_path: str,
    unit_data: dict[str, Any],
    params: dict[str, Any],
    storage_options: StorageOptions | None = None,
    schema_version: int = SCHEMA_VERSION,
    resizing: Resizing | None = None,
) -> dict[str, Any]:
    """Bake one planned video into the rows it owns; return its record (never raises for bad input).

    Idempotent: it writes only the unit's own shards, each atomically, with the same bytes
    every time, so running it again (after a crash, or on another Dask worker) is harmless.
    `storage_options` are for a store or source named by URL; the arrays written are those of
    `params`' fields, in the layout of `schema_version`; `resizing` says where the images are
    resized (Pillow by default; the bytes are the same either way). Raises StoreWriteError when
    the store cannot be written (the store's fault, not the video's).
    """
    exit_if_unusable()  # a worker whose CUDA context broke is replaced, not used
    unit = UnitPlan.from_json(unit_data)
    store = StoreDir(store_path, storage_options)
    specs = array_specs(schema_version)
    first_rows = {"frame_rows": unit.frame_row, "item_rows": unit.item_row}
    streams = {
        name: RowStream(
            store,
            specs[name],
            first_rows[specs[name].rows],
            params[str(specs[name].rows_per_shard)],
        )
        for name in fields_of(params)
    }
    started = time.perf_counter()
    try:
        prompt_cells, resized_by = _bake_frames(
            unit, streams, params, storage_options, resizing or Resizing()
        )
        written = sum(stream.close() for stream in streams.values())
    except Exception as error:  # any failure of one video is recorded, never fatal to the build
        for stream in streams.values():
            stream.abort()
        if isinstance(error, StoreWriteError):  # the store's fault, not the video's: stop
            raise
        remove_unit_shards(store, unit, params)
        if isinstance(error, PrebakeError):
            reason = one_line(str(error))
        else:
            reason = _unexpected(unit.frames, error)
        return {"index": unit.index, "status": "failed", "reason": reason}
    return {
        "index": unit.index,
        "status": "ok",
        "prompt_cells": encode_ints(np.array(prompt_cells), PROMPT_CELLS_DTYPE),
        "bytes": written,
        "seconds": round(time.perf_counter() - started, 3),
        "resize": resized_by,
    }


def remove_unit_shards(store: StoreDir, unit: UnitPlan, params: dict[str, Any]) -> None:
    """Delete the shards of a unit that failed: the store holds nothing its tables do not list."""
    first_rows = {"frame_rows": unit.frame_row, "item_rows": unit.item_row}
    counts = {"frame_rows": len(unit.frame_indices), "item_rows": len(unit.items)}
    for name in fields_of(params):
        spec = array_specs()[name]
        rows_per_shard = params[str(spec.rows_per_shard)]
        remove_shards(store, spec, first_rows[spec.rows], counts[spec.rows], rows_per_shard)


def worker_died(store: StoreDir, unit: UnitPlan, params: dict[str, Any]) -> dict[str, Any]:
    """The record of a video whose worker died each time it was baked (its shards removed)."""
    remove_unit_shards(store, unit, params)
    reason = (
        f"{unit.frames}: the worker process baking this video died "
        "(a crash in a decoder, or killed, e.g. out of memory)"
    )
    return {"index": unit.index, "status": "failed", "reason": reason}


def _bake_frames(
    unit: UnitPlan,
    streams: dict[str, RowStream],
    params: dict[str, Any],
    storage_options: StorageOptions | None,
    resizing: Resizing,
) -> tuple[list[int], str]:
    """Every frame's images and every item's masks into the streams; return the items' prompt
    cells and what resized the images."""
    video = open_video(unit.ref, storage_options)
    planned = (unit.frame_indices.tolist(), unit.masklets, unit.width, unit.height)
    found = (
        list(video.frame_indices),
        [(m.type, m.id) for m in video.masklets],
        video.width,
        video.height,
    )
    if planned != found or not np.array_equal(unit.items, items_of(video.areas)):
        raise SourceError(
            unit.frames, "source changed since the build was planned; rebuild with --overwrite"
        )
    items_at: list[list[tuple[int, int]]] = [[] for _ in unit.frame_indices]
    for t, k, area in unit.items.tolist():
        items_at[t].append((k, area))
    prompt_cells: list[int] = []
    frames = 0
    images = ImageFields(
        pixel_values="pixel_values" in streams,
        g_pixel_values="g_pixel_values" in streams,
        levels="pixel_values" in streams and streams["pixel_values"].spec.dtype == "uint8",
    )
    resizer = frame_resizer(
        resizing, unit.frames, (unit.width, unit.height), params["pillow_rule"], images
    )
    try:
        for t, frame in video.iter_frames(params["decoding"]["conversion"]):
            _append_images(streams, resizer.push(frame))
            del frame  # one frame (or one batch) at a time, whatever the video's length
            prompt_cells += _bake_items(unit, video, t, items_at[t], streams)
            frames += 1
        _append_images(streams, resizer.flush())
    finally:
        resizer.close()
    if frames != len(unit.frame_indices):  # a source must yield every planned frame, or raise
        raise SourceError(
            unit.frames, f"gave {frames} of the {len(unit.frame_indices)} annotated frames"
        )
    return prompt_cells, resizer.description


def _append_images(streams: dict[str, RowStream], rows: ImageRows) -> None:
    for pixel_values, g_pixel_values in rows:
        if pixel_values is not None:
            streams["pixel_values"].append(pixel_values)
        if g_pixel_values is not None:
            streams["g_pixel_values"].append(g_pixel_values)
    if rows:
        _progress(len(rows))


def _bake_items(
    unit: UnitPlan,
    video: Video,
    t: int,
    items: list[tuple[int, int]],
    streams: dict[str, RowStream],
) -> list[int]:
    """The masks and prompts of frame t's items into their streams; return their prompt cells."""
    prompt_cells = []
    for k, area in items:
        mask = video.mask(t, k)
        if int(np.count_nonzero(mask)) != area:
            raise SourceError(
                unit.annotations[0],
                f"mask of masklet {unit.masklets[k]} at frame {t} decodes to another area "
                "than its RLE counts",
            )
        if "masks" in streams:
            streams["masks"].append(transforms.masks(mask))
        prompt = transforms.prompt_masks(mask)  # its cells are in the items table
        if "prompt_masks" in streams:
            streams["prompt_masks"].append(prompt)
        prompt_cells.append(int(prompt.sum()))
    return prompt_cells
