"""`prebake build`: plan the units (videos), bake each into the shards it owns, then commit.

Commit order makes a crash harmless: a unit's shards are written (atomically, one file at a
time), then its record; only when every unit has a record are the tables written and the store
marked complete. Re-running the same build skips units that have a record and redoes the rest,
which gives a store bitwise identical to an uninterrupted build.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prebake import transforms
from prebake.errors import PrebakeError, SourceError, StoreError
from prebake.sources import MASKLET_TYPES, discover, open_video
from prebake.sources.annotations import FRAME_STRIDE
from prebake.sources.base import VideoRef
from prebake.store.layout import BUILD_DIR, StoreDir
from prebake.store.lock import StoreLock
from prebake.store.plan import UnitPlan, assign_rows
from prebake.store.schema import DATA_ARRAYS, SCHEMA_NAME, SCHEMA_VERSION, array_specs
from prebake.store.writer import RowStream, remove_shards
from prebake.versions import library_versions

DEFAULT_FRAMES_PER_SHARD = 64
DEFAULT_ITEMS_PER_SHARD = 1024


class BuildInterrupted(PrebakeError):
    """Ctrl-C: everything committed so far is kept; the same command resumes."""


@dataclass
class BuildOptions:
    src: Path
    out: Path
    workers: int = 1
    masklets: str = "manual"  # "manual", "auto" or "all"
    layout: str = "auto"  # "auto", "train", "frames" or "png"
    limit: int | None = None
    video_ids: list[str] | None = None
    frames_per_shard: int = DEFAULT_FRAMES_PER_SHARD
    items_per_shard: int = DEFAULT_ITEMS_PER_SHARD
    overwrite: bool = False
    progress: bool = True


@dataclass
class BuildReport:
    store: Path
    videos: int
    videos_failed: int
    frames: int
    items: int
    bytes: int
    seconds: float
    resumed: int = 0  # units found already committed
    already_complete: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def settings_of(options: BuildOptions) -> dict[str, Any]:
    """Everything that decides a store's bytes: a store is only resumed with equal settings."""
    params = dict(transforms.PARAMS)
    params.update(
        frame_stride=FRAME_STRIDE,
        masklets=options.masklets,
        layout=options.layout,
        frames_per_shard=options.frames_per_shard,
        items_per_shard=options.items_per_shard,
    )
    source = {
        "root": str(options.src.resolve()),
        "videos_filter": sorted(options.video_ids) if options.video_ids is not None else None,
        "limit": options.limit,
    }
    return {"params": params, "source": source, "pillow": library_versions()["pillow"]}


# -- worker side ------------------------------------------------------------------------------

_progress: Callable[[int], None] = lambda frames: None  # noqa: E731 (replaced in each worker)


def _init_worker(progress_queue: Any) -> None:
    global _progress
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    with contextlib.suppress(OSError):  # die with the parent: no orphan writes after a kill -9
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    _progress = progress_queue.put


def plan_unit(index: int, ref: VideoRef) -> UnitPlan:
    try:
        return UnitPlan.from_video(index, open_video(ref))
    except PrebakeError as error:
        return UnitPlan.failed(index, ref, str(error))


def bake_unit(store_path: str, unit_data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Bake one planned video into the rows it owns; return its record (never raises for bad input)."""
    unit = UnitPlan.from_json(unit_data)
    store = StoreDir(store_path)
    specs = array_specs()
    first_rows = {"frame_rows": unit.frame_row, "item_rows": unit.item_row}
    streams = {
        name: RowStream(
            store,
            specs[name],
            first_rows[specs[name].rows],
            params[str(specs[name].rows_per_shard)],
        )
        for name in DATA_ARRAYS
    }
    started = time.perf_counter()
    try:
        prompt_cells = _bake_frames(unit, streams)
        written = sum(stream.close() for stream in streams.values())
    except Exception as error:  # any failure of one video is recorded, never fatal to the build
        for stream in streams.values():
            stream.abort()
        counts = {"frame_rows": len(unit.frame_indices), "item_rows": len(unit.items)}
        for name in DATA_ARRAYS:
            spec = specs[name]
            rows_per_shard = params[str(spec.rows_per_shard)]
            remove_shards(store, spec, first_rows[spec.rows], counts[spec.rows], rows_per_shard)
        reason = (
            str(error)
            if isinstance(error, PrebakeError)
            else f"{unit.frames}: unexpected {type(error).__name__}: {error}"
        )
        return {"index": unit.index, "status": "failed", "reason": reason}
    return {
        "index": unit.index,
        "status": "ok",
        "prompt_cells": prompt_cells,
        "bytes": written,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _bake_frames(unit: UnitPlan, streams: dict[str, RowStream]) -> list[int]:
    video = open_video(unit.ref)
    planned = (unit.frame_indices, unit.masklets, unit.width, unit.height)
    found = (
        video.frame_indices,
        [(m.type, m.id) for m in video.masklets],
        video.width,
        video.height,
    )
    if planned != found:
        raise SourceError(
            unit.frames, "source changed since the build was planned; rebuild with --overwrite"
        )
    items_at: list[list[tuple[int, int]]] = [[] for _ in unit.frame_indices]
    for t, k, area in unit.items:
        items_at[t].append((k, area))
    prompt_cells = []
    for t, frame in video.iter_frames():
        streams["pixel_values"].append(transforms.pixel_values(frame))
        streams["g_pixel_values"].append(transforms.g_pixel_values(frame))
        for k, area in items_at[t]:
            mask = video.mask(t, k)
            if int(np.count_nonzero(mask)) != area:
                raise SourceError(
                    unit.annotations[0],
                    f"mask of masklet {unit.masklets[k]} at frame {t} decodes to another area than its RLE counts",
                )
            streams["masks"].append(transforms.masks(mask))
            prompt = transforms.prompt_masks(mask)
            streams["prompt_masks"].append(prompt)
            prompt_cells.append(int(prompt.sum()))
        _progress(1)
    return prompt_cells


# -- orchestration ----------------------------------------------------------------------------


def build(options: BuildOptions) -> BuildReport:
    """Build (or resume) the store `options.out` from `options.src`."""
    out = options.out
    store = StoreDir(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out}: exists and is not a folder")
    if (
        out.is_dir()
        and any(out.iterdir())
        and store.attrs() is None
        and not store.build_dir.exists()
    ):
        raise StoreError(
            f"{out}: folder is not empty and is not a prebake store; refusing to write into it"
        )
    out.mkdir(parents=True, exist_ok=True)
    with StoreLock(store.lock_path, out) as lock:
        if lock.took_over:
            _say(
                options,
                f"note: took over the lock of a build that died (pid {lock.took_over.get('pid')} on {lock.took_over.get('host')})",
            )
        return _build_locked(options, store)


def _say(options: BuildOptions, message: str) -> None:
    if options.progress:
        from tqdm import tqdm

        tqdm.write(message)


def _build_locked(options: BuildOptions, store: StoreDir) -> BuildReport:
    started = time.time()
    settings = settings_of(options)
    attrs = None if options.overwrite else store.attrs()
    if attrs is not None:
        differences = [
            key
            for key in ("params", "source", "pillow")
            if attrs["settings"].get(key) != settings[key]
        ]
        if differences:
            raise StoreError(
                f"{store.path}: store was built with other {' and '.join(differences)} settings; use --overwrite to start over"
            )
        if attrs["state"] == "complete":
            return _report_from_attrs(store.path, attrs, already_complete=True)
    plan = store.read_plan() if attrs is not None else None
    if plan is None or plan["settings"] != settings:
        store.clear()
        store.prepare_build_dir()
        plan = _make_plan(options, settings)
        store.write_plan(plan)
        attrs = _initial_attrs(options, settings, plan, started)
        store.create(attrs, settings["params"])
    else:
        store.prepare_build_dir()
    assert attrs is not None
    units = [UnitPlan.from_json(unit) for unit in plan["units"]]
    for unit in units:  # videos that could not even be opened are committed as failures now
        if unit.status == "failed" and store.read_record(unit.index) is None:
            store.write_record({"index": unit.index, "status": "failed", "reason": unit.reason})
    todo = [unit for unit in units if store.read_record(unit.index) is None]
    resumed = sum(unit.status == "planned" for unit in units) - len(todo)
    if resumed:
        _say(options, f"resuming: {resumed} videos already baked, {len(todo)} to go")
    _run_units(options, store, settings["params"], todo)
    return _commit(store, attrs, units, started, resumed, options.workers)


def _make_plan(options: BuildOptions, settings: dict[str, Any]) -> dict[str, Any]:
    refs = discover(
        options.src,
        layout=options.layout,
        masklets=options.masklets,
        video_ids=options.video_ids,
        limit=options.limit,
    )
    units = list(_parallel(options, "planning", "videos", plan_unit, list(enumerate(refs))))
    units.sort(key=lambda unit: unit.index)
    frame_rows, item_rows = assign_rows(units, options.frames_per_shard, options.items_per_shard)
    return {
        "settings": settings,
        "frame_rows": frame_rows,
        "item_rows": item_rows,
        "units": [u.to_json() for u in units],
    }


def _parallel(
    options: BuildOptions,
    label: str,
    unit_name: str,
    function: Callable[..., Any],
    arguments: list[tuple[Any, ...]],
) -> Iterator[Any]:
    from tqdm import tqdm

    with tqdm(
        total=len(arguments), desc=label, unit=unit_name, disable=not options.progress
    ) as bar:
        if options.workers <= 1:
            for args in arguments:
                yield function(*args)
                bar.update(1)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(options.workers, mp_context=context) as executor:
            for result in executor.map(function, *zip(*arguments, strict=True), chunksize=8):
                yield result
                bar.update(1)


def _initial_attrs(
    options: BuildOptions, settings: dict[str, Any], plan: dict[str, Any], started: float
) -> dict[str, Any]:
    units = plan["units"]
    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "state": "building",
        "frame_rows": plan["frame_rows"],
        "item_rows": plan["item_rows"],
        "masklet_types": list(MASKLET_TYPES),
        "params": settings["params"],
        "versions": library_versions(),
        "source": {**settings["source"], "videos": len(units)},
        "settings": settings,
        "counts": {},
        "failures": [],
        "build": {"started": _iso(started), "workers": options.workers},
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _run_units(
    options: BuildOptions, store: StoreDir, params: dict[str, Any], todo: list[UnitPlan]
) -> None:
    from tqdm import tqdm

    total_frames = sum(len(unit.frame_indices) for unit in todo)
    bar = tqdm(
        total=total_frames,
        desc="baking",
        unit="frame",
        disable=not options.progress,
        smoothing=0.05,
    )
    done = failed = 0

    def commit_record(record: dict[str, Any]) -> None:
        nonlocal done, failed
        store.write_record(record)
        done += 1
        failed += record["status"] != "ok"
        bar.set_postfix_str(f"videos {done}/{len(todo)}, failed {failed}")

    try:
        if options.workers <= 1:
            global _progress
            _progress = bar.update
            for unit in todo:
                commit_record(bake_unit(str(store.path), unit.to_json(), params))
        else:
            _run_pool(options.workers, store, params, todo, bar, commit_record)
    except KeyboardInterrupt:
        raise BuildInterrupted(
            f"{store.path}: interrupted; {done} of {len(todo)} videos committed in this run. Run the same command again to resume."
        ) from None
    finally:
        bar.close()


def _run_pool(
    workers: int,
    store: StoreDir,
    params: dict[str, Any],
    todo: Iterable[UnitPlan],
    bar: Any,
    commit_record: Callable[[dict[str, Any]], None],
) -> None:
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    executor = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(progress_queue,)
    )
    pending: set[Future[dict[str, Any]]] = set()
    units = iter(todo)
    try:
        while True:
            while len(pending) < 2 * workers and (unit := next(units, None)) is not None:
                pending.add(executor.submit(bake_unit, str(store.path), unit.to_json(), params))
            if not pending:
                break
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(progress_queue, bar)
            for future in finished:
                commit_record(future.result())
        _drain(progress_queue, bar)
    except BrokenProcessPool:
        raise StoreError(
            f"{store.path}: a worker process died (killed, or out of memory?); run the same command again to resume"
        ) from None
    finally:
        for process in list(getattr(executor, "_processes", {}).values()):
            if process.is_alive():
                process.kill()
        executor.shutdown(wait=True, cancel_futures=True)


def _drain(progress_queue: Any, bar: Any) -> None:
    while True:
        try:
            bar.update(progress_queue.get_nowait())
        except queue.Empty:
            return


def _commit(
    store: StoreDir,
    attrs: dict[str, Any],
    units: list[UnitPlan],
    started: float,
    resumed: int,
    workers: int,
) -> BuildReport:
    records = [store.read_record(unit.index) for unit in units]
    assert all(record is not None for record in records), "every unit has a record before commit"
    tables = make_tables(units, records, attrs["frame_rows"], attrs["source"]["root"])  # type: ignore[arg-type]
    store.write_tables(tables)
    failures = [
        {"video_id": unit.video_id, "path": unit.frames, "reason": record["reason"]}
        for unit, record in zip(units, records, strict=True)
        if record and record["status"] != "ok"
    ]
    finished = time.time()
    attrs = dict(attrs)
    attrs["state"] = "complete"
    attrs["counts"] = {
        "videos": len(units),
        "videos_failed": len(failures),
        "frames": int((tables["frames/video"] >= 0).sum()),
        "items": len(tables["items/area"]),
    }
    attrs["failures"] = failures
    attrs["build"] = {
        **attrs["build"],
        "finished": _iso(finished),
        "seconds": round(finished - started, 3),
        "workers": workers,
    }
    store.set_attrs(attrs)
    store.remove_build_dir()
    return _report_from_attrs(store.path, attrs, resumed=resumed, seconds=finished - started)


def make_tables(
    units: list[UnitPlan], records: list[dict[str, Any]], frame_rows: int, source_root: str
) -> dict[str, np.ndarray]:
    """The row tables, from the plan and the unit records, in plan order (so they are deterministic)."""
    frame_video = np.full(frame_rows, -1, dtype=np.int32)
    frame_index = np.full(frame_rows, -1, dtype=np.int32)
    columns: dict[str, list[int]] = {
        key: []
        for key in (
            "frame_row",
            "mask_row",
            "video",
            "frame_index",
            "masklet_id",
            "masklet_type",
            "area",
            "prompt_cells",
        )
    }
    videos: dict[str, list[Any]] = {
        key: []
        for key in (
            "video_id",
            "layout",
            "source",
            "status",
            "width",
            "height",
            "frame_count",
            "frame_row",
            "frames",
            "item_row",
            "items",
        )
    }
    for row, (unit, record) in enumerate(zip(units, records, strict=True)):
        ok = record["status"] == "ok"
        if ok:
            rows = slice(unit.frame_row, unit.frame_row + len(unit.frame_indices))
            frame_video[rows] = row
            frame_index[rows] = unit.frame_indices
            for position, ((t, k, area), cells) in enumerate(
                zip(unit.items, record["prompt_cells"], strict=True)
            ):
                kind, masklet_id = unit.masklets[k]
                columns["frame_row"].append(unit.frame_row + t)
                columns["mask_row"].append(unit.item_row + position)
                columns["video"].append(row)
                columns["frame_index"].append(unit.frame_indices[t])
                columns["masklet_id"].append(masklet_id)
                columns["masklet_type"].append(MASKLET_TYPES.index(kind))
                columns["area"].append(area)
                columns["prompt_cells"].append(cells)
        values = {
            "video_id": unit.video_id,
            "layout": unit.layout,
            "source": os.path.relpath(unit.frames, source_root),
            "status": "ok" if ok else "failed",
            "width": unit.width,
            "height": unit.height,
            "frame_count": unit.frame_count,
            "frame_row": unit.frame_row if ok else -1,
            "frames": len(unit.frame_indices) if ok else 0,
            "item_row": unit.item_row if ok else -1,
            "items": len(unit.items) if ok else 0,
        }
        for key, value in values.items():
            videos[key].append(value)
    specs = array_specs()
    tables = {"frames/video": frame_video, "frames/frame_index": frame_index}
    for key, column in columns.items():
        tables[f"items/{key}"] = np.array(column, dtype=specs[f"items/{key}"].numpy_dtype)
    for key, video_column in videos.items():
        tables[f"videos/{key}"] = np.array(video_column, dtype=specs[f"videos/{key}"].numpy_dtype)
    return tables


def _report_from_attrs(
    path: Path,
    attrs: dict[str, Any],
    *,
    already_complete: bool = False,
    resumed: int = 0,
    seconds: float | None = None,
) -> BuildReport:
    counts = attrs["counts"]
    return BuildReport(
        store=path,
        videos=counts["videos"],
        videos_failed=counts["videos_failed"],
        frames=counts["frames"],
        items=counts["items"],
        bytes=store_bytes(path),
        seconds=attrs["build"]["seconds"] if seconds is None else seconds,
        resumed=resumed,
        already_complete=already_complete,
        failures=attrs["failures"],
    )


def store_bytes(path: Path) -> int:
    """Bytes on disk of the store's files (the build folder excluded)."""
    total = 0
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != BUILD_DIR]
        total += sum(os.path.getsize(os.path.join(folder, name)) for name in files)
    return total
