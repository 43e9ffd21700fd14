"""A build's commits: each unit's record as it comes back, then (when every unit has one) the
row tables and the attributes that mark the store complete.

Commit order makes a crash harmless: a unit's shards are written (atomically, one file at a
time), then its record; only when every unit has a record are the tables written and the store
marked complete. An append commits through `prebake.store.growth.commit_append`.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prebake.build.options import BuildReport
from prebake.build.unit import PROMPT_CELLS_DTYPE
from prebake.sources import MASKLET_TYPES
from prebake.storage import RemotePath, tree_bytes
from prebake.store.layout import BUILD_DIR, StoreDir
from prebake.store.plan import Outcome, UnitPlan, decode_ints
from prebake.store.schema import CODES, SCHEMA_NAME, SCHEMA_VERSION
from prebake.store.tables import make_tables
from prebake.versions import library_versions

RECORD_WRITERS = 16  # records PUT at once to a remote store


class RecordWriter:
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


def initial_attrs(
    settings: dict[str, Any],
    plan: dict[str, Any],
    started: float,
    workers: int,
    version: int = SCHEMA_VERSION,
) -> dict[str, Any]:
    """The root attributes of a store of schema `version` being built from `plan` (state
    "building")."""
    units = plan["units"]
    codes = {"layouts": list(CODES["layouts"]), "statuses": list(CODES["statuses"])}
    return {
        "schema": SCHEMA_NAME,
        "schema_version": version,
        "state": "building",
        "frame_rows": plan["frame_rows"],
        "item_rows": plan["item_rows"],
        "masklet_types": list(MASKLET_TYPES),
        **(codes if version >= 2 else {}),
        "params": settings["params"],
        "versions": library_versions(),
        "source": {**settings["source"], "videos": len(units)},
        "settings": settings,
        "counts": {},
        "failures": [],
        "build": {"started": iso(started), "workers": workers},
        "appends": [],
    }


def iso(seconds: float) -> str:
    """A time as the store's attributes record it (UTC, to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def run_times(started: float, workers: int) -> dict[str, Any]:
    """When a run started and finished, how long it took and with how many workers."""
    finished = time.time()
    return {
        "started": iso(started),
        "finished": iso(finished),
        "seconds": round(finished - started, 3),
        "workers": workers,
    }


def committed_records(store: StoreDir, units: list[UnitPlan]) -> list[dict[str, Any]]:
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


def resized_by(records: list[dict[str, Any]]) -> list[str]:
    """What resized the images of the videos baked (`Pillow`, `torch 2.13.0 on cpu`...): one
    entry per path the runs took (a resume or an append may take the other one)."""
    return sorted({record["resize"] for record in records if record.get("resize")})


def commit_build(
    store: StoreDir, attrs: dict[str, Any], units: list[UnitPlan], started: float, workers: int
) -> dict[str, Any]:
    """Commit a fresh build: tables, then the attributes that mark the store complete."""
    records = committed_records(store, units)
    tables = make_tables(units, records, attrs["frame_rows"], attrs["source"]["root"])
    store.write_tables(tables, attrs["schema_version"])
    outcome = Outcome.of(units, records)
    attrs = dict(attrs)
    attrs["state"] = "complete"
    attrs["counts"] = {
        "videos": len(units),
        "videos_failed": len(outcome.failures),
        "frames": outcome.frames,
        "items": outcome.items,
    }
    attrs["failures"] = outcome.failures
    times = run_times(started, workers)
    attrs["build"] = {
        **attrs["build"],
        "finished": times["finished"],
        "seconds": times["seconds"],
        "workers": workers,
        "resize": resized_by(records),
    }
    store.set_attrs(attrs)
    store.remove_build_dir()
    return attrs


def report_from_attrs(
    path: Path | RemotePath,
    attrs: dict[str, Any],
    *,
    already_complete: bool = False,
    resumed: int = 0,
    seconds: float | None = None,
) -> BuildReport:
    """A report of what a complete store holds (its attributes and size on disk)."""
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
