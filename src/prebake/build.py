"""`prebake build`: plan the units (videos), bake each into the shards it owns, then commit.

Commit order makes a crash harmless: a unit's shards are written (atomically, one file at a
time), then its record; only when every unit has a record are the tables written and the store
marked complete. Re-running the same build skips units that have a record and redoes the rest,
which gives a store bitwise identical to an uninterrupted build, whenever the first run was
killed (kill -9 included) or interrupted (Ctrl-C).

Units run in worker processes of this machine, or as Dask tasks on a cluster (`dask`, see
`prebake.cluster`, imported only then); either way this process alone holds the lock, writes
the records and commits. The store and the source may be local paths or fsspec URLs
(`prebake.storage`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import queue
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prebake import decoding, transforms
from prebake.errors import PrebakeError, SourceError, StoreError
from prebake.sources import (
    MASKLET_TYPES,
    NOT_FOUND_HINT,
    Discovery,
    find_videos,
    fingerprint,
    open_video,
    select,
)
from prebake.sources.annotations import FRAME_STRIDE
from prebake.sources.base import VideoRef
from prebake.storage import (
    RemotePath,
    StorageOptions,
    as_path,
    is_url,
    location_text,
    tree_bytes,
)
from prebake.store.growth import StoredVideos, commit_append, pending_append, plan_growth
from prebake.store.layout import BUILD_DIR, StoreDir
from prebake.store.lock import RemoteStoreLock, StoreLock
from prebake.store.plan import UnitPlan, assign_rows, decode_ints, encode_ints, items_of
from prebake.store.schema import DATA_ARRAYS, SCHEMA_NAME, SCHEMA_VERSION, array_specs
from prebake.store.tables import Base, make_tables
from prebake.store.writer import RowStream, StoreWriteError, remove_shards
from prebake.versions import library_versions

if TYPE_CHECKING:
    from prebake.cluster import DaskCluster

DEFAULT_FRAMES_PER_SHARD = 64
DEFAULT_ITEMS_PER_SHARD = 1024
MAX_REASON_CHARS = 300  # a failure reason is one line of a report, not a dump
PLAN_BATCH = 16  # videos per planning task: parsing one JSON is quick, a task round trip is not
PROMPT_CELLS_DTYPE = "<i2"  # cells on in a 16 x 16 prompt grid, as the items table stores them
PLAN_INLINE = 64  # up to this many videos are planned here, while the workers start
RECORD_WRITERS = 16  # records PUT at once to a remote store


class BuildInterrupted(PrebakeError):
    """Ctrl-C: everything committed so far is kept; the same command resumes."""


@dataclass
class BuildOptions:
    src: str | Path  # a folder, or an fsspec URL (s3://bucket/sav)
    out: str | Path  # likewise
    workers: int = 1
    masklets: str = "manual"  # "manual", "auto" or "all"
    layout: str = "auto"  # "auto", "train", "frames" or "png"
    limit: int | None = None
    video_ids: list[str] | None = None
    frames_per_shard: int = DEFAULT_FRAMES_PER_SHARD
    items_per_shard: int = DEFAULT_ITEMS_PER_SHARD
    overwrite: bool = False
    progress: bool = True
    storage_options: StorageOptions | None = None  # for fsspec URLs (endpoint, credentials)
    dask: str | None = None  # run units on Dask: "tcp://host:8786" or "local:N"
    pillow_rule: int = transforms.DEFAULT_PILLOW_RULE  # the trainer's Pillow: 13, or 12 and older
    # How decoded mp4 frames become RGB (prebake.decoding.CONVERSIONS). Not a command option:
    # "opencv" is the reference; "legacy" bakes stores as prebake did before, for tests only.
    decoder_conversion: str = "opencv"
    retry_failed: bool = False  # bake the videos recorded as failed again (as new units)


@dataclass
class BuildReport:
    store: Path | RemotePath
    videos: int
    videos_failed: int
    frames: int
    items: int
    bytes: int
    seconds: float
    resumed: int = 0  # units found already baked by an earlier run (of a build or an append)
    already_complete: bool = False  # nothing was baked: the store already held the selection
    failures: list[dict[str, str]] = field(default_factory=list)
    frames_baked: int = 0  # frames this run baked
    built: bool = False  # this run committed a fresh build
    added: int = 0  # videos this run added to a complete store
    retried: int = 0  # failed videos this run baked again
    retried_ok: int = 0  # of those, baked now
    source_problems: list[str] = field(default_factory=list)  # unreadable links and folders
    source_changes: list[str] = field(default_factory=list)  # baked videos changed or gone
    source_notes: list[str] = field(default_factory=list)  # files that pair with nothing

    @property
    def problems(self) -> bool:
        """Anything that makes `prebake build` exit 1."""
        return bool(self.failures or self.source_problems or self.source_changes)

    @property
    def frames_per_second(self) -> float:
        """Frames baked by this run per second of it."""
        return self.frames_baked / self.seconds if self.seconds > 0 else 0.0


def settings_of(options: BuildOptions) -> dict[str, Any]:
    """Everything that decides a store's bytes: a store is only resumed with equal settings."""
    params = dict(transforms.PARAMS)
    params.update(
        frame_stride=FRAME_STRIDE,
        masklets=options.masklets,
        layout=options.layout,
        frames_per_shard=options.frames_per_shard,
        items_per_shard=options.items_per_shard,
        pillow_rule=options.pillow_rule,
        decoding=decoding.decoding_settings(options.decoder_conversion),
    )
    # The source root, not the selection (--videos, --limit): a selection says what to add.
    source = {"root": location_text(as_path(options.src, options.storage_options))}
    return {"params": params, "source": source, "pillow": library_versions()["pillow"]}


def selection_of(options: BuildOptions) -> dict[str, Any]:
    """What one run asked to bake (recorded with the build or append it made)."""
    return {
        "videos_filter": sorted(options.video_ids) if options.video_ids is not None else None,
        "limit": options.limit,
        "retry_failed": options.retry_failed,
    }


def one_line(text: str) -> str:
    """A failure reason as one short line (some library messages span several)."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


# -- worker side ------------------------------------------------------------------------------

_progress: Callable[[int], None] = lambda frames: None  # noqa: E731 (replaced in each worker)


def _init_worker(progress_queue: Any, parent_pid: int) -> None:
    global _progress
    # The parent spawned this process with SIGINT blocked: ignore it before unblocking, so a
    # Ctrl-C sent to the whole process group is the parent's alone to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    with contextlib.suppress(OSError, AttributeError):  # die with the parent (kill -9 included)
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl: nobody will commit our work
        os._exit(1)
    tune_memory()
    _progress = progress_queue.put


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


def _ready() -> None:
    """A task that only makes the pool spawn a worker."""


def plan_units(
    refs: list[tuple[int, VideoRef]], storage_options: StorageOptions | None = None
) -> list[UnitPlan]:
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
) -> dict[str, Any]:
    """Bake one planned video into the rows it owns; return its record (never raises for bad input).

    Idempotent: it writes only the unit's own shards, each atomically, with the same bytes
    every time, so running it again (after a crash, or on another Dask worker) is harmless.
    `storage_options` are for a store or source named by URL.
    """
    unit = UnitPlan.from_json(unit_data)
    store = StoreDir(store_path, storage_options)
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
        prompt_cells = _bake_frames(unit, streams, params, storage_options)
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
    }


def remove_unit_shards(store: StoreDir, unit: UnitPlan, params: dict[str, Any]) -> None:
    """Delete the shards of a unit that failed: the store holds nothing its tables do not list."""
    first_rows = {"frame_rows": unit.frame_row, "item_rows": unit.item_row}
    counts = {"frame_rows": len(unit.frame_indices), "item_rows": len(unit.items)}
    for name in DATA_ARRAYS:
        spec = array_specs()[name]
        rows_per_shard = params[str(spec.rows_per_shard)]
        remove_shards(store, spec, first_rows[spec.rows], counts[spec.rows], rows_per_shard)


def _bake_frames(
    unit: UnitPlan,
    streams: dict[str, RowStream],
    params: dict[str, Any],
    storage_options: StorageOptions | None,
) -> list[int]:
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
    prompt_cells = []
    frames = 0
    pillow = params["pillow_rule"]
    for t, frame in video.iter_frames(params["decoding"]["conversion"]):
        streams["pixel_values"].append(transforms.pixel_values(frame, pillow))
        streams["g_pixel_values"].append(transforms.g_pixel_values(frame, pillow))
        del frame  # one frame at a time, whatever the video's length
        for k, area in items_at[t]:
            mask = video.mask(t, k)
            if int(np.count_nonzero(mask)) != area:
                raise SourceError(
                    unit.annotations[0],
                    f"mask of masklet {unit.masklets[k]} at frame {t} decodes to another area "
                    "than its RLE counts",
                )
            streams["masks"].append(transforms.masks(mask))
            prompt = transforms.prompt_masks(mask)
            streams["prompt_masks"].append(prompt)
            prompt_cells.append(int(prompt.sum()))
        frames += 1
        _progress(1)
    if frames != len(unit.frame_indices):  # a source must yield every planned frame, or raise
        raise SourceError(
            unit.frames, f"gave {frames} of the {len(unit.frame_indices)} annotated frames"
        )
    return prompt_cells


# -- orchestration ----------------------------------------------------------------------------


def build(options: BuildOptions) -> BuildReport:
    """Build (or resume) the store `options.out` from `options.src`.

    Raises StoreError (one line) when the store cannot be built (locked, built with other
    settings, not a prebake folder, disk full) and BuildInterrupted on Ctrl-C; a video that
    fails is not an error: it is listed in the report's failures and in the store.
    """
    try:
        return _build(options)
    except OSError as error:  # the store's disk or the source folder, not one video
        raise StoreError(
            f"{error.filename or options.out}: {error.strerror or error}; "
            "fix it and run the same command again"
        ) from None


def _build(options: BuildOptions) -> BuildReport:
    if options.pillow_rule not in transforms.PILLOW_RULES:
        raise PrebakeError(
            f"pillow rule must be one of {', '.join(map(str, transforms.PILLOW_RULES))}, "
            f"not {options.pillow_rule!r}"
        )
    if options.dask is not None:
        options = _absolute(options)
    out = as_path(options.out, options.storage_options)
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
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with _lock_of(store) as lock:
        if lock.took_over:
            _say(
                options,
                f"note: took over the lock of a build that died (pid {lock.took_over.get('pid')} "
                f"on {lock.took_over.get('host')})",
            )
        builder = _Builder(options, store, lock)
        try:
            return builder.run()
        except KeyboardInterrupt:
            raise BuildInterrupted(builder.interrupted_message()) from None
        finally:
            builder.close()
            _tidy(store, created)


def _absolute(options: BuildOptions) -> BuildOptions:
    """Local paths made absolute: Dask workers do not share this process's working folder."""

    def absolute(location: str | Path) -> str | Path:
        return location if is_url(str(location)) else Path(location).resolve()

    return replace(options, src=absolute(options.src), out=absolute(options.out))


def _lock_of(store: StoreDir) -> StoreLock | RemoteStoreLock:
    if isinstance(store.lock_path, RemotePath):
        return RemoteStoreLock(store.lock_path, store.path)
    assert isinstance(store.path, Path)
    return StoreLock(store.lock_path, store.path)


def _tidy(store: StoreDir, created: bool) -> None:
    """Leave no build folder where it holds nothing to resume: in a complete store (however
    this run ended) or where nothing was committed yet (the run failed or stopped planning).
    An append not committed yet keeps its folder, so the next run finishes it."""
    attrs = store.attrs()
    try:
        pending = pending_append(store, attrs)
    except StoreError:
        return
    if pending is None and (attrs is None or attrs.get("state") == "complete"):
        store.remove_build_dir()
        if created and isinstance(store.path, Path) and not any(store.path.iterdir()):
            store.path.rmdir()


def _say(options: BuildOptions, message: str) -> None:
    if options.progress:
        from tqdm import tqdm

        tqdm.write(message)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT while workers are spawned: they inherit the mask, then ignore SIGINT."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a pending Ctrl-C arrives now


class _WorkerPool:
    """The worker processes of one build, spawned once for planning and baking alike (a
    spawned worker costs a few tenths of a second of imports)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self.progress_queue = context.Queue()
        self.executor = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self.progress_queue, os.getpid()),
        )

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        with _sigint_blocked():  # submit() spawns the workers
            return self.executor.submit(function, *args)

    def warm_up(self) -> None:
        """Spawn every worker now (submit() spawns one per task while none is idle)."""
        for _ in range(self.workers):
            self.submit(_ready)

    def drain(self, bar: Any) -> None:
        while True:
            try:
                bar.update(self.progress_queue.get_nowait())
            except queue.Empty:
                return

    def close(self, *, kill: bool) -> None:
        if kill:  # interrupted or failed: stop the work in flight, it is redone on resume
            processes = dict(getattr(self.executor, "_processes", None) or {})
            for process in processes.values():
                if process.is_alive():
                    process.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.progress_queue.close()
        self.progress_queue.join_thread()


class _RecordWriter:
    """Writes the units' records: here, one at a time (a local write takes microseconds); to a
    remote store, RECORD_WRITERS at a time, since one PUT takes tens of milliseconds and a big
    cluster finishes hundreds of units a second. `close` waits for them all (the commit reads
    them back) and raises the first error."""

    def __init__(self, store: StoreDir) -> None:
        self.store = store
        self.pending: list[Future[None]] = []
        self.executor = None
        if store.remote:
            self.executor = ThreadPoolExecutor(RECORD_WRITERS, thread_name_prefix="prebake-records")

    def write(self, record: dict[str, Any]) -> None:
        if self.executor is None:
            self.store.write_record(record)
            return
        self.pending.append(self.executor.submit(self.store.write_record, record))
        if len(self.pending) > 4 * RECORD_WRITERS:  # collect finished writes, surface errors
            self.pending = [future for future in self.pending if not _finished(future)]

    def close(self, *, check: bool = True) -> None:
        if self.executor is None:
            return
        self.executor.shutdown(wait=True)
        pending, self.pending = self.pending, []
        for future in pending:
            if check:
                future.result()


def _finished(future: Future[None]) -> bool:
    if not future.done():
        return False
    future.result()  # raises the write's error
    return True


class _Builder:
    """One run of `build` on a locked store: plan (or read the plan), bake, commit."""

    def __init__(
        self, options: BuildOptions, store: StoreDir, lock: StoreLock | RemoteStoreLock
    ) -> None:
        self.options = options
        self.store = store
        self.lock = lock
        self.src = as_path(options.src, options.storage_options)
        self.storage_options = options.storage_options
        self.phase = "starting"
        self.appending = False  # baking an append: the store serves what it held before
        self.committed = 0  # units with a record (earlier runs included)
        self.planned = 0
        self.started = time.time()
        self.report = BuildReport(self.store.path, 0, 0, 0, 0, 0, 0.0)  # what this run did
        self.frames_baked = 0
        self.baked_ids: set[str] = set()  # videos baked (or failed) in this run
        self._found: Discovery | None = None
        self._pool: _WorkerPool | None = None
        self._cluster: DaskCluster | None = None
        self._finished = False

    def pool(self) -> _WorkerPool:
        if self._pool is None:
            self._pool = _WorkerPool(self.options.workers)
        return self._pool

    def cluster(self) -> DaskCluster:
        """The Dask cluster (`--dask`), connected or started on first use."""
        if self._cluster is None:
            from prebake.cluster import DaskCluster

            assert self.options.dask is not None
            self._cluster = DaskCluster(self.options.dask)
        return self._cluster

    @property
    def workers(self) -> int:
        """Worker processes (threads, on Dask) baking, as the store's attributes record."""
        if self._cluster is not None:
            return self._cluster.threads()
        return self.options.workers

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close(kill=not self._finished)
            self._pool = None
        if self._cluster is not None:
            self._cluster.close(kill=not self._finished)
            self._cluster = None

    def interrupted_message(self) -> str:
        where = self.store.path
        kept = "; the store still serves what it held before" if self.appending else ""
        if self.phase in ("starting", "planning"):
            return (
                f"{where}: interrupted while planning, nothing baked yet{kept}; "
                "run the same command again to start"
            )
        if self.phase == "baking":
            return (
                f"{where}: interrupted; {self.committed} of {self.planned} videos are committed "
                f"and kept{kept}; run the same command again to resume"
            )
        return f"{where}: interrupted while finishing; run the same command again to finish"

    def run(self) -> BuildReport:
        """Finish what an earlier run left (a build or an append), or build afresh; then add
        what the source holds and the store lacks (`prebake.store.growth`)."""
        options, store = self.options, self.store
        settings = settings_of(options)
        attrs = None if options.overwrite else store.attrs()
        if attrs is not None:
            _check_settings(store.path, attrs.get("settings") or {}, settings)
        append = pending_append(store, attrs)
        if attrs is not None and append is not None:
            attrs = self._append(settings, attrs, append)
        elif attrs is None or attrs["state"] != "complete":
            attrs = self._build(settings, attrs)
        attrs = self._grow(settings, attrs)
        self._finished = True
        return self._report(attrs)

    def discovery(self) -> Discovery:
        """The source, walked once per run."""
        if self._found is None:
            self._found = find_videos(
                self.src, layout=self.options.layout, masklets=self.options.masklets
            )
            for problem in self._found.problems:
                _say(self.options, f"warning: {problem}")
        return self._found

    def _build(self, settings: dict[str, Any], attrs: dict[str, Any] | None) -> dict[str, Any]:
        """A fresh build, or the resumption of one: plan, bake, commit."""
        options, store = self.options, self.store
        plan = store.read_plan() if attrs is not None else None
        if attrs is None or plan is None or plan["settings"] != settings:
            if options.dask is not None:
                self.cluster()  # an unreachable scheduler stops the build before it writes
            self.phase = "planning"
            store.clear()
            store.prepare_build_dir()
            found = self.discovery()
            refs = select(found.src, found.refs, options.video_ids, options.limit)
            if not refs:  # a wrong --src would otherwise give an empty store and exit 0
                unread = (
                    f"; {len(found.problems)} paths could not be read, first: {found.problems[0]}"
                    if found.problems
                    else ""
                )
                raise StoreError(
                    f"{self.src}: no SA-V videos found with --layout {options.layout} and "
                    f"--masklets {options.masklets} ({NOT_FOUND_HINT}){unread}"
                )
            plan = self._make_plan(settings, list(enumerate(refs)), "build", Base())
            store.write_plan(plan)
            attrs = _initial_attrs(settings, plan, self.started, self.workers)
            attrs["build"].update(selection_of(options))
            store.create(attrs, settings["params"])
        else:
            store.prepare_build_dir()
        units, resumed = self._bake_plan(settings, plan)
        self.phase = "committing"
        self.lock.check()
        attrs = _commit(store, attrs, units, self.started, self.workers)
        self.report.built = True
        self.report.resumed += resumed
        return attrs

    def _grow(self, settings: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
        """Add the selected videos the store lacks (and retry failed ones): an append."""
        options, store = self.options, self.store
        found = self.discovery()
        selected = select(found.src, found.refs, options.video_ids, options.limit)
        if options.retry_failed:  # a video failed in this run is not baked twice
            selected = [ref for ref in selected if ref.video_id not in self.baked_ids]
        growth = plan_growth(StoredVideos.read(store), found, selected, options.retry_failed)
        self.report.source_changes = growth.changes
        if not growth.units:
            return attrs
        if options.dask is not None:
            self.cluster()
        self.phase = "planning"
        self.appending = True
        store.clear_build_dir()
        store.prepare_build_dir()
        plan = self._make_plan(settings, growth.units, "append", Base.of(attrs))
        plan.update(id=uuid.uuid4().hex, selection=selection_of(options))
        store.write_plan(plan)
        return self._append(settings, attrs, plan)

    def _append(
        self, settings: dict[str, Any], attrs: dict[str, Any], plan: dict[str, Any]
    ) -> dict[str, Any]:
        """Bake an append's units into new shards and commit it (or finish committing it)."""
        if Base(**plan["base"]) != Base.of(attrs):
            raise StoreError(
                f"{self.store.path}: the pending append was planned for other contents "
                f"({plan['base']}); rebuild with --overwrite"
            )
        self.appending = True
        self.store.prepare_build_dir()
        units, resumed = self._bake_plan(settings, plan)
        self.report.resumed += resumed
        self.phase = "committing"
        self.lock.check()
        records = _committed_records(self.store, units)
        finished = time.time()
        run = {
            "started": _iso(self.started),
            "finished": _iso(finished),
            "seconds": round(finished - self.started, 3),
            "workers": self.workers,
        }
        attrs = commit_append(self.store, attrs, plan, units, records, run)
        self.store.remove_build_dir()
        retried = [unit for unit in units if unit.index < plan["base"]["videos"]]
        ok = {
            unit.index
            for unit, record in zip(units, records, strict=True)
            if record["status"] == "ok"
        }
        self.report.added += len(units) - len(retried)
        self.report.retried += len(retried)
        self.report.retried_ok += sum(unit.index in ok for unit in retried)
        return attrs

    def _bake_plan(
        self, settings: dict[str, Any], plan: dict[str, Any]
    ) -> tuple[list[UnitPlan], int]:
        """Bake every unit of `plan` without a record; return its units and how many had one."""
        store = self.store
        self.phase = "baking"
        units = [UnitPlan.from_json(unit) for unit in plan.pop("units")]  # kept compact only
        records = store.read_records(unit.index for unit in units)
        for unit in units:  # videos that could not even be opened are committed as failures now
            if unit.status == "failed" and records[unit.index] is None:
                store.write_record({"index": unit.index, "status": "failed", "reason": unit.reason})
                records[unit.index] = {"status": "failed"}
        todo = [unit for unit in units if records[unit.index] is None]
        del records
        self.planned = len(units)
        self.committed = len(units) - len(todo)
        resumed = sum(unit.status == "planned" for unit in units) - len(todo)
        if resumed:
            _say(self.options, f"resuming: {resumed} videos already baked, {len(todo)} to go")
        self._bake(settings["params"], todo)
        self.baked_ids.update(unit.video_id for unit in units)
        return units, resumed

    def _report(self, attrs: dict[str, Any]) -> BuildReport:
        report = _report_from_attrs(
            self.store.path,
            attrs,
            already_complete=not (self.report.built or self.report.added or self.report.retried),
            resumed=self.report.resumed,
            seconds=time.time() - self.started,
        )
        found = self.discovery()
        report.built, report.added = self.report.built, self.report.added
        report.retried, report.retried_ok = self.report.retried, self.report.retried_ok
        report.frames_baked = self.frames_baked
        report.source_problems = list(found.problems)
        report.source_notes = list(found.notes)
        report.source_changes = self.report.source_changes
        return report

    def _make_plan(
        self,
        settings: dict[str, Any],
        refs: list[tuple[int, VideoRef]],
        kind: str,
        base: Base,
    ) -> dict[str, Any]:
        """Plan `refs` (video row, where the video is): open each, list its frames and items,
        give it rows from `base`'s capacity on, and record its source's fingerprint."""
        from tqdm import tqdm

        options = self.options
        tree = self.discovery().tree
        # Fingerprints before the videos are opened: a change while planning shows later.
        fingerprints = {index: fingerprint(tree, ref) for index, ref in refs}
        units: list[UnitPlan] = []
        with tqdm(
            total=len(refs), desc="planning", unit="video", disable=not options.progress
        ) as bar:
            batches = [refs[i : i + PLAN_BATCH] for i in range(0, len(refs), PLAN_BATCH)]
            if refs and options.dask is None:
                self.pool().warm_up()  # workers start (their imports) while we plan
            inline = options.workers <= 1 and options.dask is None
            if inline or len(refs) <= PLAN_INLINE:
                for index, ref in refs:
                    units.append(plan_unit(index, ref, self.storage_options))
                    bar.update(1)
            elif options.dask is not None:  # parsing 50 k annotation files is cluster work too
                cluster = self.cluster()
                for planned in cluster.map_in_order(plan_units, batches, self.storage_options):
                    units.extend(planned)
                    bar.update(len(planned))
            else:
                pool = self.pool()
                futures = [pool.submit(plan_units, b, self.storage_options) for b in batches]
                for future in futures:
                    planned = self._result(future)
                    units.extend(planned)
                    bar.update(len(planned))
        units.sort(key=lambda unit: unit.index)
        for unit in units:
            unit.fingerprint = fingerprints[unit.index]
        frame_rows, item_rows = assign_rows(
            units,
            options.frames_per_shard,
            options.items_per_shard,
            base.frame_rows,
            base.item_rows,
        )
        return {
            "kind": kind,
            "settings": settings,
            "base": dataclasses.asdict(base),
            "frame_rows": frame_rows,
            "item_rows": item_rows,
            "units": [u.to_json() for u in units],
        }

    def _result(self, future: Future[Any]) -> Any:
        try:
            return future.result()
        except BrokenProcessPool:
            raise StoreError(
                f"{self.store.path}: a worker process died (killed, or out of memory?); "
                "run the same command again to resume"
            ) from None

    def _bake(self, params: dict[str, Any], todo: list[UnitPlan]) -> None:
        """Bake every unit in worker processes (one worker included: a crash in a decoder then
        kills a worker, not the build) and commit each unit's record as it comes back."""
        from tqdm import tqdm

        # Longest videos first: the last units to finish are then short ones, so no worker
        # idles long at the end. The order changes nothing stored (rows are planned).
        queue = deque(sorted(todo, key=lambda unit: (-len(unit.frame_indices), unit.index)))
        bar = tqdm(
            total=sum(len(unit.frame_indices) for unit in todo),
            desc="baking",
            unit="frame",
            disable=not self.options.progress,
            smoothing=0.05,
        )
        failed = 0
        records = _RecordWriter(self.store)
        frames_of = {unit.index: len(unit.frame_indices) for unit in todo}

        def commit_record(record: dict[str, Any]) -> None:
            nonlocal failed
            self.lock.check()  # a remote lock taken over by another build: commit nothing more
            records.write(record)
            self.committed += 1
            failed += record["status"] != "ok"
            if record["status"] == "ok":
                self.frames_baked += frames_of[record["index"]]
            bar.set_postfix_str(f"videos {self.committed}/{self.planned}, failed {failed}")

        try:
            if self.options.dask is not None:
                self._bake_on_dask(params, queue, bar, commit_record)
            while queue:
                suspects = self._bake_in_pool(params, queue, bar, commit_record)
                if suspects:
                    _say(
                        self.options,
                        f"note: a worker process died; retrying its {len(suspects)} videos "
                        "one at a time",
                    )
                for unit in suspects:
                    commit_record(self._bake_alone(params, unit, bar))
            records.close()
        finally:
            bar.close()
            records.close(check=False)  # stopped by an error or Ctrl-C: let that one through

    def _bake_in_pool(
        self,
        params: dict[str, Any],
        queue: deque[UnitPlan],
        bar: Any,
        commit_record: Callable[[dict[str, Any]], None],
    ) -> list[UnitPlan]:
        """Bake units from `queue` until it is empty or a worker dies; then return the units
        that were in flight (one of them may have killed it)."""
        pool = self.pool()
        pending: dict[Future[dict[str, Any]], UnitPlan] = {}
        in_flight_when_broken: list[UnitPlan] = []
        while queue or pending:
            while queue and len(pending) < 2 * self.options.workers:
                unit = queue.popleft()
                pending[pool.submit(bake_unit, *self._job(unit, params))] = unit
            finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            pool.drain(bar)
            for future in finished:
                unit = pending.pop(future)
                try:
                    record = future.result()
                except BrokenProcessPool:
                    in_flight_when_broken.append(unit)
                    continue
                commit_record(record)
            if in_flight_when_broken:
                self._discard_pool()
                return in_flight_when_broken + list(pending.values())
        pool.drain(bar)
        return []

    def _bake_on_dask(
        self,
        params: dict[str, Any],
        queue: deque[UnitPlan],
        bar: Any,
        commit_record: Callable[[dict[str, Any]], None],
    ) -> None:
        """Bake every unit of `queue` as a Dask task. Dask reruns a unit whose worker died on
        another worker; a unit whose workers keep dying, even when it runs alone, is recorded
        as failed, as a local build does (see `DaskCluster.bake`)."""

        def done(unit: UnitPlan, record: dict[str, Any] | None) -> None:
            commit_record(self._worker_died(unit, params) if record is None else record)
            bar.update(len(unit.frame_indices))  # one bar for the cluster: frames of done units

        self.cluster().bake(queue, lambda unit: self._job(unit, params), done)

    def _bake_alone(self, params: dict[str, Any], unit: UnitPlan, bar: Any) -> dict[str, Any]:
        """Bake one unit in a worker of its own: if that worker dies too, the video killed it
        and is recorded as failed; otherwise its record is the normal one."""
        pool = _WorkerPool(1)
        try:
            future = pool.submit(bake_unit, *self._job(unit, params))
            while not wait([future], timeout=0.2).done:
                pool.drain(bar)
            pool.drain(bar)
            return future.result()
        except BrokenProcessPool:
            return self._worker_died(unit, params)
        finally:
            pool.close(kill=True)

    def _job(self, unit: UnitPlan, params: dict[str, Any]) -> tuple[Any, ...]:
        """bake_unit's arguments for `unit`."""
        return (str(self.store.path), unit.to_json(), params, self.storage_options)

    def _worker_died(self, unit: UnitPlan, params: dict[str, Any]) -> dict[str, Any]:
        """The record of a video whose worker died each time it was baked."""
        remove_unit_shards(self.store, unit, params)
        reason = (
            f"{unit.frames}: the worker process baking this video died "
            "(a crash in a decoder, or killed, e.g. out of memory)"
        )
        return {"index": unit.index, "status": "failed", "reason": reason}

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.close(kill=True)
            self._pool = None


def _check_settings(
    path: Path | RemotePath, stored: dict[str, Any], wanted: dict[str, Any]
) -> None:
    """Refuse to resume or reuse a store made with other settings, naming what differs."""
    differences = _differences(stored, wanted)
    if differences:
        shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        raise StoreError(
            f"{path}: store was built with other settings ({shown}); "
            "use --overwrite to start over, or rerun with the store's settings"
        )


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    stored_flat, wanted_flat = _flatten(stored), _flatten(wanted)
    return [
        f"{_setting_label(key)}: store {stored_flat.get(key)!r}, this command {wanted_flat.get(key)!r}"
        for key in sorted(set(stored_flat) | set(wanted_flat))
        if stored_flat.get(key) != wanted_flat.get(key)
    ]


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _setting_label(key: str) -> str:
    """`params.masklets` -> `masklets` (as the option is named), `source.root` -> `source root`."""
    group, _, name = key.partition(".")
    return {"params": name, "source": f"source {name}"}.get(group, key)


def _initial_attrs(
    settings: dict[str, Any], plan: dict[str, Any], started: float, workers: int
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
        "build": {"started": _iso(started), "workers": workers},
        "appends": [],
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _committed_records(store: StoreDir, units: list[UnitPlan]) -> list[dict[str, Any]]:
    """Every unit's record, in unit order, prompt cells decoded."""
    records = []
    stored = store.read_records(unit.index for unit in units)
    for unit in units:
        record = stored.pop(unit.index)
        assert record is not None, "every unit has a record before commit"
        if record["status"] == "ok":
            record["prompt_cells"] = decode_ints(record["prompt_cells"], PROMPT_CELLS_DTYPE)
        records.append(record)
    return records


def _commit(
    store: StoreDir, attrs: dict[str, Any], units: list[UnitPlan], started: float, workers: int
) -> dict[str, Any]:
    """Commit a fresh build: tables, then the attributes that mark the store complete."""
    records = _committed_records(store, units)
    store.write_tables(make_tables(units, records, attrs["frame_rows"], attrs["source"]["root"]))
    baked = [unit for unit, record in zip(units, records, strict=True) if record["status"] == "ok"]
    failures = [
        {"video_id": unit.video_id, "path": unit.frames, "reason": record["reason"]}
        for unit, record in zip(units, records, strict=True)
        if record["status"] != "ok"
    ]
    finished = time.time()
    attrs = dict(attrs)
    attrs["state"] = "complete"
    attrs["counts"] = {
        "videos": len(units),
        "videos_failed": len(failures),
        "frames": sum(len(unit.frame_indices) for unit in baked),
        "items": sum(len(unit.items) for unit in baked),
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
    return attrs


def _report_from_attrs(
    path: Path | RemotePath,
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


def store_bytes(path: Path | RemotePath) -> int:
    """Bytes on disk of the store's files (the build folder excluded)."""
    return tree_bytes(path, BUILD_DIR)[0]
