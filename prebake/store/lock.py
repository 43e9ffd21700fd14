"""One build per store: an exclusive `flock` on a file that records who holds it.

The kernel drops a flock when its process dies (kill -9 included), so a lock left by a dead
build is free again and is taken over; the recorded host and pid only make the messages useful.
The lock file lives in the build folder, which a finishing build removes while still holding
it: a waiting build therefore checks, once it holds a lock, that it locked the file that is
still at the path (not a removed one), and tries again otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from prebake.errors import StoreError


class StoreLock:
    def __init__(self, path: Path, store: Path) -> None:
        self.path = path
        self.store = store
        self._fd: int | None = None
        self.took_over: dict[str, object] | None = None  # the dead holder's record, if any

    def acquire(self) -> StoreLock:
        for _ in range(100):  # a retry is needed only when a finishing build removed the file
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise StoreError(
                    f"{self.store}: another build is writing this store "
                    f"(host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
                    f"since {holder.get('since', '?')}); wait for it or stop it"
                ) from None
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise StoreError(
                        f"{self.store}: this file system does not support locks ({error.strerror}); "
                        "build on a local disk"
                    ) from None
                raise
            if _same_file(fd, self.path):
                break
            os.close(fd)
        else:
            raise StoreError(
                f"{self.store}: could not lock {self.path}; is another build finishing?"
            )
        previous = _read_holder(fd)
        if previous:  # a clean release empties the record: this one died holding the lock
            self.took_over = previous
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            if _same_file(self._fd, self.path):
                os.ftruncate(self._fd, 0)  # an empty record means: released cleanly
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        opened, current = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data) if data else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}
