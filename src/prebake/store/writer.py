"""Writing one unit's rows: each array's rows stream into the shards the unit owns.

A full shard is finished (index written, fsync'd, renamed into place) on a background thread,
so the baking thread does not wait for the disk; `RowStream.close` waits for every shard of
the stream, so a unit's record is still written only once all its shards are in place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from prebake.errors import StoreError
from prebake.store.layout import StoreDir
from prebake.store.schema import ArraySpec, encode_chunk_parts
from prebake.store.shard import ShardWriter

MAX_FINISHING = 2  # shards of one stream waiting for the disk before the stream waits too

_finisher: ThreadPoolExecutor | None = None
_scratch: Path | None = None


def _finisher_thread() -> ThreadPoolExecutor:
    global _finisher
    if _finisher is None:  # one per process: workers are separate processes
        _finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prebake-shards")
    return _finisher


class StoreWriteError(StoreError):
    """Writing to the store failed (disk full, permissions): fatal to the build, not a video's
    failure, so that no video is recorded as failed for it and a rerun redoes them."""


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
        self._finishing: list[Future[int]] = []

    def append(self, row: np.ndarray) -> None:
        parts = encode_chunk_parts(self.spec, row)
        try:
            if self._writer is None:
                final = self.store.shard_path(self.spec, self.next_shard)
                temporary = _temporary_file(self.store, self.spec.name, self.next_shard)
                self._writer = ShardWriter(
                    final, temporary, self.rows_per_shard, self.spec.chunk_alignment
                )
                self.next_shard += 1
            self._writer.append(*parts)
        except OSError as error:
            raise _write_error(self.store, error) from None
        if self._writer.count == self.rows_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._writer is not None
        writer, self._writer = self._writer, None
        self._finishing.append(_finisher_thread().submit(writer.close))
        while len(self._finishing) > MAX_FINISHING:  # the disk is slower than the baking
            self._collect(self._finishing.pop(0))

    def _collect(self, future: Future[int]) -> None:
        try:
            self.bytes_written += future.result()
        except OSError as error:
            raise _write_error(self.store, error) from None

    def close(self) -> int:
        """Finish the last shard; return once every shard of the stream is in place."""
        if self._writer is not None:
            self._finish_shard()
        while self._finishing:
            self._collect(self._finishing.pop(0))
        return self.bytes_written

    def abort(self) -> None:
        """Drop the shard being written; wait for those being finished (removed by the caller)."""
        for future in self._finishing:
            with contextlib.suppress(Exception):
                future.result()
        self._finishing = []
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def _temporary_file(store: StoreDir, name: str, shard: int) -> Path:
    """Where a shard is written before it is renamed into place (local) or uploaded (remote)."""
    if isinstance(store.tmp_dir, Path):
        return store.tmp_dir / f"{name}.{shard}.{os.getpid()}"
    return _scratch_file(name, shard)


def _scratch_file(name: str, shard: int) -> Path:
    """A local file for a shard on its way to a remote store, unique even if two threads of
    this process bake the same unit (a task Dask runs twice)."""
    global _scratch
    if _scratch is None:
        _scratch = (
            Path(os.environ.get("PREBAKE_SCRATCH") or tempfile.gettempdir()) / "prebake-shards"
        )
        _scratch.mkdir(parents=True, exist_ok=True)
        _remove_orphans(_scratch)
    return _scratch / f"{name}.{shard}.{os.getpid()}.{uuid.uuid4().hex[:12]}"


def _remove_orphans(scratch: Path) -> None:
    """Delete shards left by processes of this machine that died mid-upload (killed workers)."""
    for entry in scratch.iterdir():
        parts = entry.name.split(".")
        if len(parts) == 4 and parts[2].isdigit() and not _alive(int(parts[2])):
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _write_error(store: StoreDir, error: OSError) -> StoreWriteError:
    return StoreWriteError(
        f"{store.path}: cannot write the store ({error.strerror or error}); "
        "fix it and run the same command again to resume"
    )


def remove_shards(
    store: StoreDir, spec: ArraySpec, first_row: int, rows: int, rows_per_shard: int
) -> None:
    """Delete a unit's shards (after it failed), so the store holds nothing it does not list."""
    for shard in owned_shards(first_row, rows, rows_per_shard):
        store.shard_path(spec, shard).unlink(missing_ok=True)
