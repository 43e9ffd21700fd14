"""The local executor: a build's units run in worker processes of this machine.

Workers are spawned with SIGINT blocked and then ignore it (a Ctrl-C reaches the whole process
group and is the build's alone to handle), die with the build (PR_SET_PDEATHSIG, kill -9
included), and report baked frames through a queue for the progress bar. A worker that dies
(a crash in a decoder, or killed) breaks the pool: the units that were in flight are baked again
one at a time, each in a worker of its own, so the one that kills its worker is named.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from prebake.build.executor import Done, Job
from prebake.build.unit import bake_unit, set_progress, tune_memory
from prebake.errors import StoreError
from prebake.storage import RemotePath
from prebake.store.plan import UnitPlan


def _init_worker(progress_queue: Any, parent_pid: int) -> None:
    # The parent spawned this process with SIGINT blocked: ignore it before unblocking, so a
    # Ctrl-C sent to the whole process group is the parent's alone to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    with contextlib.suppress(OSError, AttributeError):  # die with the parent (kill -9 included)
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl: nobody will commit our work
        os._exit(1)
    tune_memory()
    set_progress(progress_queue.put)


def _ready() -> None:
    """A task that only makes the pool spawn a worker."""


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT while workers are spawned: they inherit the mask, then ignore SIGINT.

    The mask is this thread's: the kernel may still hand a Ctrl-C to another thread (the
    pool's manager thread), and Python would raise it here between starting a worker and
    sending it its task (the worker then dies on an empty pipe, with a traceback). So a Ctrl-C
    is only noted meanwhile, and raised once the workers are started."""
    received: list[int] = []
    main = threading.current_thread() is threading.main_thread()  # where handlers can be set
    if main:
        handler = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a pending Ctrl-C arrives now
        if main:
            signal.signal(signal.SIGINT, handler)
        if received:
            raise KeyboardInterrupt


class WorkerPool:
    """Worker processes, spawned once for planning and baking alike (a spawned worker costs a
    few tenths of a second of imports)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self.progress_queue = context.Queue()
        self.executor = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self.progress_queue, os.getpid()),
        )

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        with _sigint_blocked():  # submit() spawns the workers
            return self.executor.submit(function, *args)

    def warm_up(self) -> None:
        """Spawn every worker now (submit() spawns one per task while none is idle)."""
        for _ in range(self.workers):
            self.submit(_ready)

    def drain(self, bar: Any) -> None:
        """Move the frames the workers reported baked onto the progress bar."""
        while True:
            try:
                bar.update(self.progress_queue.get_nowait())
            except queue.Empty:
                return

    def close(self, *, kill: bool) -> None:
        if kill:  # interrupted or failed: stop the work in flight, it is redone on resume
            processes = dict(getattr(self.executor, "_processes", None) or {})
            for process in processes.values():
                if process.is_alive():
                    process.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.progress_queue.close()
        self.progress_queue.join_thread()


class LocalPool:
    """Runs a build's tasks in `workers` processes of this machine (spawned on first use).

    `store` names the store in messages; `note` tells the user what happens (one line)."""

    def __init__(self, workers: int, store: Path | RemotePath, note: Callable[[str], None]) -> None:
        self.workers = workers
        self.store = store
        self.note = note
        self._pool: WorkerPool | None = None

    def threads(self) -> int:
        return self.workers

    def pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(self.workers)
        return self._pool

    def warm_up(self) -> None:
        """Start the workers (their imports) while this process plans."""
        self.pool().warm_up()

    def map_in_order(
        self, function: Callable[..., list[UnitPlan]], batches: list[Any], *args: Any
    ) -> Iterator[list[UnitPlan]]:
        """`function(batch, *args)` for every batch in the workers, results in batch order."""
        pool = self.pool()
        futures = [pool.submit(function, batch, *args) for batch in batches]
        for future in futures:
            try:
                yield future.result()
            except BrokenProcessPool:
                raise StoreError(
                    f"{self.store}: a worker process died (killed, or out of memory?); "
                    "run the same command again to resume"
                ) from None

    def bake(self, queue: deque[UnitPlan], job: Job, done: Done, bar: Any) -> None:
        """Run `bake_unit(*job(unit))` for every unit of `queue`, `done(unit, record)` as each
        finishes, frames baked onto `bar`. When a worker dies, the units in flight are baked
        again one at a time, each alone: a unit whose lone worker dies too gets `done(unit,
        None)` (the video killed it)."""
        while queue:
            suspects = self._bake_until_broken(queue, job, done, bar)
            if suspects:
                self.note(
                    f"note: a worker process died; retrying its {len(suspects)} videos "
                    "one at a time"
                )
            for unit in suspects:
                done(unit, self._bake_alone(job(unit), bar))

    def _bake_until_broken(
        self, queue: deque[UnitPlan], job: Job, done: Done, bar: Any
    ) -> list[UnitPlan]:
        """Bake units from `queue` until it is empty or a worker dies; then return the units
        that were in flight (one of them may have killed it)."""
        pool = self.pool()
        pending: dict[Future[dict[str, Any]], UnitPlan] = {}
        in_flight_when_broken: list[UnitPlan] = []
        while queue or pending:
            while queue and len(pending) < 2 * self.workers:
                unit = queue.popleft()
                pending[pool.submit(bake_unit, *job(unit))] = unit
            finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            pool.drain(bar)
            for future in finished:
                unit = pending.pop(future)
                try:
                    record = future.result()
                except BrokenProcessPool:
                    in_flight_when_broken.append(unit)
                    continue
                done(unit, record)
            if in_flight_when_broken:
                self._discard_pool()
                return in_flight_when_broken + list(pending.values())
        pool.drain(bar)
        return []

    def _bake_alone(self, arguments: tuple[Any, ...], bar: Any) -> dict[str, Any] | None:
        """`bake_unit(*arguments)` in a worker of its own; None if that worker dies too."""
        pool = WorkerPool(1)
        try:
            future = pool.submit(bake_unit, *arguments)
            while not wait([future], timeout=0.2).done:
                pool.drain(bar)
            pool.drain(bar)
            return future.result()
        except BrokenProcessPool:
            return None
        finally:
            pool.close(kill=True)

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.close(kill=True)
            self._pool = None

    def close(self, *, kill: bool) -> None:
        """Stop the workers; `kill` (interrupted or failed) stops the work in flight too."""
        if self._pool is not None:
            self._pool.close(kill=kill)
            self._pool = None
