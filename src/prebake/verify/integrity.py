"""Integrity: every shard file the tables refer to is read once, front to back, and every index
and referenced inner chunk has its crc32c checked (google_crc32c directly, at disk speed)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any

import google_crc32c
import numpy as np

from prebake.storage import list_names, relative_name
from prebake.store.growth import pending_append
from prebake.store.schema import IMAGE_ARRAYS, ArraySpec
from prebake.store.shard import CHECKSUM_BYTES, NO_CHUNK, index_nbytes, parse_index
from prebake.verify.context import VerifyContext


def check_shards(context: VerifyContext) -> bool:
    """Read every referenced shard file once; check index and chunk crc32c. Sets the rows found
    damaged (later checks skip them: their problem is filed)."""
    from prebake.progress import progress_bar

    referenced = {name: _referenced_rows(context, name) for name in context.fields}
    files = {
        name: _shards_of(rows, context.rows_per_shard(name)) for name, rows in referenced.items()
    }
    total = 0
    for name, shards in files.items():
        for shard in shards:
            with contextlib.suppress(OSError):  # a missing file is reported below
                total += context.store.shard_path(context.specs[name], shard).stat().st_size
    damaged = context.damaged
    read = chunks = shard_count = 0
    started = time.perf_counter()
    with progress_bar(
        total=total, desc="integrity", unit="B", unit_scale=True, disable=not context.progress
    ) as bar:
        for name in context.fields:
            spec, per = context.specs[name], context.rows_per_shard(name)
            for shard, rows in files[name].items():
                checker = _ShardCheck(context, spec, per, shard, rows)
                read += checker.run(damaged[name], bar)
                chunks += len(rows)
                shard_count += 1
            _check_orphans(context, spec, set(files[name]))
    seconds = time.perf_counter() - started
    context.report.integrity.update(
        shards=shard_count, chunks=chunks, bytes=read, seconds=round(seconds, 3)
    )
    return True


def _referenced_rows(context: VerifyContext, name: str) -> np.ndarray:
    if name in IMAGE_ARRAYS:
        return np.flatnonzero(context.tables["frames/video"] >= 0)
    return np.sort(context.tables["items/mask_row"])


def _shards_of(rows: np.ndarray, per: int) -> dict[int, list[int]]:
    shards: dict[int, list[int]] = defaultdict(list)
    for row in rows.tolist():
        shards[row // per].append(row)
    return dict(shards)


class _ShardCheck:
    def __init__(
        self, context: VerifyContext, spec: ArraySpec, per: int, shard: int, rows: list[int]
    ) -> None:
        self.context, self.spec, self.per, self.shard, self.rows = context, spec, per, shard, rows
        self.path = context.store.shard_path(spec, shard)
        self.where = relative_name(self.path, context.store.path)

    def _label(self, row: int) -> str:
        if self.spec.name in IMAGE_ARRAYS:
            return self.context.frame_label(row)
        return f"row {row}"

    def run(self, damaged: set[int], bar: Any) -> int:
        """Check the file; add bad rows to `damaged`; return the bytes read."""
        name, first = self.spec.name, self.shard * self.per
        span = (
            f"rows {self.rows[0]}..{self.rows[-1]}" if len(self.rows) > 1 else f"row {self.rows[0]}"
        )
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            self.context.problem(
                f"{name}: shard file {self.where} is missing ({span}, {len(self.rows)} rows the tables refer to)"
            )
            damaged.update(self.rows)
            return 0
        index_size = index_nbytes(self.per)
        with self.path.open("rb") as handle:
            if size < index_size:
                self.context.problem(
                    f"{name}: shard file {self.where} is truncated ({size} bytes, shorter than its {index_size}-byte index)"
                )
                damaged.update(self.rows)
                return 0
            handle.seek(size - index_size)
            try:
                index = parse_index(handle.read(index_size), self.per)
            except ValueError as error:
                self.context.problem(
                    f"{name}: shard file {self.where}: {error} (file truncated or damaged; {span} unreadable)"
                )
                damaged.update(self.rows)
                bar.update(index_size)
                return index_size
            read = index_size
            data_end = size - index_size
            wanted = set(self.rows)
            for position in np.flatnonzero(index[:, 0] != NO_CHUNK).tolist():
                if first + position not in wanted:
                    self.context.problem(
                        f"{name} row {first + position}: chunk present in {self.where}, but no table refers to it"
                    )
            present = [
                (int(index[row - first, 0]), row)
                for row in self.rows
                if int(index[row - first, 0]) != NO_CHUNK
            ]
            for row in sorted(set(self.rows) - {row for _, row in present}):
                self.context.problem(
                    f"{name} {self._label(row)}: chunk missing from shard file {self.where}"
                )
                damaged.add(row)
            for offset, row in sorted(present):  # file order: one sequential pass
                nbytes = int(index[row - first, 1])
                problem = self._check_chunk(handle, offset, nbytes, data_end)
                read += max(0, min(nbytes, data_end - offset))
                bar.update(max(0, min(nbytes, data_end - offset)))
                if problem:
                    self.context.problem(f"{name} {self._label(row)}: {problem} in {self.where}")
                    damaged.add(row)
            bar.update(index_size)
        return read

    def _check_chunk(self, handle: Any, offset: int, nbytes: int, data_end: int) -> str:
        if nbytes < CHECKSUM_BYTES or offset + nbytes > data_end:
            return f"chunk (offset {offset}, {nbytes} bytes) lies outside the file's {data_end} data bytes (truncated?)"
        if not self.spec.compressed and nbytes != self.spec.row_nbytes + CHECKSUM_BYTES:
            return f"chunk is {nbytes} bytes, an uncompressed row is {self.spec.row_nbytes + CHECKSUM_BYTES}"
        handle.seek(offset)
        data = handle.read(nbytes)
        if len(data) != nbytes:
            return "chunk cut short by the end of the file"
        if google_crc32c.value(data[:-CHECKSUM_BYTES]) != int.from_bytes(
            data[-CHECKSUM_BYTES:], "little"
        ):
            return "crc32c mismatch (damaged chunk)"
        return ""


def _check_orphans(context: VerifyContext, spec: ArraySpec, referenced: set[int]) -> None:
    """Shard files no table refers to (a failed video's shards are removed at build time).
    Shards past the store's rows while an append is baking are its own, not a fault."""
    folder = context.store.path / spec.name / "c"
    if not folder.is_dir():
        return
    appending = pending_append(context.store, context.attrs) is not None
    first_new = context.capacity(spec.name) // context.rows_per_shard(spec.name)
    for entry in sorted(list_names(folder)):
        if appending and entry.isdigit() and int(entry) >= first_new:
            integrity = context.report.integrity
            integrity["append_shards"] = integrity.get("append_shards", 0) + 1
            continue
        if entry.isdigit() and int(entry) not in referenced:
            path = context.store.shard_path(spec, int(entry))
            if path.exists():
                context.problem(
                    f"{spec.name}: shard file {relative_name(path, context.store.path)} holds no row the tables refer to"
                )
