"""One build per store: an exclusive `flock` on a file that records who holds it (local stores),
or a lock object refreshed by a heartbeat (remote stores, `RemoteStoreLock`).

The kernel drops a flock when its process dies (kill -9 included), so a lock left by a dead
build is free again and is taken over; the recorded host and pid only make the messages useful.
The lock file lives in the build folder, which a finishing build removes while still holding
it: a waiting build therefore checks, once it holds a lock, that it locked the file that is
still at the path (not a removed one), and tries again otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from prebake.errors import StoreError
from prebake.storage import RemotePath


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

    def check(self) -> None:
        """Nothing to check: the kernel holds a flock for as long as this process lives."""

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


def live_build(lock_path: Path | RemotePath) -> dict[str, object] | None:
    """The record ({host, pid, since}) of the build that holds this lock now, or None when no
    build runs (a lock left by a dead build is free). Never takes the lock from a build: the
    probe is a shared flock held for an instant (a build starting in that instant is told to
    wait, as it would be by any running build), or a read of the remote lock's heartbeat."""
    if isinstance(lock_path, RemotePath):
        try:
            holder = json.loads(lock_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(holder, dict):
            return None
        age = time.time() - float(holder.get("heartbeat") or 0)
        return holder if age < STALE_SECONDS else None
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return None


def holder_text(holder: dict[str, object]) -> str:
    return (
        f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
        f"since {holder.get('since', '?')}"
    )


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


# A remote lock is stale when its heartbeat is older than this: its build died (or lost its
# network) and the next build takes it over. The holder refreshes it every HEARTBEAT_SECONDS.
HEARTBEAT_SECONDS = 15.0
STALE_SECONDS = 120.0
SETTLE_SECONDS = 2.0  # after taking over a stale lock: time for a racing taker to show up


class RemoteStoreLock:
    """The lock of a store on an object store: an object `{host, pid, token, since, heartbeat}`.

    flock does not exist there, and nothing releases a lock when its holder dies, so the holder
    (the build's client process) rewrites its heartbeat every HEARTBEAT_SECONDS from a thread,
    and a lock whose heartbeat is older than STALE_SECONDS is taken over. Limits, by design of
    object stores:

    - Taking a free lock is atomic only where the store honours a conditional PUT
      (`If-None-Match: *`, which s3fs sends for `mode="create"`): AWS S3 does (and moto);
      on a store that ignores it two builds starting at the same instant can both "win".
    - Taking over a stale lock is a read, a plain PUT, a pause and a re-read (there is no
      compare-and-swap through fsspec): two builds taking over the same stale lock within
      SETTLE_SECONDS of each other may both proceed.
    - A holder paused for longer than STALE_SECONDS (a suspended laptop, a partitioned
      network) is taken over while alive; its heartbeat thread then sees another token, and the
      build stops at its next step (`check`) before committing anything more. Units it was
      baking may still upload shards: identical bytes to the new build's, so harmless.
    - Clocks: staleness compares the holder's clock with the taker's; keep them within seconds
      (NTP).
    """

    def __init__(self, path: RemotePath, store: object) -> None:
        self.path = path
        self.store = store
        self.token = uuid.uuid4().hex
        self.took_over: dict[str, object] | None = None
        self.lost: dict[str, object] | None = None  # the record found instead of ours
        self._since = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "since": self._since,
                "heartbeat": time.time(),
            }
        ).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # torn or foreign: treated as stale
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> RemoteStoreLock:
        self._since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self.path.write_bytes(self._record(), exclusive=True)
        except FileExistsError:
            holder = self._read() or {}
            age = time.time() - float(holder.get("heartbeat") or 0)
            if age < STALE_SECONDS:
                raise StoreError(
                    f"{self.store}: another build is writing this store "
                    f"(host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
                    f"since {holder.get('since', '?')}, heartbeat {max(age, 0):.0f} s ago); "
                    f"wait for it or stop it (a lock is taken over {STALE_SECONDS:.0f} s after "
                    "its last heartbeat)"
                ) from None
            self.took_over = holder
            self.path.write_bytes(self._record())
            time.sleep(SETTLE_SECONDS)
            winner = self._read() or {}
            if winner.get("token") != self.token:
                raise StoreError(
                    f"{self.store}: another build took over this store's stale lock at the same "
                    f"time (host {winner.get('host', '?')}, pid {winner.get('pid', '?')})"
                ) from None
        self._thread = threading.Thread(target=self._beat, name="prebake-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a failed refresh is retried next beat
                holder = self._read()
                if holder is None or holder.get("token") != self.token:
                    self.lost = holder or {}
                    return
                self.path.write_bytes(self._record())

    def check(self) -> None:
        """Raise StoreError if another build took the lock over (this one was thought dead)."""
        if self.lost is not None:
            raise StoreError(
                f"{self.store}: lost the store's lock to another build "
                f"(host {self.lost.get('host', '?')}, pid {self.lost.get('pid', '?')}): this "
                f"build's heartbeat was older than {STALE_SECONDS:.0f} s; stopping"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            with contextlib.suppress(Exception):
                holder = self._read()
                if holder is not None and holder.get("token") == self.token:
                    self.path.unlink(missing_ok=True)

    def __enter__(self) -> RemoteStoreLock:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()
