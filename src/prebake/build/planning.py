"""Planning: open each selected video, list its frames and items, give it its rows.

A plan is what the builder writes to the build folder before baking: the settings, the store's
rows before it (`Base`: none for a fresh build, the store's capacity for an append), the row
counts after it, and every unit (video) with its rows and its source's fingerprint. Baking and
committing follow the plan, so a resumed build bakes exactly what the first run planned.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prebake.build.executor import Executor
from prebake.build.options import BuildOptions
from prebake.build.unit import plan_unit, plan_units
from prebake.sources import SourceTree, fingerprint
from prebake.sources.base import VideoRef
from prebake.store.plan import UnitPlan, assign_rows
from prebake.store.tables import Base

PLAN_BATCH = 16  # videos per planning task: parsing one JSON is quick, a task round trip is not
PLAN_INLINE = 64  # up to this many videos are planned here, while the workers start


def make_plan(
    options: BuildOptions,
    settings: dict[str, Any],
    refs: list[tuple[int, VideoRef]],
    kind: str,
    base: Base,
    tree: SourceTree,
    executor: Executor,
) -> dict[str, Any]:
    """Plan `refs` (video row, where the video is) of a `kind` "build" or "append": open each
    (here, or in `executor`'s workers when there are many), give it rows from `base`'s capacity
    on, and record its source's fingerprint (from `tree`, the walk of the source)."""
    from prebake.progress import progress_bar

    # Fingerprints before the videos are opened: a change while planning shows later.
    fingerprints = {index: fingerprint(tree, ref) for index, ref in refs}
    units: list[UnitPlan] = []
    with progress_bar(
        total=len(refs), desc="planning", unit="video", disable=not options.progress
    ) as bar:
        if refs:
            executor.warm_up()  # workers start (their imports) while we plan
        inline = options.workers <= 1 and options.dask is None
        if inline or len(refs) <= PLAN_INLINE:
            for index, ref in refs:
                units.append(plan_unit(index, ref, options.storage_options))
                bar.update(1)
        else:  # parsing 50 k annotation files is the workers' (or the cluster's) work too
            batches = [refs[i : i + PLAN_BATCH] for i in range(0, len(refs), PLAN_BATCH)]
            for planned in executor.map_in_order(plan_units, batches, options.storage_options):
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
