"""What the builder asks of an executor: the local process pool (`prebake.build.pool`) and the
Dask cluster (`prebake.build.dask`) both run `prebake.build.unit`'s tasks this way."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prebake.store.plan import UnitPlan

Job = Callable[[UnitPlan], tuple[Any, ...]]  # bake_unit's arguments for a unit
Done = Callable[[UnitPlan, dict[str, Any] | None], None]  # a unit's record; None: its worker died


class Executor(Protocol):
    def threads(self) -> int:
        """Units baked at once (worker processes, or the cluster's worker threads now)."""
        ...

    def warm_up(self) -> None:
        """Start the workers, if they start on demand, while this process plans."""
        ...

    def map_in_order(
        self, function: Callable[..., list[UnitPlan]], batches: list[Any], *args: Any
    ) -> Iterator[list[UnitPlan]]:
        """`function(batch, *args)` for every batch, results in batch order."""
        ...

    def bake(self, queue: deque[UnitPlan], job: Job, done: Done, bar: Any) -> None:
        """`bake_unit(*job(unit))` for every unit of `queue`; `done(unit, record)` as each
        finishes (`done(unit, None)` for a unit whose workers died even when it ran alone);
        the frames baked onto the progress `bar`."""
        ...

    def close(self, *, kill: bool) -> None:
        """Stop the workers; `kill`: the build was interrupted or failed."""
        ...
