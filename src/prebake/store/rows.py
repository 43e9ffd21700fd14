"""Single rows of a sharded data array, read straight from the shard files.

Used by `verify` and `show`, which read a few rows at random: going through the shard index
directly avoids zarr-python's per-call overhead (REFERENCE.md section 6) and lets a damaged or
missing chunk be reported with its row and file instead of as a generic decode error.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from prebake.errors import StoreError
from prebake.storage import RemotePath, read_range, relative_name
from prebake.store.layout import StoreDir
from prebake.store.schema import ArraySpec, ChecksumError, decode_chunk
from prebake.store.shard import NO_CHUNK, read_index

INDEX_CACHE = 64  # shard indexes kept per reader (16 KB each at 1024 rows per shard)


class RowError(StoreError):
    """A row that cannot be read: missing shard, damaged index, missing or damaged chunk."""


class RowReader:
    """Reads rows of one sharded array; `rows_per_shard` comes from the store's params."""

    def __init__(self, store: StoreDir, spec: ArraySpec, rows_per_shard: int) -> None:
        self.store = store
        self.spec = spec
        self.rows_per_shard = rows_per_shard
        self._indexes: OrderedDict[int, np.ndarray] = OrderedDict()

    def shard_path(self, row: int) -> Path | RemotePath:
        return self.store.shard_path(self.spec, row // self.rows_per_shard)

    def _index(self, shard: int) -> np.ndarray:
        if shard in self._indexes:
            self._indexes.move_to_end(shard)
            return self._indexes[shard]
        path = self.store.shard_path(self.spec, shard)
        try:
            index = read_index(path, self.rows_per_shard)
        except FileNotFoundError:
            raise RowError(
                f"{self.spec.name}: shard file {self._relative(path)} is missing"
            ) from None
        except ValueError as error:
            raise RowError(
                f"{self.spec.name}: shard file {self._relative(path)}: {error}"
            ) from None
        self._indexes[shard] = index
        if len(self._indexes) > INDEX_CACHE:
            self._indexes.popitem(last=False)
        return index

    def _relative(self, path: Path | RemotePath) -> str:
        return relative_name(path, self.store.path)

    def raw(self, row: int) -> bytes:
        """The row's encoded inner chunk (codecs applied, crc32c at its end)."""
        shard, position = divmod(row, self.rows_per_shard)
        offset, nbytes = (int(value) for value in self._index(shard)[position])
        path = self.store.shard_path(self.spec, shard)
        if offset == NO_CHUNK:
            raise RowError(f"{self.spec.name} row {row}: no chunk in {self._relative(path)}")
        data = read_range(path, offset, nbytes)
        if len(data) != nbytes:
            raise RowError(
                f"{self.spec.name} row {row}: chunk runs past the end of {self._relative(path)}"
            )
        return data

    def read(self, row: int) -> np.ndarray:
        """The decoded row (read-only), its crc32c verified."""
        data = self.raw(row)
        try:
            return decode_chunk(self.spec, data)
        except ChecksumError:
            raise RowError(f"{self.spec.name} row {row}: crc32c mismatch (damaged chunk)") from None
        except (ValueError, RuntimeError) as error:  # zstd or reshape of a wrong-sized chunk
            raise RowError(f"{self.spec.name} row {row}: undecodable chunk ({error})") from None
