"""Baking a plan's units through an executor, committing each unit's record as it comes back."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prebake.build.commit import RecordWriter
from prebake.build.executor import Executor
from prebake.build.resizing import Resizing
from prebake.build.unit import worker_died
from prebake.storage import RemotePath, StorageOptions
from prebake.store.layout import StoreDir
from prebake.store.lock import RemoteStoreLock, StoreLock
from prebake.store.plan import UnitPlan


@dataclass
class RunState:
    """Where one run of a build stands: its phase, the units planned and committed (for the
    progress bar and for the message of a Ctrl-C) and the frames it baked."""

    store: Path | RemotePath
    phase: str = "starting"  # "planning", "baking", "committing"
    appending: bool = False  # baking an append: the store serves what it held before
    overwrite: bool = False  # the run started over (--overwrite): rerunning it would again
    committed: int = 0  # units with a record (earlier runs included)
    planned: int = 0
    frames_baked: int = 0  # frames this run baked
    videos_baked: int = 0  # videos this run baked (failed ones not included)

    def interrupted_message(self) -> str:
        where = self.store
        kept = "; the store still serves what it held before" if self.appending else ""
        # Rerun with --overwrite would throw away what this run committed.
        again = "without --overwrite" if self.overwrite else "again"
        if self.phase in ("starting", "planning"):
            return (
                f"{where}: interrupted while planning, nothing baked yet{kept}; "
                "run the same command again to start"
            )
        if self.phase == "baking":
            return (
                f"{where}: interrupted; {self.committed} of {self.planned} videos are committed "
                f"and kept{kept}; run the same command {again} to resume"
            )
        return f"{where}: interrupted while finishing; run the same command {again} to finish"


def bake_units(
    todo: list[UnitPlan],
    params: dict[str, Any],
    *,
    store: StoreDir,
    lock: StoreLock | RemoteStoreLock,
    executor: Executor,
    state: RunState,
    progress: bool,
    storage_options: StorageOptions | None,
    schema_version: int,
    resizing: Resizing,
) -> None:
    """Bake every unit of `todo` in `executor`'s workers (one worker included: a crash in a
    decoder then kills a worker, not the build) and commit each unit's record as it comes back.
    A video that fails is named on stderr as it fails (with `progress`; the summary lists all)."""
    from prebake.progress import progress_bar, say

    # Longest videos first: the last units to finish are then short ones, so no worker
    # idles long at the end. The order changes nothing stored (rows are planned).
    queue = deque(sorted(todo, key=lambda unit: (-len(unit.frame_indices), unit.index)))
    bar = progress_bar(
        total=sum(len(unit.frame_indices) for unit in todo),
        desc="baking",
        unit="frame",
        disable=not progress,
        smoothing=0.05,
    )
    failed = 0
    records = RecordWriter(store)

    def job(unit: UnitPlan) -> tuple[Any, ...]:
        """bake_unit's arguments for `unit`."""
        return (str(store.path), unit.to_json(), params, storage_options, schema_version, resizing)

    def done(unit: UnitPlan, record: dict[str, Any] | None) -> None:
        nonlocal failed
        if record is None:  # its worker died each time it was baked
            record = worker_died(store, unit, params)
        lock.check()  # a remote lock taken over by another build: commit nothing more
        records.write(record)
        state.committed += 1
        failed += record["status"] != "ok"
        if record["status"] == "ok":
            state.frames_baked += len(unit.frame_indices)
            state.videos_baked += 1
        elif progress:
            say(f"failed: {unit.video_id}: {record.get('reason')}")
        bar.set_postfix_str(
            f"videos {state.committed}/{state.planned}, failed {failed}", refresh=False
        )

    try:
        executor.bake(queue, job, done, bar)
        records.close()
    finally:
        bar.close()
        records.close(check=False)  # stopped by an error or Ctrl-C: let that one through
