"""Schema v1 against v2, side by side in one run: both stores built here from the same source.

- size: bytes on disk per annotated frame of each store (and of a v2 Loop-1 store,
  `--fields pixel_values,prompt_masks`);
- reader: `PrebakedDataset` items/s on each store, all four fields and the Loop-1 fields, the
  same random item order, warm page cache, one process, rounds alternating between the stores
  (median kept), so that the ratios compare like with like on a machine whose load changes;
- pixel_values row: ms to fill a float32 (3, 448, 448) output from the memory-mapped row: v1's
  copy of 2.4 MB of floats against v2's lookup of 0.6 MB of levels in the normalization table,
  with `cv2.LUT` (the reader's) and with `np.take`, and v2's bare copy of the levels (the floor).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prebake.build import BuildOptions, build
from prebake.errors import StoreError
from prebake.reader import LOOP1_FIELDS, PrebakedDataset
from prebake.reader.rows import normalize_into
from prebake.store.layout import StoreDir
from prebake.store.schema import array_specs
from prebake.store.shard import CHECKSUM_BYTES, read_index, shard_key
from prebake.transforms import pixel_table

ROUNDS = 3
ROW_REPEATS = 200  # pixel_values rows filled per variant and round


def bench_schemas(src: Path, *, items: int, workers: int = 2) -> dict[str, Any]:
    """Build a v1, a v2 and a v2 Loop-1 store of `src`; their sizes and reader speeds."""
    with tempfile.TemporaryDirectory(prefix="prebake-bench-schemas-") as scratch:
        stores = {
            "v1": Path(scratch) / "v1.zarr",
            "v2": Path(scratch) / "v2.zarr",
            "v2_loop1": Path(scratch) / "v2-loop1.zarr",
        }
        for label, out in stores.items():
            build(
                BuildOptions(
                    src=src,
                    out=out,
                    workers=workers,
                    masklets="all",
                    progress=False,
                    schema_version=1 if label == "v1" else 2,
                    fields=LOOP1_FIELDS if label == "v2_loop1" else None,
                )
            )
        sizes = {label: _size(out) for label, out in stores.items()}
        reader = _reader_speeds(stores["v1"], stores["v2"], items)
        rows = _row_variants(stores["v1"], stores["v2"])
    return {"source": str(src), "sizes": sizes, "items_per_s": reader, "pixel_row_ms": rows}


def _size(store: Path) -> dict[str, Any]:
    from prebake.build.commit import store_bytes

    attrs = StoreDir(store).require_complete()
    frames, items = attrs["counts"]["frames"], attrs["counts"]["items"]
    total = store_bytes(store)
    return {
        "bytes": total,
        "frames": frames,
        "items": items,
        "bytes_per_frame": total / frames if frames else 0.0,
    }


def _reader_speeds(v1: Path, v2: Path, items: int) -> dict[str, float]:
    readers = {
        "v1_all": PrebakedDataset(v1),
        "v2_all": PrebakedDataset(v2),
        "v1_loop1": PrebakedDataset(v1, fields=LOOP1_FIELDS),
        "v2_loop1": PrebakedDataset(v2, fields=LOOP1_FIELDS),
    }
    count = len(readers["v1_all"])
    if count == 0 or count != len(readers["v2_all"]):
        raise StoreError(f"{v2}: the benchmark stores hold no items, or not the same items")
    order = [int(i) for i in np.random.default_rng(0).integers(0, count, size=items)]
    for dataset in readers.values():  # warm: page cache, maps, indexes, allocator
        for index in range(count):
            dataset[index]
    rates: dict[str, list[float]] = {label: [] for label in readers}
    for _ in range(ROUNDS):
        for label, dataset in readers.items():
            started = time.perf_counter()
            for index in order:
                dataset[index]
            rates[label].append(len(order) / (time.perf_counter() - started))
    return {label: statistics.median(values) for label, values in rates.items()}


def _first_row(store: Path, name: str, version: int) -> tuple[np.memmap, int, int]:
    """A memory map of the shard holding the first row of `name`, its offset and length."""
    spec = array_specs(version)[name]
    attrs = StoreDir(store).require_complete()
    per = int(attrs["params"]["frames_per_shard"])
    path = store / shard_key(name, 1 + len(spec.row_shape), 0)
    offset, nbytes = (int(value) for value in read_index(path, per)[0])
    return np.memmap(path, dtype=np.uint8, mode="r"), offset, nbytes - CHECKSUM_BYTES


def _row_variants(v1: Path, v2: Path) -> dict[str, float]:
    """ms per pixel_values row filled into a float32 output, by variant (median of rounds)."""
    out = np.empty((3, 448, 448), dtype=np.float32)
    table = pixel_table()
    map1, offset1, size1 = _first_row(v1, "pixel_values", 1)
    map2, offset2, size2 = _first_row(v2, "pixel_values", 2)
    levels = np.frombuffer(map2, np.uint8, size2, offset2).reshape(3, 448, 448)
    scratch = np.empty((3, 448, 448), dtype=np.uint8)

    def take() -> None:
        for channel in range(3):
            np.take(table[channel], levels[channel], out=out[channel])

    variants: dict[str, Callable[[], None]] = {
        "v1: copy float32": lambda: (
            out.reshape(-1).view(np.uint8).__setitem__(slice(None), map1[offset1 : offset1 + size1])
        ),
        "v2: cv2.LUT (the reader)": lambda: normalize_into(levels, table, out),
        "v2: np.take": take,
        "v2: copy uint8 only": lambda: scratch.reshape(-1).__setitem__(slice(None), levels.ravel()),
    }
    timings: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(ROUNDS):
        for label, run in variants.items():
            run()
            started = time.perf_counter()
            for _ in range(ROW_REPEATS):
                run()
            timings[label].append(1000 * (time.perf_counter() - started) / ROW_REPEATS)
    return {label: statistics.median(values) for label, values in timings.items()}


def format_schemas(results: dict[str, Any]) -> list[str]:
    sizes, speed, rows = results["sizes"], results["items_per_s"], results["pixel_row_ms"]
    lines = [
        f"store schemas: v1 and v2 built from {results['source']} in this run "
        f"({sizes['v1']['frames']} frames, {sizes['v1']['items']} items; one process, warm cache)",
        "  bytes per annotated frame: "
        + ", ".join(
            f"{label} {entry['bytes_per_frame'] / 1e6:.2f} MB" for label, entry in sizes.items()
        )
        + f" (v2 / v1 {sizes['v2']['bytes_per_frame'] / sizes['v1']['bytes_per_frame']:.2f})",
    ]
    for fields, v1_key, v2_key in (
        ("all four fields", "v1_all", "v2_all"),
        ("Loop-1 fields", "v1_loop1", "v2_loop1"),
    ):
        lines.append(
            f"  PrebakedDataset, {fields:16s} v1 {speed[v1_key]:8.1f} items/s, "
            f"v2 {speed[v2_key]:8.1f} items/s (v2 / v1 {speed[v2_key] / speed[v1_key]:.2f})"
        )
    lines.append("  pixel_values row into a float32 output:")
    lines.extend(f"    {label:28s} {ms:7.3f} ms" for label, ms in rows.items())
    return lines
