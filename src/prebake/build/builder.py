"""`build`: one run on a locked store: finish what an earlier run left, build afresh, or grow a
complete store with what its source holds and it lacks."""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from prebake import transforms
from prebake.build.baking import RunState, bake_units
from prebake.build.commit import (
    commit_build,
    committed_records,
    initial_attrs,
    report_from_attrs,
    resized_by,
    run_times,
)
from prebake.build.executor import Executor
from prebake.build.options import (
    BuildInterrupted,
    BuildOptions,
    BuildReport,
    check_fields,
    check_settings,
    selection_of,
    settings_of,
)
from prebake.build.planning import make_plan
from prebake.build.pool import LocalPool
from prebake.build.resizing import check_device, check_options
from prebake.errors import PrebakeError, StoreError, counted
from prebake.sources import NOT_FOUND_HINT, Discovery, find_videos, select
from prebake.sources.base import VideoRef
from prebake.storage import RemotePath, as_path, is_url, missing
from prebake.store.growth import StoredVideos, commit_append, pending_append, plan_growth
from prebake.store.layout import StoreDir
from prebake.store.lock import RemoteStoreLock, StoreLock
from prebake.store.plan import UnitPlan
from prebake.store.schema import SCHEMA_VERSION, store_version
from prebake.store.tables import Base


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
    check_fields(options.fields)
    check_options(options.resizing)
    if options.resize == "torch" and options.dask is None:
        check_device(options.device)  # this machine's workers: refused before anything is written
    if options.dask is not None:
        options = _absolute(options)
    out = as_path(options.out, options.storage_options)
    store = StoreDir(out)
    # exists() first: it raises when the object store cannot be reached; bucket_exists() says no
    if isinstance(out, RemotePath) and not out.exists() and not out.bucket_exists():
        raise StoreError(f"{out}: {missing(out, 'store')}")
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
        builder = Builder(options, store, lock)
        try:
            return builder.run()
        except KeyboardInterrupt:
            raise BuildInterrupted(builder.state.interrupted_message()) from None
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


def _check_version(path: Path | RemotePath, version: int, writes: int) -> None:
    """Refuse to resume or add to a store of another schema version (one line, exit 2)."""
    if version == writes == SCHEMA_VERSION:
        return
    made = "an older" if version < SCHEMA_VERSION else "another"
    raise StoreError(
        f"{path}: store has schema v{version} (made by {made} prebake), which this prebake reads "
        f"but does not resume or add to; build a new store (--overwrite, or another --out)"
    )


def _say(options: BuildOptions, message: str) -> None:
    if options.progress:
        from prebake.progress import say

        say(message)


class Builder:
    """One run of `build` on a locked store: plan (or read the plan), bake, commit."""

    def __init__(
        self, options: BuildOptions, store: StoreDir, lock: StoreLock | RemoteStoreLock
    ) -> None:
        self.options = options
        self.store = store
        self.lock = lock
        self.src = as_path(options.src, options.storage_options)
        self.state = RunState(store.path, overwrite=options.overwrite)
        self.started = time.time()
        self.report = BuildReport(self.store.path, 0, 0, 0, 0, 0, 0.0)  # what this run did
        self.baked_ids: set[str] = set()  # videos baked (or failed) in this run
        self._found: Discovery | None = None
        self._executor: Executor | None = None
        self._finished = False

    def executor(self, videos: int | None = None) -> Executor:
        """Worker processes here, or the Dask cluster (`--dask`, connected or started now).
        Local workers are no more than the `videos` to plan and bake: one more would only
        start (seconds of imports each) and wait."""
        if self._executor is None:
            if self.options.dask is not None:
                from prebake.build.dask import DaskCluster

                self._executor = DaskCluster(self.options.dask)
            else:
                workers = self.options.workers
                if videos is not None and 0 < videos < workers:
                    _say(
                        self.options,
                        f"note: {counted(videos, 'video')} to bake: "
                        f"{counted(videos, 'worker')}, not {workers}",
                    )
                    workers = videos
                note = functools.partial(_say, self.options)
                self._executor = LocalPool(workers, self.store.path, note)
        return self._executor

    @property
    def workers(self) -> int:
        """Worker processes (threads, on Dask) baking, as the store's attributes record."""
        if self._executor is not None:
            return self._executor.threads()
        return self.options.workers

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close(kill=not self._finished)
            self._executor = None

    def run(self) -> BuildReport:
        """Finish what an earlier run left (a build or an append), or build afresh; then add
        what the source holds and the store lacks (`prebake.store.growth`)."""
        options, store = self.options, self.store
        if options.resize == "torch" and options.dask is not None:
            self._check_cluster_device()
        settings = settings_of(options)
        attrs = None if options.overwrite else store.attrs()
        if attrs is not None:
            _check_version(store.path, store_version(attrs), options.schema_version)
            check_settings(store.path, attrs.get("settings") or {}, settings)
        append = pending_append(store, attrs)
        if attrs is not None and append is not None:
            attrs = self._append(settings, attrs, append)
        elif attrs is None or attrs["state"] != "complete":
            attrs = self._build(settings, attrs)
        attrs = self._grow(settings, attrs)
        self._finished = True
        return self._report(attrs)

    def _check_cluster_device(self) -> None:
        """--dask: every worker of the cluster must reach the device, checked on each of them
        before anything is baked."""
        from prebake.build.dask import DaskCluster

        cluster = self.executor()
        assert isinstance(cluster, DaskCluster)
        cluster.check_workers(check_device, self.options.device)

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
                self.executor()  # an unreachable scheduler stops the build before it writes
            self.state.phase = "planning"
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
            version = options.schema_version
            attrs = initial_attrs(settings, plan, self.started, self.workers, version)
            attrs["build"].update(selection_of(options))
            store.create(attrs, settings["params"], version)
        else:
            store.prepare_build_dir()
        units, resumed = self._bake_plan(settings, plan)
        self.state.phase = "committing"
        self.lock.check()
        attrs = commit_build(store, attrs, units, self.started, self.workers)
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
            self.executor()
        self.state.phase = "planning"
        self.state.appending = True
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
        self.state.appending = True
        self.store.prepare_build_dir()
        units, resumed = self._bake_plan(settings, plan)
        self.report.resumed += resumed
        self.state.phase = "committing"
        self.lock.check()
        records = committed_records(self.store, units)
        run = run_times(self.started, self.workers)
        run["resize"] = resized_by(records)
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

    def _make_plan(
        self, settings: dict[str, Any], refs: list[tuple[int, VideoRef]], kind: str, base: Base
    ) -> dict[str, Any]:
        tree = self.discovery().tree
        executor = self.executor(videos=len(refs))
        return make_plan(self.options, settings, refs, kind, base, tree, executor)

    def _bake_plan(
        self, settings: dict[str, Any], plan: dict[str, Any]
    ) -> tuple[list[UnitPlan], int]:
        """Bake every unit of `plan` without a record; return its units and how many had one."""
        options, store = self.options, self.store
        self.state.phase = "baking"
        units = [UnitPlan.from_json(unit) for unit in plan.pop("units")]  # kept compact only
        records = store.read_records(unit.index for unit in units)
        for unit in units:  # videos that could not even be opened are committed as failures now
            if unit.status == "failed" and records[unit.index] is None:
                store.write_record({"index": unit.index, "status": "failed", "reason": unit.reason})
                records[unit.index] = {"status": "failed"}
                _say(options, f"failed: {unit.video_id}: {unit.reason}")
        todo = [unit for unit in units if records[unit.index] is None]
        del records
        self.state.planned = len(units)
        self.state.committed = len(units) - len(todo)
        resumed = sum(unit.status == "planned" for unit in units) - len(todo)
        if resumed:
            _say(self.options, f"resuming: {resumed} videos already baked, {len(todo)} to go")
        bake_units(
            todo,
            settings["params"],
            store=store,
            lock=self.lock,
            executor=self.executor(videos=len(todo)),
            state=self.state,
            progress=self.options.progress,
            storage_options=self.options.storage_options,
            schema_version=self.options.schema_version,
            resizing=self.options.resizing,
        )
        self.baked_ids.update(unit.video_id for unit in units)
        return units, resumed

    def _report(self, attrs: dict[str, Any]) -> BuildReport:
        report = report_from_attrs(
            self.store.path,
            attrs,
            already_complete=not (self.report.built or self.report.added or self.report.retried),
            resumed=self.report.resumed,
            seconds=time.time() - self.started,
        )
        found = self.discovery()
        report.built, report.added = self.report.built, self.report.added
        report.retried, report.retried_ok = self.report.retried, self.report.retried_ok
        report.frames_baked = self.state.frames_baked
        report.videos_baked = self.state.videos_baked
        report.source_problems = list(found.problems)
        report.source_notes = list(found.notes)
        report.source_changes = self.report.source_changes
        return report
