"""A seeded fuzz of damaged stores (issue 15): one small built store, each of its metadata files
mutated (keys removed, values of the wrong type, numbers out of range, the file not JSON, empty
or gone) and its shard and table bytes damaged (index, chunk, truncation, a file gone), one
mutation at a time, in place, restored after each. For every mutation:

- `PrebakedDataset` (opened, every item read: items on the fast path, clips through the
  zarr-python fallback) raises nothing but StoreError;
- `verify_store` returns a report or raises StoreError; its report is never OK when the
  metadata breaks the JSON Schema or when zarr-python cannot open and read the store as built;
  a store it passes, the reader reads;
- `store_info` + `format_info` describe the store or raise StoreError, and say in one line that
  the metadata does not match the schema whenever it does not.

A mutation that leaves the store whole (verify OK, zarr-python reads every node as built) may
pass: the test counts them and `pytest -s` prints the tally.
"""

from __future__ import annotations

import json
import random
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
import zarr
from helpers.stores import build_store

from prebake import PrebakedDataset
from prebake.demo import SampleObject, SampleVideo, write_sample
from prebake.errors import StoreError
from prebake.info import format_info, store_info
from prebake.store.metadata import metadata_problems
from prebake.verify import verify_store

SEED = 15
WRONG_TYPES: tuple[Any, ...] = (None, True, -1, 2.5, "x", [], {})
OUT_OF_RANGE = (-1, -(2**63) - 1, 2**64, 10**30, 0)
METADATA_LINE = "metadata does not match the schema"


@dataclass(frozen=True)
class Mutation:
    kind: str  # "metadata: key removed", "shard: index", ...
    label: str  # what was done, to which file
    file: Path
    data: bytes | None  # the file's new bytes; None: the file is removed


@pytest.fixture(scope="module")
def small_store(module_folder: Path) -> Path:
    """One 64 x 48 video of 4 frames (1 annotated frame), a manual and an auto masklet: as
    small as a store gets, with a shard file per frame and per item."""
    disc = SampleObject("manual", "disc", (230, 60, 40), (0.4, 0.5), (0.01, 0.0), 0.3)
    box = SampleObject("auto", "box", (40, 200, 90), (0.6, 0.5), (-0.01, 0.0), 0.25)
    root = module_folder
    src = write_sample(root / "src", "train", [SampleVideo("sav_990001", 64, 48, 4, (disc, box))])
    return build_store(src, root / "store.zarr", frames_per_shard=1, items_per_shard=1)


# -- mutations ----------------------------------------------------------------------------------


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) inside a JSON value, the value itself excluded."""
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        yield (*path, key), child
        yield from leaves(child, (*path, key))


def edited(document: Any, path: tuple[Any, ...], value: Any, remove: bool = False) -> bytes:
    document = json.loads(json.dumps(document))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if remove:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return json.dumps(document).encode()


def metadata_mutations(store: Path, rng: random.Random) -> list[Mutation]:
    found = []
    for number, file in enumerate(sorted(store.rglob("zarr.json"))):
        name = str(file.relative_to(store))
        document = json.loads(file.read_text())
        paths = list(leaves(document))
        keys = [(p, v) for p, v in paths if isinstance(p[-1], str)]
        numbers = [
            (p, v) for p, v in paths if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        root = file.parent == store
        for path, _ in rng.sample(keys, min(len(keys), 12 if root else 2)):
            data = edited(document, path, None, remove=True)
            found.append(
                Mutation("metadata: key removed", f"{name} {_dotted(path)} removed", file, data)
            )
        for path, value in rng.sample(paths, min(len(paths), 12 if root else 2)):
            other = rng.choice([v for v in WRONG_TYPES if type(v) is not type(value)])
            data = edited(document, path, other)
            found.append(
                Mutation(
                    "metadata: wrong type",
                    f"{name} {_dotted(path)} = {json.dumps(other)}",
                    file,
                    data,
                )
            )
        for path, _ in rng.sample(numbers, min(len(numbers), 6 if root else 1)):
            number = rng.choice(OUT_OF_RANGE)
            data = edited(document, path, number)
            found.append(
                Mutation("metadata: out of range", f"{name} {_dotted(path)} = {number}", file, data)
            )
        whole = [
            ("removed", None),
            ("cut short", file.read_bytes()[: len(file.read_bytes()) // 2]),
            ("an empty object", b"{}"),
            ("a list", b"[]"),
        ]
        what, data = whole[number % len(whole)]
        found.append(Mutation("metadata: file", f"{name} {what}", file, data))
    return found


def _dotted(path: tuple[Any, ...]) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def shard_mutations(store: Path, rng: random.Random) -> list[Mutation]:
    found = []
    for name in ("pixel_values", "g_pixel_values", "prompt_masks", "masks"):
        metadata = json.loads((store / name / "zarr.json").read_text())
        per = metadata["chunk_grid"]["configuration"]["chunk_shape"][0]
        index_bytes = per * 16 + 4
        for file in sorted(path for path in (store / name / "c").rglob("*") if path.is_file()):
            label = str(file.relative_to(store))
            blob = file.read_bytes()
            chunks = len(blob) - index_bytes

            def flipped(position: int, blob: bytes = blob) -> bytes:
                return blob[:position] + bytes([blob[position] ^ 0xFF]) + blob[position + 1 :]

            index = bytearray(blob[chunks:-4])
            entry = rng.randrange(per) * 16 + rng.choice((0, 8))
            index[entry : entry + 8] = struct.pack("<Q", rng.choice((chunks, 2**64 - 2, 3, 2**40)))
            reindexed = (
                blob[:chunks] + bytes(index) + struct.pack("<I", google_crc32c.value(bytes(index)))
            )
            for kind, what, data in (
                (
                    "shard: index",
                    "index byte flipped",
                    flipped(chunks + rng.randrange(index_bytes)),
                ),
                ("shard: index", "index entry rewritten, its crc32c valid", reindexed),
                ("shard: chunk", "chunk byte flipped", flipped(rng.randrange(chunks))),
                ("shard: truncated", "cut to half", blob[: len(blob) // 2]),
                ("shard: truncated", "last byte cut", blob[:-1]),
                ("shard: truncated", "emptied", b""),
                ("shard: removed", "removed", None),
            ):
                found.append(Mutation(kind, f"{label} {what}", file, data))
    for name in ("items/video", "items/frame_row", "videos/frame_row", "videos/video_id/utf8"):
        file = store / name / "c" / "0"
        blob = file.read_bytes()
        found.append(
            Mutation(
                "table chunk",
                f"{name}/c/0 byte flipped",
                file,
                blob[:5] + bytes([blob[5] ^ 0xFF]) + blob[6:],
            )
        )
        found.append(
            Mutation("table chunk", f"{name}/c/0 cut to half", file, blob[: len(blob) // 2])
        )
        found.append(Mutation("table chunk", f"{name}/c/0 removed", file, None))
    return found


# -- the tools, and zarr-python as the judge of a whole store ----------------------------------


def snapshot(store: Path) -> dict[str, Any]:
    """Every node, and every array's values, as zarr-python reads them (attributes aside: an
    edited attribute is the schema's business, not zarr-python's)."""
    root = zarr.open_group(store, mode="r", zarr_format=3)
    found: dict[str, Any] = {"": None}
    for path, node in root.members(max_depth=None):
        found[path] = np.asarray(node[...]) if isinstance(node, zarr.Array) else None
    return found


def zarr_reads_as_built(store: Path, built: dict[str, Any]) -> bool:
    try:
        now = snapshot(store)
    except Exception:  # whatever zarr-python raises: it cannot read the store
        return False
    if now.keys() != built.keys():
        return False
    for path, value in built.items():
        if isinstance(value, np.ndarray):
            other = now[path]
            if (
                not isinstance(other, np.ndarray)
                or other.dtype != value.dtype
                or not np.array_equal(other, value)
            ):
                return False
        elif now[path] is not None:
            return False
    return True


def read_everything(store: Path) -> str:
    """The reader's answer: 'read' (every item, both paths), or where StoreError came."""
    try:
        datasets = [
            PrebakedDataset(store, tune_allocator=False),
            PrebakedDataset(store, clip_len=1, fast=False),  # clips, through zarr-python
        ]
    except StoreError:
        return "StoreError at open"
    try:
        for dataset in datasets:
            for index in range(len(dataset)):
                dataset[index]
    except StoreError:
        return "StoreError reading an item"
    return "read"


def run_verify(store: Path) -> str:
    try:
        report = verify_store(store, progress=False)
    except StoreError:
        return "cannot run (StoreError)"
    return "OK" if report.ok else "problems"


def run_info(store: Path) -> str:
    try:
        text = format_info(store_info(store))
    except StoreError:
        return "cannot run (StoreError)"
    return "described, metadata line" if METADATA_LINE in text else "described"


def test_damaged_stores_are_named_never_half_read(small_store: Path) -> None:
    started = time.perf_counter()
    rng = random.Random(SEED)
    built = snapshot(small_store)
    assert run_verify(small_store) == "OK" and read_everything(small_store) == "read"
    mutations = metadata_mutations(small_store, rng) + shard_mutations(small_store, rng)
    tally: dict[str, Counter[str]] = {
        tool: Counter() for tool in ("kind", "reader", "verify", "info")
    }
    whole = []
    for mutation in mutations:
        original = mutation.file.read_bytes()
        if mutation.data is None:
            mutation.file.unlink()
        else:
            mutation.file.write_bytes(mutation.data)
        try:
            broken_schema = bool(metadata_problems(small_store))
            reader, verify, info = (
                read_everything(small_store),
                run_verify(small_store),
                run_info(small_store),
            )
            readable = verify == "OK" and zarr_reads_as_built(small_store, built)
        finally:
            mutation.file.write_bytes(original)
        where = f"{mutation.label}: reader {reader}, verify {verify}, info {info}"
        if broken_schema:
            assert verify != "OK", where
            assert info != "described", where
        if verify == "OK":
            assert readable, f"{where}; zarr-python cannot read the store as built"
            assert reader == "read", where
            whole.append(mutation.label)
        for tool, answer in (
            ("kind", mutation.kind),
            ("reader", reader),
            ("verify", verify),
            ("info", info),
        ):
            tally[tool][answer] += 1
    seconds = time.perf_counter() - started
    print(f"\nfuzz: {len(mutations)} mutations (seed {SEED}) in {seconds:.1f} s")
    for tool, answers in tally.items():
        print(
            f"  {tool:7s} "
            + ", ".join(f"{answer}: {count}" for answer, count in sorted(answers.items()))
        )
    print(f"  left the store whole (verify OK, zarr-python reads it as built): {len(whole)}")
    for label in whole:
        print(f"    {label}")
    assert len(mutations) >= 250
    assert tally["verify"]["problems"] > 200  # the mutations do damage
