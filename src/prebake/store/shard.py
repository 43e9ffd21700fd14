"""Zarr v3 `sharding_indexed` shard files, written in a stream and indexed for reading rows as byte ranges.

A shard is the inner chunks' bytes one after the other, then the index: one little-endian uint64
(offset, nbytes) pair per inner chunk in C order ((2**64-1, 2**64-1) for a chunk never written),
then a crc32c of the index. An array may ask for its chunks to start at multiples of an alignment
(zero bytes fill the gaps, which the sharding spec allows: "unused space between them is
allowed"): a row whose file offset shares the page alignment of the buffer it is read into is
copied out of the page cache about 1.4 x faster (`prebake.reader.rows`). zarr-python writes a shard whole, so it must hold the shard in memory;
writing it here in a stream keeps a worker's memory at one frame, whatever the shard size, and the
tests prove the files hold zarr-python's chunks and index (byte-identical to its files where
no alignment is asked for).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import google_crc32c
import numpy as np

from prebake.storage import RemotePath, read_tail

NO_CHUNK = 2**64 - 1
INDEX_ENTRY_BYTES = 16
CHECKSUM_BYTES = 4


def shard_key(name: str, ndim: int, shard: int) -> str:
    """Store-relative key of a shard: the default v3 chunk key encoding with '/'."""
    return "/".join([name, "c", str(shard), *(["0"] * (ndim - 1))])


def index_nbytes(chunks_per_shard: int) -> int:
    return chunks_per_shard * INDEX_ENTRY_BYTES + CHECKSUM_BYTES


def parse_index(tail: bytes | memoryview, chunks_per_shard: int) -> np.ndarray:
    """(chunks_per_shard, 2) uint64 offsets and lengths from a shard's last bytes; checks the crc."""
    body = bytes(tail[-index_nbytes(chunks_per_shard) : -CHECKSUM_BYTES])
    if len(body) != chunks_per_shard * INDEX_ENTRY_BYTES:
        raise ValueError("shard is shorter than its index")
    if struct.pack("<I", google_crc32c.value(body)) != bytes(tail[-CHECKSUM_BYTES:]):
        raise ValueError("shard index checksum mismatch")
    return np.frombuffer(body, dtype="<u8").reshape(chunks_per_shard, 2)


def read_index(path: Path | RemotePath, chunks_per_shard: int) -> np.ndarray:
    size = index_nbytes(chunks_per_shard)
    if isinstance(path, RemotePath):  # one ranged GET, no HEAD for the size
        tail = read_tail(path, size)
        if len(tail) < size:
            raise ValueError("shard is shorter than its index")
        return parse_index(tail, chunks_per_shard)
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() < size:
            raise ValueError("shard is shorter than its index")
        handle.seek(-size, os.SEEK_END)
        return parse_index(handle.read(size), chunks_per_shard)


class ShardWriter:
    """Writes one shard's inner chunks in order to a local temporary file, then renames it into
    place (local store) or uploads it as one object (remote store: one PUT is atomic)."""

    def __init__(
        self,
        final: Path | RemotePath,
        temporary: Path,
        chunks_per_shard: int,
        alignment: int = 1,
    ) -> None:
        self.final = final
        self.alignment = alignment
        self.temporary = temporary
        self.index = np.full((chunks_per_shard, 2), NO_CHUNK, dtype="<u8")
        self.position = 0
        self.count = 0
        self._file: BinaryIO = temporary.open("wb")

    def append(self, *parts: bytes | np.ndarray) -> None:
        """Append the next inner chunk, given as one or more consecutive byte buffers, at the
        next multiple of the alignment."""
        gap = -self.position % self.alignment
        if gap:
            self._file.write(bytes(gap))
            self.position += gap
        nbytes = 0
        for part in parts:
            buffer = part.data if isinstance(part, np.ndarray) else part
            self._file.write(buffer)
            nbytes += len(buffer) if isinstance(buffer, bytes) else buffer.nbytes
        self.index[self.count] = (self.position, nbytes)
        self.position += nbytes
        self.count += 1

    def close(self) -> int:
        """Write the index, make the file durable and visible atomically; return its size."""
        body = self.index.tobytes()
        self._file.write(body + struct.pack("<I", google_crc32c.value(body)))
        if isinstance(self.final, RemotePath):
            self._file.close()  # no fsync: the upload reads the page cache, the object is durable
            try:
                self.final.upload(self.temporary)
            except OSError:
                raise
            except Exception as error:  # a client library's own error: still the store's fault
                raise OSError(f"upload to {self.final} failed ({error})") from None
            finally:
                self.temporary.unlink(missing_ok=True)
            return self.position + len(body) + CHECKSUM_BYTES
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.temporary, self.final)
        return self.position + len(body) + CHECKSUM_BYTES

    def abort(self) -> None:
        self._file.close()
        self.temporary.unlink(missing_ok=True)
