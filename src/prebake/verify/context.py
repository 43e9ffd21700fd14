"""What every check of `prebake verify` works on: the store, what earlier checks established
(the build params, the row tables, the rows found damaged), the report, and how to name a row."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from prebake.storage import RemotePath
from prebake.store.layout import StoreDir
from prebake.store.rows import RowReader
from prebake.store.schema import CODES, DATA_ARRAYS, SCHEMA_VERSION, array_specs, fields_of
from prebake.verify.report import VerifyReport


class VerifyContext:
    """Shared by the checks, which run in order (`prebake.verify.checks.CHECKS`): `params` is
    set by the attributes check, `tables` by the tables check, `damaged` by the shards check;
    a check files each problem it finds with `problem`, under its own name (`check`)."""

    def __init__(
        self,
        store: StoreDir,
        attrs: dict[str, Any],
        report: VerifyReport,
        *,
        src: Path | RemotePath | None,
        samples: int | None,
        progress: bool,
    ) -> None:
        self.store = store
        self.attrs = attrs
        self.report = report
        self.src = src  # re-derive items from this source (None: not asked)
        self.samples = samples  # items re-derived from the source (None: every row checked)
        self.progress = progress
        self.check = ""  # the check running now
        self.params: dict[str, Any] = {}
        self.tables: dict[str, np.ndarray] = {}
        self.damaged: dict[str, set[int]] = {name: set() for name in DATA_ARRAYS}
        self.version = SCHEMA_VERSION  # the store's, set by the attributes check
        self.specs = array_specs()
        self.fields: tuple[str, ...] = DATA_ARRAYS  # the store's, set by the attributes check

    def set_store(self, version: int, params: dict[str, Any]) -> None:
        """What the attributes check established: the schema version and the build params."""
        self.version = version
        self.specs = array_specs(version)
        self.params = params
        self.fields = fields_of(params)

    def problem(self, message: str) -> None:
        """File a problem (one line naming the array, row or file) under the running check."""
        self.report.problem(self.check, message)

    def problems(self) -> int:
        """Problems found so far (by every check)."""
        return len(self.report.found)

    @cached_property
    def video_ids(self) -> list[str]:
        return [str(value) for value in self.tables["videos/video_id"]]

    @cached_property
    def readers(self) -> dict[str, RowReader]:
        """A row reader per data array the store holds (read rows are decoded and their
        crc32c checked)."""
        return {
            name: RowReader(self.store, self.specs[name], self.rows_per_shard(name))
            for name in self.fields
        }

    def rows_per_shard(self, name: str) -> int:
        key = self.specs[name].rows_per_shard
        assert key is not None
        return int(self.params[key])

    def capacity(self, name: str) -> int:
        return int(self.attrs[self.specs[name].rows])

    def frame_label(self, row: int) -> str:
        video = (
            int(self.tables["frames/video"][row])
            if 0 <= row < len(self.tables["frames/video"])
            else -1
        )
        if video < 0:
            return f"row {row}"
        return f"row {row} ({self.video_ids[video]} frame {int(self.tables['frames/frame_index'][row])})"

    def item_label(self, item: int) -> str:
        t = self.tables
        kind = CODES["masklet_types"][int(t["items/masklet_type"][item])]
        return (
            f"row {int(t['items/mask_row'][item])} (item {item}: {self.video_ids[int(t['items/video'][item])]} "
            f"frame {int(t['items/frame_index'][item])} masklet {kind} {int(t['items/masklet_id'][item])})"
        )


def sample(rows: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """`rows`, or a fixed random sample of `limit` of them (sorted); None: all of them."""
    if limit is None or len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
