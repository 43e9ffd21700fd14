"""A complete store that grows with its source: what to add, what changed, and the commit.

`plan_growth` compares the store's videos (their fingerprints, `videos/fingerprint`) with a
fresh walk of the source: videos the store lacks (within `--videos` / `--limit`) are to be
added, failed ones retried (`--retry-failed`), and a baked video whose source files changed or
vanished is named, one line each, and left as baked: a store never mixes two versions of a
video without a word.

An append bakes its units into rows after the store's capacity, so only new shard files are
written, while readers keep reading the old rows (the store stays "complete", its tables and
array shapes unchanged). `commit_append` then:

1. stages the new tables in the build folder (old rows, then the new: `prebake.store.tables`)
   and marks them staged; a crash before the mark is redone from the unchanged store;
2. marks the store "building" (readers refuse it for the few seconds of the next steps);
3. grows the data arrays' shapes (their zarr.json only) and writes the staged tables;
4. writes the new root attributes ("complete", counts, failures, the append in `appends`).

A crash anywhere in 2-4 leaves the staged tables and the plan: the next run finishes 2-4 from
them. The plan's `id` in `appends` says an append was committed (a crash after 4 leaves only a
build folder to remove).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from prebake.errors import StoreError
from prebake.sources import Discovery, VideoRef, fingerprint
from prebake.store.layout import StoreDir
from prebake.store.plan import Outcome, UnitPlan
from prebake.store.schema import fields_of
from prebake.store.tables import Base, make_tables


@dataclass
class StoredVideos:
    """The store's videos table: what each row holds and how its source looked."""

    ids: list[str]
    status: list[str]
    source: list[str]
    fingerprints: list[dict[str, Any]]

    @classmethod
    def read(cls, store: StoreDir) -> StoredVideos:
        try:
            fingerprints = [
                json.loads(str(text)) for text in store.read_table("videos/fingerprint")
            ]
        except (FileNotFoundError, KeyError, ValueError):
            raise StoreError(
                f"{store.path}: store records no source fingerprints (made by an older prebake), "
                "so it cannot grow; rebuild it with --overwrite"
            ) from None
        return cls(
            ids=[str(v) for v in store.read_table("videos/video_id")],
            status=[str(v) for v in store.read_table("videos/status")],
            source=[str(v) for v in store.read_table("videos/source")],
            fingerprints=fingerprints,
        )


@dataclass
class Growth:
    """What a build adds to a complete store."""

    videos: int  # videos the store holds
    new: list[VideoRef]  # not in the store: rows after its videos, in id order
    retried: list[tuple[int, VideoRef]]  # failed before: (their video row, where they are now)
    changes: list[str] = field(default_factory=list)  # one line per changed or vanished video

    @property
    def units(self) -> list[tuple[int, VideoRef]]:
        """(video row, ref) of every unit to bake, rows ascending."""
        return [*self.retried, *((self.videos + i, ref) for i, ref in enumerate(self.new))]


def plan_growth(
    stored: StoredVideos,
    found: Discovery,
    selected: list[VideoRef],
    retry_failed: bool,
) -> Growth:
    """Compare the store with the source; `selected` is what `--videos` / `--limit` pick."""
    row_of = {video_id: row for row, video_id in enumerate(stored.ids)}
    by_id = {ref.video_id: ref for ref in found.refs}
    changes = []
    for row, video_id in enumerate(stored.ids):
        ref = by_id.get(video_id)
        if stored.status[row] != "ok":
            if retry_failed and ref is None:
                changes.append(
                    f"{video_id}: recorded as failed and no longer under the source "
                    f"(was {stored.source[row]}); not retried"
                )
            continue
        if ref is None:
            changes.append(
                f"{video_id}: its source is gone since it was baked (was {stored.source[row]}); "
                "its items stay in the store"
            )
            continue
        changed = _changed_file(ref, stored.fingerprints[row], fingerprint(found.tree, ref))
        if changed:
            changes.append(
                f"{video_id}: {changed} changed since the video was baked; it stays as baked "
                "(--overwrite bakes the store again)"
            )
    new = [ref for ref in selected if ref.video_id not in row_of]
    retried = sorted(
        (row_of[ref.video_id], ref)
        for ref in selected
        if retry_failed and ref.video_id in row_of and stored.status[row_of[ref.video_id]] != "ok"
    )
    return Growth(len(stored.ids), new, retried, changes)


def _changed_file(ref: VideoRef, stored: dict[str, Any], current: dict[str, Any]) -> str:
    """The first file or folder whose stamp differs ('' when none does)."""
    for role in sorted(set(stored) | set(current)):
        if stored.get(role) != current.get(role):
            return _role_path(ref, role)
    return ""


def _role_path(ref: VideoRef, role: str) -> str:
    if role in ("video", "frames"):
        return ref.frames
    if role.startswith("masks"):
        return ref.annotations[0] + role.removeprefix("masks")
    for path in ref.annotations:
        if path.endswith(f"_{role}.json"):
            return path
    return f"its {role} annotation file"


def commit_append(
    store: StoreDir,
    attrs: dict[str, Any],
    plan: dict[str, Any],
    units: list[UnitPlan],
    records: list[dict[str, Any]],
    finished: dict[str, Any],
) -> dict[str, Any]:
    """Commit an append (steps in the module docstring); return the new root attributes.

    `records` are the units' records (prompt cells decoded); `finished` describes this run
    (time, seconds, workers) for the `appends` history.
    """
    base = Base(**plan["base"])
    if store.staged_tables() is None:
        tables = make_tables(
            units,
            records,
            plan["frame_rows"],
            attrs["source"]["root"],
            base=base,
            old=store.read_table,
        )
        store.stage_tables(tables)
    store.set_attrs({**attrs, "state": "building", "append": plan["id"]})
    store.grow_arrays(
        {"frame_rows": plan["frame_rows"], "item_rows": plan["item_rows"]},
        fields_of(attrs["params"]),
    )
    staged = store.staged_tables()
    assert staged is not None
    store.write_tables(staged)
    new = _grown_attrs(attrs, plan, units, Outcome.of(units, records), finished)
    store.set_attrs(new)
    return new


def _grown_attrs(
    attrs: dict[str, Any],
    plan: dict[str, Any],
    units: list[UnitPlan],
    outcome: Outcome,
    finished: dict[str, Any],
) -> dict[str, Any]:
    """The root attributes after the append of `units` (their `outcome`): counts, failures (a
    retried video's old failure replaced), the append in `appends`."""
    retried = {unit.video_id for unit in units if unit.index < plan["base"]["videos"]}
    failures = [f for f in attrs["failures"] if f["video_id"] not in retried]
    failures += outcome.failures
    counts = attrs["counts"]
    added = len(units) - len(retried)
    new = {key: value for key, value in attrs.items() if key != "append"}
    new.update(
        state="complete",
        frame_rows=plan["frame_rows"],
        item_rows=plan["item_rows"],
        counts={
            "videos": counts["videos"] + added,
            "videos_failed": len(failures),
            "frames": counts["frames"] + outcome.frames,
            "items": counts["items"] + outcome.items,
        },
        failures=failures,
        source={**attrs["source"], "videos": counts["videos"] + added},
        appends=[
            *attrs.get("appends", []),
            {
                "id": plan["id"],
                **plan["selection"],
                "videos_added": added,
                "videos_retried": len(retried),
                "videos_baked": len(outcome.baked),
                **finished,
            },
        ],
    )
    return new


def pending_append(store: StoreDir, attrs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The plan of an append begun on this store and not committed yet, if any."""
    if attrs is None:
        return None
    plan = store.read_plan()
    if plan is None or plan.get("kind") != "append":
        if attrs.get("append"):  # committing an append, and its plan is gone: never guess
            raise StoreError(
                f"{store.path}: an append was being committed and its plan "
                f"({store.plan_path}) is missing; rebuild with --overwrite"
            )
        return None
    appends = attrs.get("appends")
    entries = appends if isinstance(appends, list) else []  # damaged: verify names it
    committed = {entry.get("id") for entry in entries if isinstance(entry, dict)}
    return None if plan["id"] in committed else plan
