"""The row tables (`frames/*`, `items/*`, `videos/*`) from the plan's units and their records.

A fresh build writes them whole. An append (`Base`: what the store held before) keeps every
existing row where it is and adds the new units' rows after them: frame rows from the old
capacity on, items after the old items, videos after the old videos, and a retried video (a
unit whose index is an existing video row) replaces its own row. Old items therefore keep their
positions; the new ones follow in unit order, so the item order of a store that grew differs
from a fresh build of the same source (the values, item by item, do not).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from prebake.errors import StoreError
from prebake.sources import MASKLET_TYPES
from prebake.storage import relative_location
from prebake.store.plan import UnitPlan
from prebake.store.schema import array_specs, table_columns


@dataclass(frozen=True)
class Base:
    """What a store held before an append (all zero for a fresh build)."""

    videos: int = 0
    frame_rows: int = 0
    item_rows: int = 0
    items: int = 0

    @classmethod
    def of(cls, attrs: dict[str, Any]) -> Base:
        return cls(
            videos=int(attrs["counts"]["videos"]),
            frame_rows=int(attrs["frame_rows"]),
            item_rows=int(attrs["item_rows"]),
            items=int(attrs["counts"]["items"]),
        )


def make_tables(
    units: list[UnitPlan],
    records: list[dict[str, Any]],
    frame_rows: int,
    source_root: str,
    base: Base | None = None,
    old: Callable[[str], np.ndarray] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """The row tables, one at a time (the item columns of all SA-V are gigabytes together).

    `units` are in index order, a unit's index being its row in the videos table; `records`
    are their records, prompt cells decoded. With `base` and `old` (a table's current values by
    name), the store's rows are kept and the units' added (see the module docstring).
    """
    base = base or Base()
    specs = array_specs()
    baked = [
        (unit, record)
        for unit, record in zip(units, records, strict=True)
        if record["status"] == "ok"
    ]
    for key in ("video", "frame_index"):
        column = np.full(frame_rows - base.frame_rows, -1, dtype=np.int32)
        for unit, _ in baked:
            first = unit.frame_row - base.frame_rows
            rows = slice(first, first + len(unit.frame_indices))
            column[rows] = unit.index if key == "video" else unit.frame_indices
        yield f"frames/{key}", _after(old, f"frames/{key}", base.frame_rows, column)
    for key in table_columns("items"):
        dtype = specs[f"items/{key}"].numpy_dtype
        parts = [_item_column(key, *entry).astype(dtype, copy=False) for entry in baked]
        column = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        yield f"items/{key}", _after(old, f"items/{key}", base.items, column)
    ok = {unit.index for unit, _ in baked}
    added = [unit for unit in units if unit.index >= base.videos]
    if [unit.index for unit in added] != list(range(base.videos, base.videos + len(added))):
        raise StoreError("new videos must take the rows after the store's videos, in order")
    for key in table_columns("videos"):
        name = f"videos/{key}"
        values = [_video_value(key, unit, unit.index in ok, source_root) for unit in units]
        dtype = specs[name].values_dtype
        if old is None:
            yield name, np.array(values, dtype=dtype)
            continue
        kept = _checked(old(name), name, base.videos).tolist()
        for unit, value in zip(units, values, strict=True):
            if unit.index < base.videos:  # a retried video takes its own row back
                kept[unit.index] = value
        yield name, np.array(kept + values[len(units) - len(added) :], dtype=dtype)


def _after(
    old: Callable[[str], np.ndarray] | None, name: str, rows: int, new: np.ndarray
) -> np.ndarray:
    """The store's `rows` rows of `name`, then `new`."""
    if old is None:
        return new
    return np.concatenate([_checked(old(name), name, rows).astype(new.dtype), new])


def _checked(values: np.ndarray, name: str, rows: int) -> np.ndarray:
    if len(values) != rows:
        raise StoreError(f"table {name} has {len(values)} rows, the store's attributes say {rows}")
    return values


def _item_column(key: str, unit: UnitPlan, record: dict[str, Any]) -> np.ndarray:
    """One item column of one baked unit (int64 wherever a row number may pass 2**31)."""
    t, k, area = unit.items.T
    if key == "frame_row":
        return t.astype(np.int64) + unit.frame_row
    if key == "mask_row":
        return np.arange(len(t), dtype=np.int64) + unit.item_row
    if key == "video":
        return np.full(len(t), unit.index, dtype=np.int64)
    if key == "frame_index":
        return unit.frame_indices[t]
    if key == "masklet_id":
        return np.array([masklet_id for _, masklet_id in unit.masklets], dtype=np.int64)[k]
    if key == "masklet_type":
        return np.array([MASKLET_TYPES.index(kind) for kind, _ in unit.masklets], np.int64)[k]
    if key == "area":
        return area
    cells: np.ndarray = record["prompt_cells"]
    if len(cells) != len(t):
        raise StoreError(f"record of unit {unit.index} has {len(cells)} items, plan {len(t)}")
    return cells


def _video_value(key: str, unit: UnitPlan, ok: bool, source_root: str) -> Any:
    if key == "source":
        return relative_location(unit.frames, source_root)
    if key == "status":
        return "ok" if ok else "failed"
    if key == "frames":
        return len(unit.frame_indices) if ok else 0
    if key == "items":
        return len(unit.items) if ok else 0
    if key in ("frame_row", "item_row"):
        return getattr(unit, key) if ok else -1
    if key == "fingerprint":
        return json.dumps(unit.fingerprint, sort_keys=True, separators=(",", ":"))
    return getattr(unit, key)
