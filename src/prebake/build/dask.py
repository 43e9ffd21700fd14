"""The Dask executor (`prebake build --dask`): a build's units (videos) run as Dask tasks; this
process commits.

Imported only when `--dask` is given (distributed is an optional extra: `pip install
'prebake[dask]'`). The tasks are the plain functions of `prebake.build.unit` (`plan_units`,
`bake_unit`): each returns a small record and writes only the shards its unit owns, atomically,
with the same bytes every time. So when a worker dies mid-unit, Dask reruns the unit on another
worker and the store stays bitwise identical to a one-machine build. The client (this process)
holds the store's lock, writes every record and commits; workers never commit.

`--dask local:N` starts a LocalCluster of N worker processes with one thread each, bound to
127.0.0.1, dashboard off; any other value is the address of a running scheduler
(`tcp://host:8786`), whose workers must have prebake installed and reach the source and store.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prebake.build.executor import Done, Job
from prebake.build.unit import bake_unit, tune_memory
from prebake.errors import PrebakeError, one_line
from prebake.store.plan import UnitPlan

try:
    import distributed
    from distributed.diagnostics.plugin import WorkerPlugin
    from distributed.scheduler import KilledWorker
except ImportError:  # pragma: no cover - the message is the point
    raise PrebakeError(
        "--dask needs the distributed package: pip install 'prebake[dask]'"
    ) from None

LOCAL_PREFIX = "local:"
LOOPBACK = "127.0.0.1"  # a local cluster listens on nothing else
CONNECT_SECONDS = 30
THREADS_REFRESH_SECONDS = 5.0  # how often the in-flight window follows the cluster's size
UNITS_PER_THREAD = 2  # units in flight per worker thread: one running, one queued


class _TuneMemory(WorkerPlugin):
    """Each worker process keeps freed frame buffers for the next frame, as local workers do."""

    name = "prebake-tune-memory"

    def setup(self, worker: Any) -> None:
        tune_memory()


class _IgnoreCtrlC(WorkerPlugin):
    """Workers of a local cluster ignore SIGINT: a Ctrl-C reaches the whole process group, and
    is the client's alone to handle (it stops the cluster), as with local worker processes."""

    name = "prebake-ignore-ctrl-c"

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def parse_local(address: str) -> int | None:
    """N of `local:N`, or None for a scheduler address."""
    if not address.startswith(LOCAL_PREFIX):
        return None
    count = address.removeprefix(LOCAL_PREFIX)
    if not count.isdigit() or int(count) < 1:
        raise PrebakeError(f"--dask {address}: expected local:N with N >= 1 worker processes")
    return int(count)


class DaskCluster:
    """A Dask client (and, for `local:N`, the LocalCluster it started) running one build."""

    def __init__(self, address: str) -> None:
        workers = parse_local(address)
        self.address = address
        self.local: Any = None
        try:
            if workers is not None:
                self.local = distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host=LOOPBACK,
                    dashboard_address=None,  # no dashboard; the scheduler's health and
                    # metrics server still starts: on loopback, on any free port
                    scheduler_kwargs={"dashboard_address": f"{LOOPBACK}:0"},
                    # prebake reports what matters (failed videos, dead workers) itself; at
                    # ERROR, a worker whose heartbeat races the cluster's close logs a
                    # traceback (seen when a refused --device stops the cluster at once).
                    silence_logs=logging.CRITICAL,
                )
                self.client = distributed.Client(self.local)
                self.client.register_plugin(_IgnoreCtrlC())
            else:
                self.client = distributed.Client(address, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError) as error:
            raise PrebakeError(
                f"--dask {address}: cannot reach the Dask scheduler ({one_line(str(error))})"
            ) from None
        self.client.register_plugin(_TuneMemory())
        self._threads = 0
        self._threads_at = 0.0

    def threads(self) -> int:
        """Worker threads of the cluster now (refreshed at most every few seconds)."""
        if time.monotonic() - self._threads_at > THREADS_REFRESH_SECONDS:
            self._threads = sum(self.client.nthreads().values())
            self._threads_at = time.monotonic()
        return self._threads

    def warm_up(self) -> None:
        """Nothing to do: the cluster's workers run already."""

    def check_workers(self, check: Callable[..., None], *args: Any) -> None:
        """`check(*args)` on every worker of the cluster now; the first PrebakeError it raises
        is raised here, naming its worker."""
        results = self.client.run(check, *args, on_error="return")
        for worker, result in sorted(results.items()):
            if isinstance(result, PrebakeError):
                raise PrebakeError(f"--dask {self.address}: worker {worker}: {result}")
            if isinstance(result, Exception):
                raise PrebakeError(
                    f"--dask {self.address}: worker {worker}: "
                    f"{type(result).__name__}: {one_line(str(result))}"
                )

    def map_in_order(
        self, function: Callable[..., list[UnitPlan]], batches: list[Any], *args: Any
    ) -> Iterator[list[UnitPlan]]:
        """`function(batch, *args)` for every batch as tasks, results in batch order."""
        futures = [
            self.client.submit(function, batch, *args, pure=False, key=f"plan-{i}-{_token()}")
            for i, batch in enumerate(batches)
        ]
        try:
            for future, batch in zip(futures, batches, strict=True):
                try:
                    yield self._result(future, "planning")
                except KilledWorker:
                    first = batch[0][1].frames
                    raise PrebakeError(
                        f"{first}: Dask workers died planning this video or the {len(batch) - 1} "
                        "after it; find the one that crashes and leave it out with --videos"
                    ) from None
        finally:
            self.client.cancel(futures)

    def bake(self, queue: deque[UnitPlan], job: Job, done: Done, bar: Any) -> None:
        """Run `bake_unit(*job(unit))` for every unit of `queue` (taken in order), a bounded
        number in flight; `done(unit, record)` as each finishes, then its frames onto `bar`
        (one bar for the cluster: frames of done units).

        Dask reruns a unit whose worker died; after `distributed.scheduler.allowed-failures`
        deaths it gives up (KilledWorker). Units queued on a dying worker count those deaths
        too, so a unit given up is retried at the end, alone on the cluster: only if its worker
        dies then as well is it the video's fault, and `done(unit, None)` records it as failed
        (as a local build does)."""

        def finished(unit: UnitPlan, record: dict[str, Any] | None) -> None:
            done(unit, record)
            bar.update(len(unit.frame_indices))

        suspects = self._run(queue, job, finished, UNITS_PER_THREAD)
        for unit in suspects:
            if self._run(deque([unit]), job, finished, 0):  # given up again, alone this time
                finished(unit, None)

    def _run(
        self,
        queue: deque[UnitPlan],
        job: Job,
        done: Done,
        per_thread: int,
    ) -> list[UnitPlan]:
        """Bake `queue` with `per_thread` units in flight per worker thread (0: one unit in
        all); return the units Dask gave up on."""
        in_flight: dict[Any, tuple[Any, UnitPlan]] = {}  # by task key
        finished = distributed.as_completed(loop=self.client.loop)
        given_up: list[UnitPlan] = []

        def submit_more() -> None:
            limit = max(1, per_thread * self.threads())
            while queue and len(in_flight) < limit:
                unit = queue.popleft()
                future = self.client.submit(
                    bake_unit, *job(unit), pure=False, key=f"bake-{unit.video_id}-{_token()}"
                )
                in_flight[future.key] = (future, unit)
                finished.add(future)

        submit_more()
        try:
            for future in finished:
                _, unit = in_flight.pop(future.key)
                try:
                    record = self._result(future, unit.frames)
                except KilledWorker:
                    given_up.append(unit)
                else:
                    done(unit, record)
                submit_more()
        finally:
            if in_flight:
                self.client.cancel([future for future, _ in in_flight.values()])
        return given_up

    def _result(self, future: Any, what: str) -> Any:
        try:
            return future.result()
        except (PrebakeError, KilledWorker):  # the store's fault (StoreWriteError), or a death
            raise
        except Exception as error:  # a worker without prebake, a lost scheduler...
            raise PrebakeError(
                f"{what}: a Dask task failed ({type(error).__name__}: {one_line(str(error))}); "
                "do the workers have this prebake installed and reach the source and store?"
            ) from None
        finally:
            future.release()

    def close(self, *, kill: bool) -> None:
        """Disconnect (this build's queued tasks are dropped) and stop a local cluster (its
        workers with it); `kill` asks nothing more of Dask."""
        self.client.close()
        if self.local is not None:
            self.local.close()


def _token() -> str:
    return uuid.uuid4().hex[:8]
