"""Sample stores and how tests compare them: the shared fixture paths, the `prebake` command
in a subprocess, quiet builds with small shards, items by key, bitwise store comparison."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from prebake.build import BuildOptions, build
from prebake.demo import SampleObject, SampleVideo
from prebake.store.layout import BUILD_DIR, StoreDir

ROOT = Path(__file__).resolve().parents[2]  # the repository
SHARED = ROOT.parent / "shared"  # beside it: the real SA-V fixtures, never copied in


REAL_SAV = SHARED / "fixtures" / "sav_real"


REAL_VIDEO = SHARED / "fixtures" / "real_video" / "01_dog.mp4"


# What the `split_store` fixture's sample holds, stated here, not read back from prebake.
SPLIT_VIDEOS = {  # video id: (annotated frames = ceil(24 fps frames / 4), manual items)
    "sav_950001": (3, 3),  # 9 frames: one manual masklet on each annotated frame, one auto
    "sav_950002": (4, 4),  # 13 frames: one manual masklet
    "sav_950003": (0, 0),  # its mp4 is not a video: failed
}


CLI = [sys.executable, "-c", "from prebake.cli import main; main()"]  # the command, in a subprocess


def cli_build(
    src: Path, out: Path, *extra: str, workers: int, frames_per_shard: int, items_per_shard: int
) -> list[str]:
    """A quiet `prebake build` command line with every masklet and the given shard sizes."""
    return [
        *CLI, "build", "--src", str(src), "--out", str(out), "--workers", str(workers), "--masklets", "all",
        "--frames-per-shard", str(frames_per_shard), "--items-per-shard", str(items_per_shard), "-q", *extra,
    ]  # fmt: skip


def three_object_videos(
    prefix: str, width: int, height: int, first_length: int, step: int
) -> list[SampleVideo]:
    """Six videos of unequal lengths, each with two manual masklets and one auto."""
    disc = SampleObject("manual", "disc", (230, 60, 40), (0.3, 0.4), (0.01, 0.004), 0.15)
    box = SampleObject("manual", "box", (40, 200, 90), (0.6, 0.6), (-0.008, -0.006), 0.12)
    auto = SampleObject("auto", "box", (30, 80, 220), (0.35, 0.45), (0.009, 0.003), 0.2)
    return [
        SampleVideo(f"{prefix}{i:02d}", width, height, first_length + step * i, (disc, box, auto))
        for i in range(6)
    ]


def text_column(root: zarr.Group, name: str) -> list[str]:
    """A text column read with zarr-python alone: schema v2's group of UTF-8 bytes and int64
    offsets (row i is utf8[offsets[i]:offsets[i + 1]]), or v1's zarr-python string array."""
    node = root[name]
    if isinstance(node, zarr.Group):
        offsets = [int(value) for value in node["offsets"][:]]  # type: ignore[index]
        data = np.asarray(node["utf8"][:]).tobytes()  # type: ignore[index]
        return [data[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]
    return [str(value) for value in node[:]]  # type: ignore[index]


def video_ids(root: zarr.Group) -> list[str]:
    return text_column(root, "videos/video_id")


def statuses(root: zarr.Group) -> list[str]:
    """videos/status as names: v2's uint8 codes of the root attribute statuses, or v1's text."""
    node = root["videos/status"]
    if node.dtype == np.uint8:  # type: ignore[union-attr]
        names = root.attrs["prebake"]["statuses"]  # type: ignore[index]
        return [names[int(code)] for code in node[:]]  # type: ignore[index]
    return text_column(root, "videos/status")


def items_by_key(root: zarr.Group) -> dict[tuple[str, int, str, int], tuple[Any, ...]]:
    """Every item of a store by (video id, frame index, masklet type, masklet id): its four
    rows' bytes, area and prompt cells, read through zarr-python (not prebake's reader). Two
    stores of one source hold the same items, whatever their order (a store that grew)."""
    ids = video_ids(root)
    kinds = root.attrs["prebake"]["masklet_types"]
    names = ("video", "frame_index", "masklet_type", "masklet_id", "frame_row", "mask_row")
    table = {name: root[f"items/{name}"][:] for name in (*names, "area", "prompt_cells")}
    found = {}
    for i in range(len(table["video"])):
        key = (
            str(ids[table["video"][i]]),
            int(table["frame_index"][i]),
            str(kinds[int(table["masklet_type"][i])]),
            int(table["masklet_id"][i]),
        )
        frame, mask = int(table["frame_row"][i]), int(table["mask_row"][i])
        found[key] = (
            *(
                np.asarray(root[name][frame]).tobytes()
                for name in ("pixel_values", "g_pixel_values")
            ),
            *(np.asarray(root[name][mask]).tobytes() for name in ("masks", "prompt_masks")),
            int(table["area"][i]),
            int(table["prompt_cells"][i]),
        )
    return found


def build_store(src: Path, out: Path, **options: object) -> Path:
    """Build quietly with small shards, so every video spans several shards."""
    settings: dict[str, object] = {
        "workers": 1,
        "masklets": "all",
        "frames_per_shard": 4,
        "items_per_shard": 8,
        "progress": False,
    }
    settings.update(options)
    build(BuildOptions(src=src, out=out, **settings))  # type: ignore[arg-type]
    return out


def records(out: Path) -> list[Path]:
    units = out / BUILD_DIR / "units"
    return sorted(units.glob("*.json")) if units.is_dir() else []


def root_attrs(store: Path) -> dict[str, object]:
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]["prebake"]
    del attrs["build"]  # start/finish times and worker count: the only values allowed to differ
    return dict(attrs)


def assert_same_store(store: Path, reference: Path) -> None:
    """Every file bitwise equal, the root's attributes equal apart from build timing."""
    files = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    expected = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == expected
    assert not (store / BUILD_DIR).exists()
    assert StoreDir(store).require_complete()["state"] == "complete"
    for relative in files:
        if relative == Path("zarr.json"):
            continue
        assert (store / relative).read_bytes() == (reference / relative).read_bytes(), relative
    root = json.loads((store / "zarr.json").read_text())
    reference_root = json.loads((reference / "zarr.json").read_text())
    assert root_attrs(store) == root_attrs(reference)
    root["attributes"].pop("prebake")
    reference_root["attributes"].pop("prebake")
    assert root == reference_root
