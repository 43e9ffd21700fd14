"""Reader benchmark: `PrebakedDataset` against the memmap floor, zarr-python and on-the-fly.

Every rate is measured in this one run on the same random item order, warm page cache, one
process, and the fast measurements alternate over several rounds (median kept), so the ratios
compare like with like on a machine whose load changes.

- floor: what an ideal reader of this store cannot avoid: with every shard opened as an
  `np.memmap` and every offset looked up beforehand, copy the image and prompt bytes into fresh
  torch tensors, zstd-decode the mask and cast it to a float32 tensor with numpy;
- zarr-python: `arr[row]` for each of the four arrays, turned into the same tensors;
- on the fly (with `src`): what the seed's dataset did per item: decode the video up to the
  frame (PyAV), both Pillow resizes and the normalization, the RLE decode and both mask
  transforms (videos' JSON parsed once, outside the timing);
- worker RSS: one persistent DataLoader worker reads three epochs; VmRSS is read from
  /proc/self/status inside the worker at the end of each epoch, as glibc leaves it and after
  `malloc_trim(0)`: glibc keeps freed heap for reuse (the reader asks it to), and how much it
  keeps drifts with fragmentation for a few hundred items before it settles, and the mapped
  shards' pages are page cache; anonymous memory in use is what a leak would grow.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import torch
import zarr

from prebake.bench.targets import READER_TARGETS, format_verdict
from prebake.errors import PrebakeError, StoreError
from prebake.reader import LOOP1_FIELDS, PrebakedDataset
from prebake.reader.rows import normalize_into
from prebake.store.schema import DATA_ARRAYS, array_specs
from prebake.store.shard import CHECKSUM_BYTES, read_index, shard_key
from prebake.transforms import pixel_table

ROUNDS = 3  # alternating rounds of the fast measurements; the median is kept
ZARR_ITEMS = 40  # zarr-python is slow: fewer items keep the run short (rates are per item)
ON_THE_FLY_ITEMS = 12
RSS_EPOCHS = 3
RSS_EPOCH_ITEMS = 400  # at least: the allocator's free lists settle within the first epoch
RSS_MAX_OPEN_SHARDS = 4  # fewer than the demo store's shards, so the LRU closes files as it reads
ALLOCATOR_ITEMS = 300


def bench_reader(store: Path, *, src: Path | None, items: int) -> dict[str, Any]:
    """Items/s of the reader and its references, their ratios and the worker RSS check."""
    dataset = PrebakedDataset(store)
    if len(dataset) == 0:
        raise StoreError(f"{store}: the store holds no items to read")
    loop1 = PrebakedDataset(store, fields=LOOP1_FIELDS)
    order = [int(i) for i in np.random.default_rng(0).integers(0, len(dataset), size=items)]
    floor = _MemmapFloor(store, dataset, order)
    zarr_reader = _ZarrReader(store, dataset)

    def read_all() -> None:
        for index in order:
            dataset[index]

    def read_loop1() -> None:
        for index in order:
            loop1[index]

    # Warm up: page cache, memory maps, shard indexes, allocator, for every path.
    for index in range(len(dataset)):
        dataset[index]
        loop1[index]
    floor.run()
    rates: dict[str, list[float]] = {"all_fields": [], "loop1_fields": [], "memmap_floor": []}
    for _ in range(ROUNDS):
        for key, run in (
            ("all_fields", read_all),
            ("memmap_floor", floor.run),
            ("loop1_fields", read_loop1),
        ):
            rates[key].append(_rate(run, len(order)))
    results: dict[str, Any] = {
        "store": str(store),
        "store_items": len(dataset),
        "reads": len(order),
        "read_paths": dataset.read_paths,
        "items_per_s": {key: statistics.median(values) for key, values in rates.items()},
    }
    zarr_order = order[:ZARR_ITEMS]
    zarr_reader.read(zarr_order[:2])  # opens the arrays
    results["items_per_s"]["zarr_python"] = _rate(
        lambda: zarr_reader.read(zarr_order), len(zarr_order)
    )
    if src is not None:
        fly_order = order[:ON_THE_FLY_ITEMS]
        on_the_fly = _OnTheFly(src, dataset, fly_order)
        results["items_per_s"]["on_the_fly"] = _rate(on_the_fly.run, len(fly_order))
    speed = results["items_per_s"]
    ratios = {
        "all_vs_floor": speed["all_fields"] / speed["memmap_floor"],
        "all_vs_zarr": speed["all_fields"] / speed["zarr_python"],
        "loop1_vs_all": speed["loop1_fields"] / speed["all_fields"],
    }
    if "on_the_fly" in speed:
        ratios["all_vs_on_the_fly"] = speed["all_fields"] / speed["on_the_fly"]
    results["ratios"] = ratios
    results["verdicts"] = [t.check(ratios[t.key]) for t in READER_TARGETS if t.key in ratios]
    results["worker_rss"] = _worker_rss(store, epoch_items=max(len(dataset), RSS_EPOCH_ITEMS))
    results["allocator"] = _allocator_effect(store)
    return results


def memory_lines(memory: dict[str, Any], rows: tuple[tuple[str, str], ...]) -> list[str]:
    """One line per (label, key) of `rows`: the MB at the end of each epoch in `memory[key]`."""
    return [
        f"    {label:36s} " + ", ".join(f"{mb:.1f}" for mb in memory[key]) + " MB"
        for label, key in rows
    ]


def format_reader(results: dict[str, Any]) -> list[str]:
    speed, ratios = results["items_per_s"], results["ratios"]
    paths = ", ".join(f"{name} {path}" for name, path in results["read_paths"].items())
    lines = [
        f"reader: {results['store']} ({results['store_items']} items; "
        f"{results['reads']} random reads per measurement, warm cache, one process)",
        f"  read paths: {paths}",
        f"  {'PrebakedDataset, all four fields':38s} {speed['all_fields']:9.1f} items/s",
        f"  {'PrebakedDataset, Loop-1 fields':38s} {speed['loop1_fields']:9.1f} items/s",
        f"  {'memmap floor, all four fields':38s} {speed['memmap_floor']:9.1f} items/s",
        f"  {'zarr-python arr[i], all four fields':38s} {speed['zarr_python']:9.1f} items/s",
    ]
    if "on_the_fly" in speed:
        lines.append(
            f"  {'on the fly (decode, resize, RLE)':38s} {speed['on_the_fly']:9.1f} items/s"
        )
    rss = results["worker_rss"]
    lines.append(
        f"  DataLoader worker memory at the end of epochs 1..{RSS_EPOCHS} "
        f"({rss['items_per_epoch']} items each, spawn, max_open_shards={rss['max_open_shards']}):"
    )
    lines += memory_lines(
        rss,
        (
            ("VmRSS", "vm_rss"),
            ("VmRSS in use (after malloc_trim)", "vm_rss_in_use"),
            ("RssAnon", "rss_anon"),
            ("RssAnon in use (after malloc_trim)", "rss_anon_in_use"),
        ),
    )
    lines.append("  allocator, fresh process, random items held 8 at a time:")
    for label, values in results["allocator"].items():
        lines.append(
            f"    {label:44s} {values['items_per_s']:7.1f} items/s, "
            f"{values['faults_per_item']:6.0f} page faults per item"
        )
    # Page cache (the shards' mapped pages) comes and goes; anonymous memory in use is what a
    # leak would grow. A measurement, not a target: glibc's free lists drift by a few MB.
    first, last = rss["rss_anon_in_use"][0], rss["rss_anon_in_use"][-1]
    lines.append(
        f"    RssAnon in use, epoch {RSS_EPOCHS} - epoch 1: {last - first:+.1f} MB "
        "(page cache and free heap kept for reuse are not leaks)"
    )
    lines.append("targets:")
    lines.extend(format_verdict(verdict) for verdict in results["verdicts"])
    lines.extend(
        f"  skip  {t.label:28s} (needs --src)" for t in READER_TARGETS if t.key not in ratios
    )
    return lines


def _rate(run: Callable[[], None], count: int) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


class _MemmapFloor:
    """Copy each item's bytes out of `np.memmap`s with every lookup done beforehand."""

    def __init__(self, store: Path, dataset: PrebakedDataset, order: list[int]) -> None:
        tables = dataset._ensure_tables()
        specs = array_specs(dataset.version)
        # A v2 store holds pixel_values as uint8 levels: served through the normalization table.
        self.table = pixel_table() if specs["pixel_values"].dtype == "uint8" else None
        maps: dict[Path, np.memmap] = {}
        indexes: dict[Path, np.ndarray] = {}

        def locate(name: str, row: int) -> np.ndarray:
            spec, rows_per_shard = specs[name], dataset.layouts[name].rows_per_shard
            shard, local = divmod(row, rows_per_shard)
            path = store / shard_key(name, 1 + len(spec.row_shape), shard)
            if path not in maps:
                maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
                indexes[path] = read_index(path, rows_per_shard)
            offset, nbytes = (int(value) for value in indexes[path][local])
            return maps[path][
                offset : offset + nbytes - CHECKSUM_BYTES
            ]  # a view: no bytes read yet

        self.plan = []
        for index in order:
            item = int(tables.selected[index])
            rows = {
                "frame_rows": int(tables.frame_row[item]),
                "item_rows": int(tables.mask_row[item]),
            }
            self.plan.append([locate(name, rows[specs[name].rows]) for name in DATA_ARRAYS])
        self.zstd = numcodecs.Zstd()
        self.scratch = np.empty(specs["masks"].row_shape, dtype=np.uint8)

    def run(self) -> None:
        for pixel_bytes, g_bytes, prompt_bytes, mask_frame in self.plan:
            pixel_values = torch.empty((3, 448, 448), dtype=torch.float32)
            if self.table is None:
                pixel_values.numpy().reshape(-1).view(np.uint8)[:] = pixel_bytes
            else:
                normalize_into(pixel_bytes.reshape(3, 448, 448), self.table, pixel_values.numpy())
            g_pixel_values = torch.empty((3, 1024, 1024), dtype=torch.uint8)
            g_pixel_values.numpy().reshape(-1)[:] = g_bytes
            prompt_masks = torch.empty((16, 16), dtype=torch.bool)
            prompt_masks.numpy().reshape(-1).view(np.uint8)[:] = prompt_bytes
            masks = torch.empty((1024, 1024), dtype=torch.float32)
            self.zstd.decode(mask_frame, out=self.scratch)
            np.copyto(masks.numpy(), self.scratch, casting="unsafe")
            # Free the item before the next, as a reader call whose result is dropped: keeping
            # two items alive across the loop changes the allocator's pattern and slows it down.
            del pixel_values, g_pixel_values, prompt_masks, masks


class _ZarrReader:
    """The same items through zarr-python's `arr[row]`, turned into the same tensors."""

    def __init__(self, store: Path, dataset: PrebakedDataset) -> None:
        root = zarr.open_group(store, mode="r", zarr_format=3)
        self.arrays = {name: root[name] for name in DATA_ARRAYS}
        self.tables = dataset._ensure_tables()

    def read(self, order: list[int]) -> None:
        tables = self.tables
        for index in order:
            item = int(tables.selected[index])
            rows = {
                "frame_rows": int(tables.frame_row[item]),
                "item_rows": int(tables.mask_row[item]),
            }
            sample = {}
            for name, array in self.arrays.items():
                values = np.asarray(array[rows[array_specs()[name].rows]])  # type: ignore[index]
                if name == "masks":
                    values = values.astype(np.float32)
                sample[name] = torch.from_numpy(values)


class _OnTheFly:
    """The seed's per-item pipeline, from the source videos and their JSON."""

    def __init__(self, src: Path, dataset: PrebakedDataset, order: list[int]) -> None:
        from prebake.sources import discover, open_video

        refs = {ref.video_id: ref for ref in discover(src, masklets="all")}
        tables = dataset._ensure_tables()
        self.videos: dict[str, Any] = {}
        self.plan = []
        for index in order:
            item = int(tables.selected[index])
            video_id = tables.video_ids[int(tables.video[item])]
            if video_id not in self.videos:
                if video_id not in refs:
                    raise PrebakeError(
                        f"{src}: video {video_id} of the store is not in this source"
                    )
                self.videos[video_id] = open_video(refs[video_id])
            video = self.videos[video_id]
            kind = dataset.type_names[int(tables.masklet_type[item])]
            k = [(m.type, m.id) for m in video.masklets].index((kind, int(tables.masklet_id[item])))
            self.plan.append((video, int(tables.t[item]), k))

    def run(self) -> None:
        from prebake import transforms

        for video, t, k in self.plan:
            frame = next(image for frame_t, image in video.iter_frames() if frame_t == t)
            pixel_values = torch.from_numpy(transforms.pixel_values(frame))
            g_pixel_values = torch.from_numpy(transforms.g_pixel_values(frame))
            mask = video.mask(t, k)
            prompt_masks = torch.from_numpy(transforms.prompt_masks(mask))
            masks = torch.from_numpy(transforms.masks(mask).astype(np.float32))
            del pixel_values, g_pixel_values, prompt_masks, masks


def _memory_status() -> dict[str, float]:
    """VmRSS and RssAnon of this process, in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "RssAnon:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values


def _release_free_heap() -> bool:
    """glibc's malloc_trim(0): give back free heap pages, so RSS counts memory in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


class _EpochEndSampler(torch.utils.data.Sampler[tuple[int, bool]]):
    """Random indices (with a fresh order each epoch), the last one flagged as the epoch's end."""

    def __init__(self, length: int, items: int) -> None:
        self.length = length
        self.items = items
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return self.items

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        order = torch.randint(self.length, (self.items,), generator=self.generator).tolist()
        return ((index, step == self.items - 1) for step, index in enumerate(order))


class _RssProbe(torch.utils.data.Dataset[dict[str, Any]]):
    """Wraps the reader; an epoch's last item also carries the worker's memory, in MB: as the
    allocator leaves it, then after `malloc_trim(0)` (memory in use, free heap not counted)."""

    def __init__(self, dataset: PrebakedDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]) -> dict[str, Any]:
        index, epoch_end = key
        sample = self.dataset[index]
        memory = dict.fromkeys(("vm_rss", "rss_anon", "vm_rss_in_use", "rss_anon_in_use"), 0.0)
        if epoch_end:
            status = _memory_status()
            memory["vm_rss"], memory["rss_anon"] = status["VmRSS"], status["RssAnon"]
            if _release_free_heap():
                status = _memory_status()
            memory["vm_rss_in_use"], memory["rss_anon_in_use"] = status["VmRSS"], status["RssAnon"]
        return {**memory, **sample}


def _worker_rss(store: Path, epoch_items: int) -> dict[str, Any]:
    """Memory of one persistent DataLoader worker at the end of each of three epochs."""
    from torch.utils.data import DataLoader

    probe = _RssProbe(PrebakedDataset(store, max_open_shards=RSS_MAX_OPEN_SHARDS))
    loader = DataLoader(
        probe,
        batch_size=8,
        sampler=_EpochEndSampler(len(probe), epoch_items),
        num_workers=1,
        persistent_workers=True,
        # spawn: a fresh worker, so its RSS is the reader's, not the bench process's history
        multiprocessing_context=multiprocessing.get_context("spawn"),
    )
    epochs: dict[str, list[float]] = {}
    for _ in range(RSS_EPOCHS):
        last = None
        for batch in loader:
            last = batch
        assert last is not None
        for key in ("vm_rss", "rss_anon", "vm_rss_in_use", "rss_anon_in_use"):
            epochs.setdefault(key, []).append(round(float(last[key][-1]), 1))
    del loader
    return {**epochs, "items_per_epoch": epoch_items, "max_open_shards": RSS_MAX_OPEN_SHARDS}


ALLOCATOR_VARIANTS = {
    "glibc defaults": (False, False),
    "mallopt thresholds (the reader's default)": (True, False),
    "mallopt + THP_MEM_ALLOC_ENABLE=1": (True, True),
}


def _allocator_effect(store: Path) -> dict[str, dict[str, float]]:
    """Items/s and page faults per item in fresh processes, with and without allocator tuning.

    Each variant runs in its own spawned process (allocator settings are per process and
    cannot be undone), reading random items eight at a time as a DataLoader worker does.
    """
    context = multiprocessing.get_context("spawn")
    results = {}
    for label, (tune, huge_pages) in ALLOCATOR_VARIANTS.items():
        previous = os.environ.get("THP_MEM_ALLOC_ENABLE")
        if huge_pages:
            os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # read by torch at import, in the child
        try:
            with context.Pool(1) as pool:
                results[label] = pool.apply(_allocator_run, (str(store), tune))
        finally:
            if previous is None:
                os.environ.pop("THP_MEM_ALLOC_ENABLE", None)
            else:
                os.environ["THP_MEM_ALLOC_ENABLE"] = previous
    return results


def _allocator_run(store: str, tune: bool) -> dict[str, float]:
    dataset = PrebakedDataset(store, tune_allocator=tune)
    order = np.random.default_rng(1).integers(0, len(dataset), size=ALLOCATOR_ITEMS)
    for index in range(len(dataset)):  # warm: page cache, maps, indexes
        dataset[index]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    held = []
    for index in order:
        held.append(dataset[int(index)])
        if len(held) == 8:  # a batch's items live together until collated
            held = []
    seconds = time.perf_counter() - started
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"items_per_s": len(order) / seconds, "faults_per_item": faults / len(order)}
