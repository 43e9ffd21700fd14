"""Loader benchmark: `PrebakedLoader` against `DataLoader(PrebakedDataset, num_workers=2)` and
the floor, all four fields and Loop 1's, in one run, on the same items in the same order.

- loader: `PrebakedLoader(store, 8)` (its default threads), epochs of its own shuffled order;
- DataLoader: `DataLoader(PrebakedDataset(store), batch_size=8, num_workers=2,
  persistent_workers=True)` over the same order (the way training scripts read a map-style
  dataset; workers started once, before timing);
- floor: what no reader can avoid: the same rows copied into preallocated batch tensors from
  memory-mapped shards whose offsets were all looked up beforehand (a v2 store's
  `pixel_values` through the normalization table, masks zstd-decoded and cast to float32), by
  one thread, and by as many threads as the loader uses, each on its share of the items with
  its own buffers (no queue, no ordering, no metadata): the targets compare with the latter;
  and, as a measurement, the same with the rows read by `os.preadv` (the loader's robust read:
  no SIGBUS when a shard is truncated) instead of copied out of memory maps;
- memory: a fresh (spawned) process runs the loader for several epochs; RssAnon after
  `malloc_trim(0)` at the end of each (memory in use: buffers, tables, open files).

Rates are items/s, warm page cache, rounds alternating between the readers (median kept), so
the ratios compare like with like on a machine whose load changes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import torch

from prebake.bench.reader import _memory_status, _release_free_heap, memory_lines
from prebake.bench.targets import LOADER_TARGETS, format_verdict
from prebake.errors import StoreError
from prebake.reader import LOOP1_FIELDS, PrebakedDataset, PrebakedLoader
from prebake.reader.dataset import OUTPUT_DTYPES
from prebake.reader.order import epoch_permutation
from prebake.reader.rows import normalize_into, page_aligned_empty
from prebake.store.schema import ITEM_ARRAYS, array_specs
from prebake.store.shard import CHECKSUM_BYTES, read_index, shard_key
from prebake.transforms import pixel_table

BATCH_SIZE = 8
DATALOADER_WORKERS = 2
ROUNDS = 5  # alternating rounds, median kept: a 2-core machine's load changes from second to second
MEMORY_EPOCHS = 8


def bench_loader(store: Path, *, items: int) -> dict[str, Any]:
    """Items/s of the loader, the DataLoader and the floor, all fields and Loop 1's; memory."""
    results: dict[str, Any] = {"store": str(store), "batch_size": BATCH_SIZE, "items_per_s": {}}
    for label, fields in (("all", None), ("loop1", LOOP1_FIELDS)):
        speeds = _speeds(store, fields, items)
        results["threads"] = speeds.pop("threads")
        results["items_per_s"][label] = speeds
    speed = results["items_per_s"]
    ratios = {}
    for label in ("all", "loop1"):
        ratios[f"{label}_vs_dataloader"] = speed[label]["loader"] / speed[label]["dataloader"]
        ratios[f"{label}_vs_floor"] = speed[label]["loader"] / speed[label]["floor_threads"]
        ratios[f"{label}_vs_floor_1"] = speed[label]["loader"] / speed[label]["floor_1"]
        ratios[f"{label}_vs_floor_pread"] = speed[label]["loader"] / speed[label]["floor_pread"]
    results["ratios"] = ratios
    results["verdicts"] = [target.check(ratios[target.key]) for target in LOADER_TARGETS]
    results["memory"] = _loader_memory(store)
    return results


def format_loader(results: dict[str, Any]) -> list[str]:
    speed, ratios = results["items_per_s"], results["ratios"]
    threads = results["threads"]
    lines = [
        f"loader: {results['store']} (batches of {results['batch_size']}, "
        f"{speed['all']['reads']} items per measurement, warm cache; items/s)",
        f"  {'':36s} {'all four fields':>16s} {'Loop-1 fields':>14s}",
    ]
    rows = (
        (f"PrebakedLoader ({threads} threads)", "loader"),
        (f"DataLoader(num_workers={DATALOADER_WORKERS})", "dataloader"),
        (f"floor, {threads} threads", "floor_threads"),
        ("floor, 1 thread", "floor_1"),
        (f"floor by pread, {threads} threads", "floor_pread"),
    )
    for label, key in rows:
        lines.append(f"  {label:36s} {speed['all'][key]:16.1f} {speed['loop1'][key]:14.1f}")
    for label, key in (
        ("loader / DataLoader", "vs_dataloader"),
        (f"loader / floor, {threads} threads", "vs_floor"),
        ("loader / floor, 1 thread", "vs_floor_1"),
        (f"loader / floor by pread, {threads} thr.", "vs_floor_pread"),
    ):
        lines.append(f"  {label:36s} {ratios['all_' + key]:15.2f}x {ratios['loop1_' + key]:13.2f}x")
    memory = results["memory"]
    lines.append(
        f"  loader process memory at the end of epochs 1..{len(memory['rss_anon_in_use'])} "
        f"({memory['items_per_epoch']} items each, all fields, spawn):"
    )
    lines += memory_lines(
        memory, (("VmRSS", "vm_rss"), ("RssAnon in use (after malloc_trim)", "rss_anon_in_use"))
    )
    in_use = memory["rss_anon_in_use"]
    lines.append(f"    RssAnon in use, last epoch - epoch 2: {in_use[-1] - in_use[1]:+.1f} MB")
    lines.append("targets (all four fields):")
    lines.extend(format_verdict(verdict) for verdict in results["verdicts"])
    return lines


def _speeds(store: Path, fields: tuple[str, ...] | None, items: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    loader = PrebakedLoader(store, BATCH_SIZE, fields=fields)
    dataset = loader.dataset
    count = len(dataset)
    if count == 0:
        raise StoreError(f"{store}: the store holds no items to read")
    epochs = max(1, math.ceil(items / count))
    orders = [epoch_permutation(count, 0, epoch, True).tolist() for epoch in range(epochs)]
    reads = epochs * count
    reference = DataLoader(
        PrebakedDataset(store, fields=fields),
        batch_size=BATCH_SIZE,
        num_workers=DATALOADER_WORKERS,
        persistent_workers=True,
        sampler=_Orders(orders),
    )
    floor = _Floor(store, dataset, [index for order in orders for index in order])

    def run_loader() -> None:
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for _ in loader:
                pass

    def run_dataloader() -> None:
        for _ in range(epochs):
            for _ in reference:
                pass

    for run in (run_loader, run_dataloader, lambda: floor.run(1)):  # warm up: cache, workers
        run()
    floor.run(1, pread=True)
    runs: dict[str, Callable[[], None]] = {
        "loader": run_loader,
        "dataloader": run_dataloader,
        "floor_threads": lambda: floor.run(loader.num_threads),
        "floor_1": lambda: floor.run(1),
        "floor_pread": lambda: floor.run(loader.num_threads, pread=True),
    }
    rates: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(ROUNDS):
        for key, run in runs.items():
            started = time.perf_counter()
            run()
            rates[key].append(reads / (time.perf_counter() - started))
    floor.close()
    return {
        **{key: statistics.median(values) for key, values in rates.items()},
        "reads": reads,
        "threads": loader.num_threads,
    }


class _Orders(torch.utils.data.Sampler[int]):
    """The loader's epoch orders, one per pass (the DataLoader's workers persist)."""

    def __init__(self, orders: list[list[int]]) -> None:
        self.orders = orders
        self.passes = 0

    def __len__(self) -> int:
        return len(self.orders[0])

    def __iter__(self) -> Any:
        order = self.orders[self.passes % len(self.orders)]
        self.passes += 1
        return iter(order)


class _Floor:
    """The items' rows copied into preallocated batch tensors, every offset looked up
    beforehand: out of memory maps, or (`pread=True`) by `os.preadv` as the loader reads."""

    def __init__(self, store: Path, dataset: PrebakedDataset, order: list[int]) -> None:
        tables = dataset._ensure_tables()
        specs = array_specs(dataset.version)
        self.fields = dataset.fields
        self.specs = {name: specs[name] for name in self.fields}
        self.table = pixel_table() if specs["pixel_values"].dtype == "uint8" else None
        self.files: dict[Path, tuple[np.memmap, int, np.ndarray]] = {}
        self.buffers: list[dict[str, np.ndarray]] = []  # one batch per thread, reused

        def locate(name: str, row: int) -> tuple[np.ndarray, int, int]:
            """The row's bytes in the memory map, the shard's descriptor and the offset."""
            spec, rows_per_shard = specs[name], dataset.layouts[name].rows_per_shard
            shard, local = divmod(row, rows_per_shard)
            path = store / shard_key(name, 1 + len(spec.row_shape), shard)
            if path not in self.files:
                mapped = np.memmap(path, dtype=np.uint8, mode="r")
                self.files[path] = (
                    mapped,
                    os.open(path, os.O_RDONLY),
                    read_index(path, rows_per_shard),
                )
            mapped, fd, index = self.files[path]
            offset, nbytes = (int(value) for value in index[local])
            return mapped[offset : offset + nbytes - CHECKSUM_BYTES], fd, offset

        self.plan = []
        for index in order:
            item = int(tables.selected[index])
            rows = {"frame": int(tables.frame_row[item]), "item": int(tables.mask_row[item])}
            self.plan.append(
                [locate(n, rows["item" if n in ITEM_ARRAYS else "frame"]) for n in self.fields]
            )

    def close(self) -> None:
        for _, fd, _ in self.files.values():
            os.close(fd)
        self.files.clear()

    def run(self, threads: int, pread: bool = False) -> None:
        shares = [self.plan[start::threads] for start in range(threads)]
        while len(self.buffers) < threads:
            self.buffers.append(self._batch())
        workers = [
            threading.Thread(target=self._copy, args=(share, self.buffers[number + 1], pread))
            for number, share in enumerate(shares[1:])
        ]
        for worker in workers:
            worker.start()
        self._copy(shares[0], self.buffers[0], pread)
        for worker in workers:
            worker.join()

    def _batch(self) -> dict[str, np.ndarray]:
        """A batch's tensors (page-aligned, as the loader's), numpy views."""
        return {
            name: page_aligned_empty((BATCH_SIZE, *spec.row_shape), OUTPUT_DTYPES[name]).numpy()
            for name, spec in self.specs.items()
        }

    def _copy(self, plan: list[list[Any]], batch: dict[str, np.ndarray], pread: bool) -> None:
        zstd = numcodecs.Zstd()
        mask = np.empty((1024, 1024), np.uint8)  # a decoded mask
        levels = page_aligned_empty((3, 448, 448), torch.uint8).numpy()
        chunk_buffer = page_aligned_empty((1 << 21,), torch.uint8).numpy()
        for step, rows in enumerate(plan):
            slot = step % BATCH_SIZE
            for name, (mapped, fd, offset) in zip(self.fields, rows, strict=True):
                out = batch[name][slot]
                through_table = name == "pixel_values" and self.table is not None
                if name == "masks" or through_table:
                    chunk = mapped
                    if pread:
                        chunk = (levels if through_table else chunk_buffer)[: mapped.size]
                        os.preadv(fd, [chunk.reshape(-1).data], offset)
                    if through_table:
                        normalize_into(chunk.reshape(out.shape), self.table, out)  # type: ignore[arg-type]
                    else:
                        zstd.decode(chunk, out=mask)
                        np.copyto(out, mask, casting="unsafe")
                elif pread:
                    os.preadv(fd, [out.reshape(-1).view(np.uint8).data], offset)
                else:
                    out.reshape(-1).view(np.uint8)[:] = mapped


def _loader_memory(store: Path) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_memory_run, (str(store),))


def _memory_run(store: str) -> dict[str, Any]:
    loader = PrebakedLoader(store, BATCH_SIZE)
    epochs: dict[str, list[float]] = {"vm_rss": [], "rss_anon_in_use": []}
    for epoch in range(MEMORY_EPOCHS):
        loader.set_epoch(epoch)
        for _ in loader:
            pass
        epochs["vm_rss"].append(round(_memory_status()["VmRSS"], 1))
        _release_free_heap()
        epochs["rss_anon_in_use"].append(round(_memory_status()["RssAnon"], 1))
    return {**epochs, "items_per_epoch": len(loader.dataset)}
