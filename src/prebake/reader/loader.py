"""`PrebakedLoader`: batches filled by threads of the training process, straight to the device.

Why not `DataLoader(PrebakedDataset, num_workers=N)`: each tensor a worker returns is moved into
shared memory by torch and back out (REFERENCE.md section 6: about 190 items/s against
1,400-1,900 in-process, all four fields). Here, as in FFCV, a few threads of the training
process copy rows (`os.preadv`, `cv2.LUT`, the zstd decode: all release the GIL) into
preallocated batch buffers (`prebake.reader.buffers`); nothing crosses a process boundary.
The order is `prebake.reader.order`'s, the one `PrebakedSampler` also serves.
"""

from __future__ import annotations

import math
import os
import warnings
import weakref
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from prebake.reader.buffers import BatchBuffers, DeviceCopies, host_dtypes
from prebake.reader.dataset import PrebakedDataset
from prebake.reader.order import EpochCursor, dealt_positions, distributed_defaults
from prebake.store.schema import array_specs

MAX_DEFAULT_THREADS = 4  # copies are memory-bound: more threads than this rarely help


class PrebakedLoader:
    """Batches of a prebake store, as `DataLoader(PrebakedDataset(...), batch_size)` with the
    default collate gives them, bit for bit, from threads of this process.

    Each batch is a dict: the fields (default: every field the store holds) stacked as
    (B, ...) tensors (clips: (B, T, ...)), dtypes as `PrebakedDataset` serves them (float32
    `pixel_values` and `masks`, uint8 `g_pixel_values`, bool `prompt_masks`); `video_id` and
    `masklet_type` lists of str; `frame_index` and `masklet_id` int64 tensors (B,) (clips:
    `frame_index` (B, T) and `present` bool (B, T)). `fields`, `clip_len`, `masklet_types` and
    `min_prompt_cells` select what `PrebakedDataset` would (see it; its errors too).

    Order (`prebake.reader.order`): DistributedSampler's: a permutation drawn from
    `seed + epoch` (`shuffle=False`: the dataset's order), dealt to the ranks after padding
    with items from the epoch's start to a multiple of `world_size`; with `drop_last`, the
    items that fill no whole round of `world_size * batch_size` are dropped instead (every
    batch full). `rank` and `world_size` default to torch.distributed's when it is initialized,
    else 0 and 1. `len(loader)` is this rank's batches in a full epoch (the same on all ranks).

    Epochs and resuming: iterating serves the current epoch from the current position; when
    its last batch has been handed out, the loader moves to the next epoch. `set_epoch(e)`
    starts epoch e from its beginning (the current epoch keeps its position). A loop left
    early (`break`, an exception) keeps the position of the batches handed out: the next
    iteration continues there. `state_dict()` (a small dict of ints and bools, the same on
    every rank after the same number of steps) and `load_state_dict(state)` in a new process
    serve exactly the batches the uninterrupted run would have served next; loaded at another
    world size or batch size, the items not yet served in that epoch are dealt to the new
    ranks, each served once (save for the padding, as above).

    Threads: `num_threads` (default: the usable CPUs, at most 4) fill the next `prefetch`
    batches while the caller works. They wait, idle, from one complete epoch to the next, and
    stop when an iteration is left early (`break`, an exception, Ctrl-C, the iterator
    garbage-collected, a new iteration started), on `close()`, and when the loader is
    garbage-collected or the interpreter exits. An error reading the store (`StoreError`, one line naming the file:
    a shard truncated while being read, for instance) is raised by the loop.

    Devices: with `device="cpu"` a batch's tensors are views of buffers the loader reuses:
    **a CPU batch stays valid until the batch after the next one is requested** (batch i is
    refilled from the request of batch i + 2 on); `.clone()` what must live longer. With
    `pin_memory=True` (a CUDA machine) those buffers are pinned. With `device="cuda"` (or
    "cuda:N") every tensor of a batch is a fresh device tensor, valid as long as it is held:
    uint8 data cross PCIe as uint8 from pinned buffers (`pin_memory` defaults to True) with
    non-blocking copies on a side stream, and become float32 on the device (a v2 store's
    `pixel_values` through the 3 x 256 normalization table, `masks` as 0.0/1.0), values
    identical to the CPU path; the current stream waits for the copies.

    Other keywords (`max_open_shards`, `verify_checksums`, `storage_options`) go to
    `PrebakedDataset`.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        *,
        fields: Sequence[str] | None = None,
        clip_len: int | None = None,
        masklet_types: Sequence[str] | None = None,
        min_prompt_cells: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        num_threads: int | None = None,
        device: str | torch.device = "cpu",
        pin_memory: bool | None = None,
        prefetch: int = 2,
        **dataset_options: Any,
    ) -> None:
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive number of items, got {batch_size!r}")
        if int(prefetch) < 0:
            raise ValueError(f"prefetch must be >= 0 batches, got {prefetch!r}")
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads!r}")
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {device!r}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else bool(pin_memory)
        if self.pin_memory and not torch.cuda.is_available():
            warnings.warn("pin_memory=True but CUDA is not available: not pinning", stacklevel=2)
            self.pin_memory = False
        self.dataset = PrebakedDataset(
            path, fields, clip_len, masklet_types, min_prompt_cells, **dataset_options
        )
        self.batch_size = int(batch_size)
        self.prefetch = int(prefetch)
        self.num_threads = int(num_threads) if num_threads else default_threads()
        self.rank, self.world_size = distributed_defaults(rank, world_size)
        self.cursor = EpochCursor(len(self.dataset), int(seed), bool(shuffle), bool(drop_last))
        self._ring: list[BatchBuffers] | None = None  # allocated on first use, then reused
        self._copies: DeviceCopies | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_finalizer: weakref.finalize | None = None
        self._active: weakref.ref[Generator[dict[str, Any], None, None]] | None = None
        self._pass_start = self.cursor  # the position the current pass started from
        self._handed = 0  # items this rank handed out in the current pass
        self._pass_items = 0

    # -- order and position ------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._position().epoch

    @property
    def round_size(self) -> int:
        """Items dealt per round: `world_size`, or with `drop_last` every batch full."""
        return self.world_size * self.batch_size if self.cursor.drop_last else self.world_size

    def __len__(self) -> int:
        items = len(
            dealt_positions(
                self.cursor.items,
                0,
                self.world_size,
                self.rank,
                self.cursor.drop_last,
                self.round_size,
            )
        )
        return math.ceil(items / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning; the current epoch keeps its position."""
        self._stop_active()
        self.cursor.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where serving stands, after the batches handed out so far (see the class doc)."""
        return self._position().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state` (from `state_dict()`, any world size or batch size); ValueError
        when it was saved for other items or another order (seed, shuffle, drop_last)."""
        self._stop_active()
        self.cursor.load_state_dict(state)

    def _position(self) -> EpochCursor:
        if self._active is None or self._active() is None:
            return self.cursor
        finished = self._handed == self._pass_items
        return self._pass_start.after(self._handed, self.world_size, finished)

    def _stop_active(self) -> None:
        active = self._active() if self._active is not None else None
        if active is not None:
            active.close()  # its finally stops the threads and records the position
        self._active = None

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._stop_active()
        start = self.cursor
        indices = start.rank_items(self.world_size, self.rank, self.round_size).tolist()
        size = self.batch_size
        plan = [indices[i : i + size] for i in range(0, len(indices), size)]
        self._pass_start, self._handed, self._pass_items = start, 0, len(indices)
        batches = self._batches(start, plan)
        self._active = weakref.ref(batches)
        return batches

    def _batches(
        self, start: EpochCursor, plan: list[list[int]]
    ) -> Generator[dict[str, Any], None, None]:
        ring = self._buffers()
        copies = self._device_copies()
        pool = self._threads()
        completed = False
        filling: dict[int, list[Future[list[dict[str, Any]]]]] = {}
        metadata = _ItemsMetadata(self.dataset, plan)
        copying: dict[int, tuple[dict[str, torch.Tensor], Any]] = {}
        submitted = 0
        try:
            for step, items in enumerate(plan):
                while submitted < len(plan) and submitted <= step + self.prefetch:
                    buffers = ring[submitted % len(ring)]
                    buffers.wait_copied()
                    items_of = list(enumerate(plan[submitted]))
                    share = -(-len(items_of) // self.num_threads)  # a task per thread
                    filling[submitted] = [
                        pool.submit(self._fill, buffers, items_of[start : start + share])
                        for start in range(0, len(items_of), share)
                    ]
                    submitted += 1
                read = [meta for future in filling.pop(step) for meta in future.result()]
                buffers = ring[step % len(ring)]
                if copies is None:
                    fields = {name: t[: len(items)] for name, t in buffers.tensors.items()}
                else:
                    fields = copies.hand_over(
                        *copying.pop(step, None) or copies.start(buffers, len(items))
                    )
                    following = filling.get(step + 1)
                    if following is not None and all(f.done() for f in following):
                        # Overlap the next batch's copy with the caller's work on this one.
                        count = len(plan[step + 1])
                        copying[step + 1] = copies.start(ring[(step + 1) % len(ring)], count)
                if self.dataset.clip_len is not None:  # a clip's metadata come with its rows
                    collated = default_collate(read)
                else:
                    collated = metadata.batch(step)
                if copies is not None:  # frame_index, masklet_id, present: a few bytes
                    collated = {
                        key: value.to(self.device) if isinstance(value, torch.Tensor) else value
                        for key, value in collated.items()
                    }
                batch = {**fields, **collated}
                self._handed += len(items)
                yield batch
            completed = True
        finally:
            if not completed:  # left early: stop the threads (they finish the row in hand)
                for futures in filling.values():
                    for future in futures:
                        future.cancel()
                self._stop_pool()
            finished = self._handed == self._pass_items
            self.cursor = start.after(self._handed, self.world_size, finished)
            self._active = None

    def _threads(self) -> ThreadPoolExecutor:
        """The filling threads: kept from one complete epoch to the next (with their open
        files), stopped when an iteration is left early, by `close()`, or with the loader."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="prebake-loader")
            self._pool_finalizer = weakref.finalize(self, _stop_threads, self._pool)
        return self._pool

    def close(self) -> None:
        """Stop the threads now (a later iteration starts new ones); the position stays."""
        self._stop_active()
        self._stop_pool()

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._pool_finalizer is not None:
            self._pool_finalizer.detach()
            _stop_threads(pool)

    def _fill(self, buffers: BatchBuffers, items: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """In a thread: read (slot, dataset index) pairs into their slots; their metadata."""
        return [self.dataset.read_into(index, buffers.slot(slot)) for slot, index in items]

    def _buffers(self) -> list[BatchBuffers]:
        if self._ring is None:
            lead = () if self.dataset.clip_len is None else (self.dataset.clip_len,)
            specs = array_specs(self.dataset.version)
            shapes = {name: (*lead, *specs[name].row_shape) for name in self.dataset.fields}
            dtypes = host_dtypes(self.dataset, self.device)
            # prefetch batches filled ahead, the one handed out, the one before it.
            self._ring = [
                BatchBuffers(shapes, dtypes, self.batch_size, self.pin_memory)
                for _ in range(self.prefetch + 2)
            ]
        return self._ring

    def _device_copies(self) -> DeviceCopies | None:
        if self.device.type != "cuda":
            return None
        if self._copies is None:
            self._copies = DeviceCopies(self.device, self.dataset)
        return self._copies

    def __repr__(self) -> str:
        return (
            f"PrebakedLoader({str(self.dataset.path)!r}, batch_size={self.batch_size}, "
            f"fields={self.dataset.fields}, rank={self.rank}/{self.world_size}, "
            f"device={str(self.device)!r}): {len(self)} batches of {len(self.dataset)} items"
        )


class _ItemsMetadata:
    """The items' metadata of a pass's batches, gathered from the tables a block of batches at a
    time (`PrebakedDataset.items_metadata`): collating each batch's items one by one costs
    more, in the thread that hands batches out, than the block's gather; a block bounds the
    memory a pass of millions of items would take at once."""

    BLOCK = 64  # batches per gather

    def __init__(self, dataset: PrebakedDataset, plan: list[list[int]]) -> None:
        self.dataset = dataset
        self.plan = plan
        self.block = -1
        self.rows: dict[str, Any] = {}
        self.starts: list[int] = []

    def batch(self, step: int) -> dict[str, Any]:
        """Batch `step`'s metadata: new lists, and tensors of their own."""
        block = step // self.BLOCK
        if block != self.block:
            batches = self.plan[block * self.BLOCK : (block + 1) * self.BLOCK]
            self.rows = self.dataset.items_metadata([i for items in batches for i in items])
            self.starts = [0]
            for items in batches:
                self.starts.append(self.starts[-1] + len(items))
            self.block = block
        start, stop = self.starts[step % self.BLOCK], self.starts[step % self.BLOCK + 1]
        return {
            key: value[start:stop].clone() if isinstance(value, torch.Tensor) else value[start:stop]
            for key, value in self.rows.items()
        }


def _stop_threads(pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=True, cancel_futures=True)


def default_threads() -> int:
    """The CPUs this process may use, at most `MAX_DEFAULT_THREADS`."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_DEFAULT_THREADS))
