"""PrebakedLoader's batches against DataLoader(PrebakedDataset, batch_size) with the default
collate (bit for bit), the device path's conversions, buffer lifetime, clean shutdown and a
shard damaged while it is read."""

from __future__ import annotations

import gc
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

import prebake.reader.loader as loader_module
from prebake import PrebakedDataset, PrebakedLoader, PrebakedSampler
from prebake.reader import LOOP1_FIELDS
from prebake.reader.buffers import BatchBuffers, host_dtypes, pixel_table_tensor, served
from prebake.store.schema import array_specs


def assert_same_batch(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert list(left) == list(right)
    for key, value in left.items():
        if isinstance(value, torch.Tensor):
            other = right[key]
            assert value.dtype == other.dtype and value.shape == other.shape, key
            assert value.cpu().numpy().tobytes() == other.cpu().numpy().tobytes(), key
        else:
            assert value == right[key], key


def assert_same_batches(loader: PrebakedLoader, reference: DataLoader) -> None:
    count = 0
    for ours, theirs in zip(loader, reference, strict=True):
        assert_same_batch(ours, theirs)
        count += 1
    assert count == len(loader) == len(reference)


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("prebake-loader")]


# -- batches ----------------------------------------------------------------------------------------

CASES = {
    "all fields": ({}, 8),
    "Loop-1 fields": ({"fields": LOOP1_FIELDS}, 5),
    "clips": ({"clip_len": 3}, 4),
    "filters": ({"masklet_types": ("manual",), "min_prompt_cells": 4}, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batches_are_the_dataloaders(train_store: Path, case: str) -> None:
    options, batch_size = CASES[case]
    dataset = PrebakedDataset(train_store, **options)
    reference = DataLoader(dataset, batch_size=batch_size)
    loader = PrebakedLoader(train_store, batch_size, shuffle=False, **options)
    assert_same_batches(loader, reference)


def test_items_metadata_is_the_default_collate_of_the_items(train_store: Path) -> None:
    """What the loader hands out for a pass's metadata in one gather is what collating the
    items one by one gives (any order, repeats, negative indices), and it checks its input."""
    dataset = PrebakedDataset(train_store, fields=("prompt_masks",))
    indices = [5, 0, len(dataset) - 1, 5, -2, 17]
    expected = default_collate(
        [{k: v for k, v in dataset[i].items() if k != "prompt_masks"} for i in indices]
    )
    assert_same_batch(dataset.items_metadata(indices), expected)
    assert_same_batch(
        dataset.items_metadata([]),
        {
            "video_id": [],
            "frame_index": torch.zeros(0, dtype=torch.int64),
            "masklet_id": torch.zeros(0, dtype=torch.int64),
            "masklet_type": [],
        },
    )
    with pytest.raises(IndexError, match="out of range"):
        dataset.items_metadata([0, len(dataset)])
    with pytest.raises(ValueError, match="not clips"):
        PrebakedDataset(train_store, clip_len=2).items_metadata([0])


def test_metadata_blocks_end_where_batches_end(
    train_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader gathers item metadata a block of batches at a time: with blocks of 3 batches
    of 5 (the last batch short), shuffled, every batch is still the DataLoader's."""
    monkeypatch.setattr(loader_module._ItemsMetadata, "BLOCK", 3)
    dataset = PrebakedDataset(train_store, fields=LOOP1_FIELDS)
    order = list(PrebakedSampler(dataset, seed=3))
    reference = DataLoader(dataset, batch_size=5, sampler=order)
    assert len(reference) > 2 * 3 and len(dataset) % 5
    assert_same_batches(PrebakedLoader(train_store, 5, fields=LOOP1_FIELDS, seed=3), reference)


@pytest.mark.parametrize("store_name", ["v1_store", "loop1_store"])
def test_batches_of_v1_and_partial_stores(store_name: str, request: pytest.FixtureRequest) -> None:
    store = request.getfixturevalue(store_name)
    reference = DataLoader(PrebakedDataset(store), batch_size=6)
    assert_same_batches(PrebakedLoader(store, 6, shuffle=False), reference)


def test_shuffled_dropped_and_threads(train_store: Path) -> None:
    """Shuffled order with drop_last, one thread or three, no prefetch: the same batches."""
    dataset = PrebakedDataset(train_store)
    generator = torch.Generator().manual_seed(4 + 1)  # DistributedSampler's seed + epoch
    order = torch.randperm(len(dataset), generator=generator).tolist()
    reference = DataLoader(dataset, batch_size=7, sampler=order, drop_last=True)
    expected = [
        {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        for b in reference
    ]
    for threads, prefetch in ((1, 0), (3, 3)):
        loader = PrebakedLoader(
            train_store, 7, seed=4, drop_last=True, num_threads=threads, prefetch=prefetch
        )
        loader.set_epoch(1)
        count = 0
        for ours, theirs in zip(loader, expected, strict=True):
            assert_same_batch(ours, theirs)  # before the next: the buffers are reused
            count += 1
        assert count == len(loader) == len(dataset) // 7


def test_a_batch_stays_valid_until_the_one_after_next(train_store: Path) -> None:
    loader = PrebakedLoader(train_store, 4, fields=LOOP1_FIELDS, shuffle=False, prefetch=2)
    held: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for batch in loader:
        copy = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        held = [*held[-1:], (batch, copy)]
        time.sleep(0.05)  # the threads fill every batch they may fill ahead
        for kept, kept_copy in held:  # this batch and the one before it
            assert_same_batch(kept, kept_copy)


def test_buffers_are_reused_across_epochs(train_store: Path) -> None:
    loader = PrebakedLoader(train_store, 8, fields=["g_pixel_values"], prefetch=1)
    pointers = [{b["g_pixel_values"].data_ptr() for b in loader} for _ in range(3)]
    assert loader._ring is not None and len(loader._ring) == 3
    ring = {buffers.tensors["g_pixel_values"].data_ptr() for buffers in loader._ring}
    assert pointers[0] | pointers[1] | pointers[2] <= ring


# -- the device path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("store_name", ["train_store", "v1_store"])
@pytest.mark.parametrize("clip_len", [None, 2])
def test_device_conversions_on_the_cpu(
    store_name: str, clip_len: int | None, request: pytest.FixtureRequest
) -> None:
    """What crosses to a CUDA device (uint8 levels and masks) and its conversion there, run on
    the CPU: the dataset's items, bit for bit."""
    dataset = PrebakedDataset(request.getfixturevalue(store_name), clip_len=clip_len)
    dtypes = host_dtypes(dataset, torch.device("cuda"))
    assert dtypes["masks"] == torch.uint8
    stored_levels = array_specs(dataset.version)["pixel_values"].dtype == "uint8"
    assert dtypes["pixel_values"] == (torch.uint8 if stored_levels else torch.float32)
    lead = () if clip_len is None else (clip_len,)
    specs = array_specs(dataset.version)
    shapes = {name: (*lead, *specs[name].row_shape) for name in dataset.fields}
    count = min(len(dataset), 6)
    buffers = BatchBuffers(shapes, dtypes, count, pin=False)
    for slot in range(count):
        dataset.read_into(slot, buffers.slot(slot))
    table = pixel_table_tensor(torch.device("cpu"))
    for name, tensor in buffers.tensors.items():
        expected = torch.stack([dataset[i][name] for i in range(count)])
        got = served(name, tensor, table)
        assert got.dtype == expected.dtype and torch.equal(got, expected), name
        assert got.numpy().tobytes() == expected.numpy().tobytes(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("options", [{}, {"clip_len": 2}, {"fields": LOOP1_FIELDS}])
def test_cuda_batches_equal_the_cpu_batches(train_store: Path, options: dict[str, Any]) -> None:
    cpu = PrebakedLoader(train_store, 5, seed=3, **options)
    cuda = PrebakedLoader(train_store, 5, seed=3, device="cuda", **options)
    for ours, theirs in zip(cuda, cpu, strict=True):
        assert all(v.is_cuda for v in ours.values() if isinstance(v, torch.Tensor) and v.dim() > 1)
        assert_same_batch(ours, theirs)


def test_device_arguments(train_store: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            PrebakedLoader(train_store, 4, device="cuda")
        with pytest.warns(UserWarning, match="not pinning"):
            assert not PrebakedLoader(train_store, 4, pin_memory=True).pin_memory
    with pytest.raises(ValueError, match="cpu or cuda"):
        PrebakedLoader(train_store, 4, device="meta")
    for bad in (
        {"batch_size": 0},
        {"batch_size": 2, "prefetch": -1},
        {"batch_size": 2, "num_threads": 0},
    ):
        with pytest.raises(ValueError):
            PrebakedLoader(train_store, **bad)  # type: ignore[arg-type]


# -- shutdown ---------------------------------------------------------------------------------------


def test_threads_stop_on_break_exception_gc_and_a_new_iteration(train_store: Path) -> None:
    loader = PrebakedLoader(train_store, 2, fields=LOOP1_FIELDS, num_threads=3)
    for _ in loader:
        assert loader_threads()
        break
    assert not loader_threads()

    with pytest.raises(RuntimeError, match="in the loop"):
        for _ in loader:
            raise RuntimeError("in the loop")
    assert not loader_threads()

    iterator = iter(loader)
    next(iterator)
    del iterator
    gc.collect()
    assert not loader_threads()

    first = iter(loader)
    next(first)
    second = iter(loader)  # a new iteration ends the one before
    assert not loader_threads()
    next(second)
    with pytest.raises(StopIteration):
        next(first)
    del second
    assert not loader_threads()

    for _ in range(2):  # complete epochs: the threads wait for the next, then stop with the loader
        assert sum(len(batch["video_id"]) for batch in loader) > 0
        assert len(loader_threads()) == 3
    loader.close()
    assert not loader_threads()
    list(loader)
    del loader
    gc.collect()
    assert not loader_threads()


def run_child(script: str, *args: str, timeout: float = 60) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_and_interpreter_exit(train_store: Path) -> None:
    script = """
        import sys, threading, time
        from prebake import PrebakedLoader
        loader = PrebakedLoader(sys.argv[1], 4, num_threads=2)
        if sys.argv[2] == "exit":
            iterator = iter(loader)
            next(iterator)
            print("leaving with an unfinished iteration", flush=True)
            sys.exit(0)
        try:
            for epoch in range(10**6):
                for batch in loader:
                    print("reading", flush=True)
                    time.sleep(0.01)
        except KeyboardInterrupt:
            alive = [t.name for t in threading.enumerate() if t.name.startswith("prebake-loader")]
            print("interrupted; loader threads alive:", len(alive), flush=True)
    """
    child = run_child(script, str(train_store), "interrupt")
    assert child.stdout is not None
    deadline = time.monotonic() + 60
    while child.stdout.readline().strip() != "reading":
        assert time.monotonic() < deadline and child.poll() is None, child.stderr
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert "interrupted; loader threads alive: 0" in out

    child = run_child(script, str(train_store), "exit")
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0 and "leaving" in out, err


# -- a shard damaged while it is read ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "replace"])
def test_shard_damaged_while_read(train_store: Path, tmp_path: Path, damage: str) -> None:
    """Truncated in place: a one-line StoreError naming the file, for the loader and the dataset,
    never SIGBUS (run in a child: a crash would be its exit status). Replaced (renamed over):
    files already open keep serving their old bytes; others fail with a StoreError."""
    store = tmp_path / "store.zarr"
    shutil.copytree(train_store, store)
    script = """
        import os, sys
        from pathlib import Path
        from prebake import PrebakedDataset, PrebakedLoader
        from prebake.errors import StoreError
        store, damage = Path(sys.argv[1]), sys.argv[2]
        def spoil():
            for shard in sorted((store / "g_pixel_values" / "c").rglob("*")):
                if shard.is_file():
                    size = shard.stat().st_size
                    if damage == "truncate":
                        os.truncate(shard, size // 2)
                    else:
                        spare = shard.with_name("spare")
                        spare.write_bytes(shard.read_bytes()[: size // 3])
                        os.replace(spare, shard)
        loader = PrebakedLoader(store, 2, shuffle=False, prefetch=1, num_threads=1)
        dataset = PrebakedDataset(store)
        dataset[len(dataset) - 1]
        batches = iter(loader)
        next(batches)
        spoil()
        try:
            for batch in batches:
                pass
            print("loader: finished")
        except StoreError as error:
            print("loader:", error)
        try:
            dataset[len(dataset) - 1]
            dataset[0]
            print("dataset: read")
        except StoreError as error:
            print("dataset:", error)
    """
    child = run_child(script, str(store), damage)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, (child.returncode, err)  # -7 would be SIGBUS
    lines = out.splitlines()
    assert len(lines) == 2, out
    for line in lines:
        assert "g_pixel_values/c/" in line and "\n" not in line.strip(), line
    if damage == "truncate":
        assert "truncated" in lines[0] or "shorter" in lines[0], lines[0]
