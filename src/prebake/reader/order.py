"""The order items are served in, per epoch and rank, and the position within an epoch that a
checkpoint saves: one ordering shared by `PrebakedLoader` and `PrebakedSampler`.

An epoch's order is a permutation of the dataset's indices, a pure function of (seed, epoch):
`torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))`, exactly as
`torch.utils.data.DistributedSampler` draws it (or `0 .. n - 1` without shuffling). Its items are
dealt to the ranks as DistributedSampler deals them: the positions not yet served are padded to a
multiple of `world_size` by repeating positions from the start of the permutation (or, with
`drop_last`, cut to a multiple of the round: `world_size` items for the sampler,
`world_size * batch_size` for the loader, so that every batch is full), and rank r takes the
r-th, (r + world_size)-th, ... of them. A fresh epoch at any world size is therefore exactly
DistributedSampler's order (with `drop_last`, and the DataLoader's own `drop_last` for batches).

The position saved in a checkpoint is `served`: how many positions of the epoch's permutation
all ranks together have been served. When every rank has taken k steps of b items (DDP runs in
lockstep), the positions served are exactly the first k * b * world_size of what was dealt, so
the rest of the epoch is the permutation from `served` on, whatever the world size that resumes
it: the items not yet served are dealt again to the new ranks, each served once (only the
padding, at most world_size - 1 items, repeats items, as DistributedSampler's does). The state
is the same on every rank after the same number of steps: saving rank 0's is enough.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

STATE_KEYS = ("items", "seed", "shuffle", "drop_last", "epoch", "served")


def epoch_permutation(items: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's order of `items` dataset indices (int64): DistributedSampler's permutation."""
    if not shuffle:
        return np.arange(items, dtype=np.int64)
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(items, generator=generator).numpy().astype(np.int64, copy=False)


def dealt_positions(
    items: int, served: int, world_size: int, rank: int, drop_last: bool, round_size: int
) -> np.ndarray:
    """Positions of the epoch's permutation that `rank` serves next, in order (int64).

    The `items - served` positions left are padded to a multiple of `world_size` with positions
    0, 1, ... of the permutation (cyclically when fewer than the padding), or with `drop_last`
    cut to a multiple of `round_size`; rank r takes every `world_size`-th from the r-th."""
    remaining = max(items - served, 0)
    if drop_last:
        count = remaining // round_size * round_size
        dealt = np.arange(served, served + count, dtype=np.int64)
    else:
        padding = -remaining % world_size if remaining else 0
        dealt = np.concatenate(
            [
                np.arange(served, items, dtype=np.int64),
                np.arange(padding, dtype=np.int64) % max(items, 1),
            ]
        )
    return dealt[rank::world_size]


@dataclass
class EpochCursor:
    """Where serving stands: the epoch and how many positions of its permutation all ranks
    have been served (`served`); the order's parameters travel with it in `state_dict()`."""

    items: int
    seed: int
    shuffle: bool
    drop_last: bool
    epoch: int = 0
    served: int = 0

    def rank_items(self, world_size: int, rank: int, round_size: int) -> np.ndarray:
        """Dataset indices `rank` serves from the current position to the end of the epoch."""
        positions = dealt_positions(
            self.items, self.served, world_size, rank, self.drop_last, round_size
        )
        return epoch_permutation(self.items, self.seed, self.epoch, self.shuffle)[positions]

    def after(self, steps_items: int, world_size: int, finished: bool) -> EpochCursor:
        """The cursor once each rank took `steps_items` of its items (lockstep); a finished pass
        moves to the next epoch (items dropped by `drop_last` are not served in this one)."""
        if finished:
            return EpochCursor(
                self.items, self.seed, self.shuffle, self.drop_last, self.epoch + 1, 0
            )
        served = min(self.served + steps_items * world_size, self.items)
        return EpochCursor(self.items, self.seed, self.shuffle, self.drop_last, self.epoch, served)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning; the current epoch keeps its position (a state
        loaded mid-epoch, then `set_epoch` with that epoch as a training loop does, resumes)."""
        if int(epoch) != self.epoch:
            self.epoch, self.served = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the position of `state`; ValueError when it orders other items or another way."""
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"not a prebake loader or sampler state: it lacks {missing}")
        for key in ("items", "seed", "shuffle", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"the state was saved with {key}={state[key]!r}, this one has "
                    f"{key}={getattr(self, key)!r}: create it with the same items and order"
                )
        served = int(state["served"])
        if not 0 <= served <= self.items or int(state["epoch"]) < 0:
            raise ValueError(f"the state's position is out of range: {state!r}")
        self.epoch, self.served = int(state["epoch"]), served


def distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): the given ones, else torch.distributed's when it is initialized,
    else (0, 1). ValueError when rank is not in 0 .. world_size - 1."""
    dist = torch.distributed
    initialized = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise ValueError(f"rank {rank} is not one of world_size {world_size} ranks")
    return int(rank), int(world_size)


class PrebakedSampler(Sampler[int]):
    """`PrebakedLoader`'s order as a sampler, for `DataLoader` or torchdata's
    `StatefulDataLoader`: `DistributedSampler`'s order (same permutation, padding and dealing;
    `drop_last` cuts to a multiple of `world_size`), resumable mid-epoch at any world size.

    `rank` and `world_size` default to torch.distributed's when it is initialized, else 0 and 1.
    `len(sampler)` is the indices this rank serves in a full epoch. Iterating serves the current
    epoch from the current position; when the pass is complete the sampler moves on to the
    next epoch. `set_epoch(e)` starts epoch e from its beginning (the current epoch keeps its
    position, so a loaded state followed by `set_epoch` of the same epoch resumes).

    `state_dict()` counts the indices this sampler's iterator has yielded, as
    `StatefulDataLoader` expects of a sampler. A plain `DataLoader` draws indices ahead of the
    batches it has handed out (its workers' prefetch): there, pass the items your loop actually
    received on this rank, `state_dict(consumed=steps * batch_size)`.
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.rank, self.world_size = distributed_defaults(rank, world_size)
        self.cursor = EpochCursor(len(dataset), int(seed), bool(shuffle), bool(drop_last))
        self._start = self.cursor  # the position the current pass started from
        self._yielded = 0
        self._pass_length = 0

    @property
    def epoch(self) -> int:
        return self.cursor.epoch

    def set_epoch(self, epoch: int) -> None:
        self.cursor.set_epoch(epoch)
        self._start, self._yielded, self._pass_length = self.cursor, 0, 0

    def __len__(self) -> int:
        cursor, size = self.cursor, self.world_size
        return len(dealt_positions(cursor.items, 0, size, self.rank, cursor.drop_last, size))

    def __iter__(self) -> Iterator[int]:
        start = self.cursor
        indices = start.rank_items(self.world_size, self.rank, self.world_size)
        self._start, self._yielded, self._pass_length = start, 0, len(indices)
        for index in indices.tolist():
            self._yielded += 1
            yield index
        # The next pass starts after this one; `state_dict(consumed)` keeps counting within
        # this pass until then (a DataLoader draws every index before its loop has them all).
        self.cursor = start.after(len(indices), self.world_size, finished=True)

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """The position after `consumed` items of this rank's current pass (default: the
        indices yielded so far); the same on every rank that consumed as many."""
        taken = self._yielded if consumed is None else int(consumed)
        if not 0 <= taken <= self._pass_length:
            raise ValueError(f"consumed={consumed} is not in 0 .. {self._pass_length}")
        finished = self._pass_length > 0 and taken == self._pass_length
        return self._start.after(taken, self.world_size, finished).state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.load_state_dict(state)
        self._start, self._yielded, self._pass_length = self.cursor, 0, 0
