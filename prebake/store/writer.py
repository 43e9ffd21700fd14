"""Writing one unit's rows: each array's rows stream into the shards the unit owns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prebake.store.layout import StoreDir
from prebake.store.schema import ArraySpec, encode_chunk
from prebake.store.shard import ShardWriter


def owned_shards(first_row: int, rows: int, rows_per_shard: int) -> range:
    """The shards holding rows first_row .. first_row + rows - 1 (first_row is shard-aligned)."""
    first = first_row // rows_per_shard
    return range(first, first + -(-rows // rows_per_shard))


class RowStream:
    """Consecutive rows of one array, from a shard boundary on, streamed shard by shard."""

    def __init__(
        self, store: StoreDir, spec: ArraySpec, first_row: int, rows_per_shard: int
    ) -> None:
        assert first_row % rows_per_shard == 0, "a unit's rows start on a shard boundary"
        self.store = store
        self.spec = spec
        self.rows_per_shard = rows_per_shard
        self.next_shard = first_row // rows_per_shard
        self.bytes_written = 0
        self._writer: ShardWriter | None = None

    def append(self, row: np.ndarray) -> None:
        if self._writer is None:
            final = self.store.shard_path(self.spec, self.next_shard)
            temporary = self.store.tmp_dir / f"{self.spec.name}.{self.next_shard}.{os.getpid()}"
            self._writer = ShardWriter(final, temporary, self.rows_per_shard)
            self.next_shard += 1
        self._writer.append(encode_chunk(self.spec, row))
        if self._writer.count == self.rows_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._writer is not None
        self.bytes_written += self._writer.close()
        self._writer = None

    def close(self) -> int:
        if self._writer is not None:
            self._finish_shard()
        return self.bytes_written

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def remove_shards(
    store: StoreDir, spec: ArraySpec, first_row: int, rows: int, rows_per_shard: int
) -> None:
    """Delete a unit's shards (after it failed), so the store holds nothing it does not list."""
    for shard in owned_shards(first_row, rows, rows_per_shard):
        path: Path = store.shard_path(spec, shard)
        path.unlink(missing_ok=True)
