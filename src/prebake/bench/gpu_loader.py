"""`prebake bench STORE --gpu-loader`: `PrebakedLoader(device="cuda")` on a CUDA machine.

- items/s delivered to the GPU, all four fields and Loop 1's: the loader (uint8 across PCIe,
  table lookup and mask cast on the device) against `DataLoader(PrebakedDataset, batch_size=8,
  num_workers=8, pin_memory=True, persistent_workers=True)` whose batches are moved with
  `.to(device, non_blocking=True)`; each pass ends with `torch.cuda.synchronize()`; rounds
  alternate (median kept);
- bit-equality on the device: every batch of one epoch (all fields, Loop 1, clips of 2) from
  the CUDA loader against the CPU loader's batch moved to the GPU, `torch.equal` there: a
  target (PASS/FAIL); the speeds are measurements.

Meant to take well under 5 minutes on the demo store (`scripts/gpu_loader_check.sh`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from prebake.errors import PrebakeError
from prebake.reader import LOOP1_FIELDS, PrebakedDataset, PrebakedLoader

BATCH_SIZE = 8
WORKERS = 8
ROUNDS = 3
EPOCHS = 3  # per measurement


def bench_gpu_loader(store: Path) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise PrebakeError("--gpu-loader needs a CUDA device and a CUDA build of torch")
    device = torch.device("cuda", torch.cuda.current_device())
    speeds = {
        label: _speeds(store, fields, device)
        for label, fields in (("all", None), ("loop1", LOOP1_FIELDS))
    }
    mismatches = {
        label: _mismatches(store, device, **options)
        for label, options in (
            ("all fields", {}),
            ("Loop-1 fields", {"fields": LOOP1_FIELDS}),
            ("clips of 2", {"clip_len": 2}),
        )
    }
    identical = all(count == 0 for count in mismatches.values())
    return {
        "store": str(store),
        "device": torch.cuda.get_device_name(device),
        "items_per_s": speeds,
        "mismatched_batches": mismatches,
        "verdicts": [
            {
                "target": "CUDA batches == CPU batches",
                "value": float(sum(mismatches.values())),
                "sense": "<=",
                "limit": 0.0,
                "unit": "batches",
                "passed": identical,
            }
        ],
    }


def format_gpu_loader(results: dict[str, Any]) -> list[str]:
    speed = results["items_per_s"]
    lines = [
        f"loader to the GPU: {results['store']} on {results['device']} "
        f"(batches of {BATCH_SIZE}, items/s, synchronized)",
        f"  {'':44s} {'all four fields':>16s} {'Loop-1 fields':>14s}",
    ]
    for label, key in (
        ("PrebakedLoader(device='cuda')", "loader"),
        (f"DataLoader(num_workers={WORKERS}, pin_memory=True)", "dataloader"),
    ):
        lines.append(f"  {label:44s} {speed['all'][key]:16.1f} {speed['loop1'][key]:14.1f}")
    ratio = {k: speed[k]["loader"] / speed[k]["dataloader"] for k in speed}
    lines.append(f"  {'loader / DataLoader':44s} {ratio['all']:15.2f}x {ratio['loop1']:13.2f}x")
    for label, count in results["mismatched_batches"].items():
        lines.append(f"  batches differing from the CPU path, {label}: {count}")
    lines.append("targets:")
    for verdict in results["verdicts"]:
        lines.append(f"  {'PASS' if verdict['passed'] else 'FAIL'}  {verdict['target']}")
    return lines


def _speeds(store: Path, fields: tuple[str, ...] | None, device: torch.device) -> dict[str, float]:
    from torch.utils.data import DataLoader

    loader = PrebakedLoader(store, BATCH_SIZE, fields=fields, device=device)
    reference = DataLoader(
        PrebakedDataset(store, fields=fields),
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=WORKERS,
        pin_memory=True,
        persistent_workers=True,
    )
    items = EPOCHS * len(loader.dataset)

    def run_loader() -> None:
        for _ in range(EPOCHS):
            for _ in loader:
                pass
        torch.cuda.synchronize(device)

    def run_dataloader() -> None:
        for _ in range(EPOCHS):
            for batch in reference:
                for value in batch.values():
                    if isinstance(value, torch.Tensor):
                        value.to(device, non_blocking=True)
        torch.cuda.synchronize(device)

    run_loader()
    run_dataloader()
    rates: dict[str, list[float]] = {"loader": [], "dataloader": []}
    for _ in range(ROUNDS):
        for key, run in (("loader", run_loader), ("dataloader", run_dataloader)):
            started = time.perf_counter()
            run()
            rates[key].append(items / (time.perf_counter() - started))
    return {key: statistics.median(values) for key, values in rates.items()}


def _mismatches(store: Path, device: torch.device, **options: Any) -> int:
    cpu = PrebakedLoader(store, BATCH_SIZE, seed=1, **options)
    cuda = PrebakedLoader(store, BATCH_SIZE, seed=1, device=device, **options)
    differing = 0
    for on_device, on_cpu in zip(cuda, cpu, strict=True):
        same = list(on_device) == list(on_cpu)
        for key, value in on_cpu.items():
            if isinstance(value, torch.Tensor):
                other = on_device[key]
                same = same and other.dtype == value.dtype and torch.equal(other, value.to(device))
            else:
                same = same and on_device[key] == value
        differing += not same
    return differing
