"""Issue 5, broken input: each broken video is named with a one-line reason, skipped and listed
in the store's failures; every other video is baked; the build exits 1 without a traceback and
writes nothing outside --out. One build (all three layouts in one source) covers every case."""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zarr
from helpers.stores import cli_build, statuses, video_ids
from PIL import Image

from prebake.demo import SampleObject, SampleVideo, write_video
from prebake.store.layout import BUILD_DIR, StoreDir
from prebake.store.schema import DATA_ARRAYS, array_specs
from prebake.store.writer import owned_shards

FRAMES_PER_SHARD = 2
ITEMS_PER_SHARD = 4
DISC = SampleObject("manual", "disc", (230, 60, 40), (0.3, 0.4), (0.01, 0.004), 0.2)
BOX = SampleObject("auto", "box", (30, 80, 220), (0.55, 0.5), (-0.009, 0.003), 0.2)


@dataclass(frozen=True)
class Case:
    name: str
    video_id: str
    layout: str
    breaks: Callable[[Path, str], None]  # (the layout's folder, video id): damage the input
    reason: str | tuple[str, ...]  # expected in the failure's one-line reason (any of them)


def _edit_json(
    edit: Callable[[dict[str, Any]], None], kinds: tuple[str, ...] = ("manual",)
) -> Callable[[Path, str], None]:
    def breaks(folder: Path, video_id: str) -> None:
        for kind in kinds:
            path = next(folder.rglob(f"{video_id}_{kind}.json"))
            annotation = json.loads(path.read_text())
            edit(annotation)
            path.write_text(json.dumps(annotation))

    return breaks


def _write(name: str, data: bytes) -> Callable[[Path, str], None]:
    """Replace the file `name` (formatted with the video id) by `data`."""

    def breaks(folder: Path, video_id: str) -> None:
        path = next(folder.rglob(name.format(video_id=video_id)))
        path.write_bytes(data)

    return breaks


def _truncate(name: str, fraction: float) -> Callable[[Path, str], None]:
    def breaks(folder: Path, video_id: str) -> None:
        path = next(folder.rglob(name.format(video_id=video_id)))
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return breaks


def _corrupt_middle(folder: Path, video_id: str) -> None:
    """Damage a few spots of the H.264 data in the middle of the file (the index is at its end):
    the decoder meets errors mid-video, where by default it would conceal them silently."""
    path = folder / f"{video_id}.mp4"
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    for _ in range(4):
        start = len(data) // 3 + rng.randrange(len(data) // 3)
        data[start : start + 16] = bytes(rng.randrange(256) for _ in range(16))
    path.write_bytes(bytes(data))


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda annotation: annotation.__setitem__(key, value)


def _rle_size(t: int, size: object) -> Callable[[dict[str, Any]], None]:
    def edit(annotation: dict[str, Any]) -> None:
        annotation["masklet"][t][0]["size"] = size

    return edit


def _huge_video(annotation: dict[str, Any]) -> None:
    annotation["video_height"] = annotation["video_width"] = 100000.0
    for frame in annotation["masklet"]:
        for rle in frame:
            rle["size"] = [100000, 100000]


def _more_frames_than_capacity(annotation: dict[str, Any]) -> None:
    annotation["masklet"] += annotation["masklet"] * 3  # 4x the frames a 12-frame video holds


def _longer_than_the_mp4(annotation: dict[str, Any]) -> None:
    """Consistent JSON claiming a video 4x longer than the mp4 really is."""
    annotation["video_frame_count"] *= 4
    annotation["masklet"] = annotation["masklet"] * 4


def _missing_key(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda annotation: annotation.pop(key)


def _write_jpeg(name: str, size: tuple[int, int]) -> Callable[[Path, str], None]:
    def breaks(folder: Path, video_id: str) -> None:
        Image.new("RGB", size, (90, 90, 90)).save(
            next(folder.rglob(name.format(video_id=video_id)))
        )

    return breaks


def _remove(name: str) -> Callable[[Path, str], None]:
    def breaks(folder: Path, video_id: str) -> None:
        next(folder.rglob(name.format(video_id=video_id))).unlink()

    return breaks


def _first_mask_png(damage: Callable[[bytes], bytes]) -> Callable[[Path, str], None]:
    def breaks(folder: Path, video_id: str) -> None:
        path = folder / "Annotations_6fps" / video_id / "000" / "00004.png"
        path.write_bytes(damage(path.read_bytes()))

    return breaks


CASES = [
    Case(
        "truncated-mp4",
        "sav_600101",
        "train",
        _truncate("{video_id}.mp4", 0.6),
        "cannot decode video",
    ),
    Case(
        "empty-mp4",
        "sav_600102",
        "train",
        _write("{video_id}.mp4", b""),
        "cannot decode video (empty file)",
    ),
    Case(
        "not-a-video",
        "sav_600103",
        "train",
        _write("{video_id}.mp4", b"#!/bin/sh\necho this is not a video\n"),
        "cannot decode video",
    ),
    Case(
        "corrupt-mid-video",
        "sav_600104",
        "train",
        _corrupt_middle,
        (".mp4: cannot decode video at frame", ".mp4: frame"),
    ),
    Case(
        "invalid-json",
        "sav_600105",
        "train",
        _write("{video_id}_manual.json", b"{not json"),
        "invalid JSON",
    ),
    Case(
        "truncated-json",
        "sav_600106",
        "train",
        _truncate("{video_id}_manual.json", 0.5),
        "invalid JSON",
    ),
    Case(
        "missing-keys",
        "sav_600107",
        "train",
        _edit_json(_missing_key("masklet")),
        "missing required keys: masklet",
    ),
    Case(
        "rle-size",
        "sav_600108",
        "train",
        _edit_json(_rle_size(1, [65, 96])),
        "masklet[1][0]: RLE size [65, 96] is not the video's [64, 96]",
    ),
    Case(
        "rle-huge-size",
        "sav_600109",
        "train",
        _edit_json(_rle_size(0, [100000, 100000])),
        "RLE size [100000, 100000] is not the video's [64, 96]",
    ),
    Case(
        "rle-size-not-a-list",
        "sav_600120",
        "train",
        _edit_json(_rle_size(2, 64)),
        "masklet[2][0]: RLE size 64 is not the video's [64, 96]",
    ),
    Case(
        "huge-video-size",
        "sav_600110",
        "train",
        _edit_json(_huge_video),
        "'video_height' must be a whole number in 1..16384",
    ),
    Case(
        "more-annotated-than-capacity",
        "sav_600111",
        "train",
        _edit_json(_more_frames_than_capacity),
        "12 annotated frames, but a 12-frame video has only 3",
    ),
    Case(
        "json-longer-than-mp4",
        "sav_600112",
        "train",
        _edit_json(_longer_than_the_mp4, ("manual", "auto")),
        "video ends after 12 frames; annotation needs frame 12",
    ),
    Case(
        "video-id-disagrees",
        "sav_600113",
        "train",
        _edit_json(_set("video_id", "sav_999999")),
        "'video_id' 'sav_999999' disagrees with the file name ('sav_600113')",
    ),
    Case(
        "video-id-path",
        "sav_600114",
        "train",
        _edit_json(_set("video_id", "../../sav_600114")),
        "'video_id' '../../sav_600114' is not a plain name",
    ),
    Case(
        "jpeg-folder-missing-frame",
        "sav_600115",
        "frames",
        _remove("{video_id}/00004.jpg"),
        "00004.jpg: missing frame",
    ),
    Case(
        "unreadable-jpeg",
        "sav_600116",
        "frames",
        _write("{video_id}/00008.jpg", b"\xff\xd8\xff garbage"),
        "00008.jpg: unreadable image",
    ),
    Case(
        "jpeg-of-another-size",
        "sav_600121",
        "frames",
        _write_jpeg("{video_id}/00004.jpg", (192, 128)),
        "00004.jpg: frame is 192x128, annotation says 96x64",
    ),
    Case(
        "unreadable-png",
        "sav_600117",
        "png",
        _first_mask_png(lambda _: b"not a png"),
        "unreadable PNG",
    ),
    Case(
        "truncated-png",
        "sav_600118",
        "png",
        _first_mask_png(lambda data: data[:60]),
        "unreadable PNG",
    ),
    Case(
        "png-layout-missing-jpeg",
        "sav_600119",
        "png",
        _remove("JPEGImages_24fps/{video_id}/00004.jpg"),
        "00004.jpg: missing frame",
    ),
]
GOOD = {"sav_600001": "train", "sav_600002": "frames", "sav_600003": "png"}


@dataclass(frozen=True)
class Outcome:
    result: subprocess.CompletedProcess[str]
    store: Path
    failures: dict[str, str]  # video id -> reason, from the store's root attributes
    outside_before: dict[str, tuple[int, int]]
    outside_after: dict[str, tuple[int, int]]


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under root but `skip`, with its size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
        for name in dirs + files:
            stat = Path(folder, name).stat()
            found[str(Path(folder, name).relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def outcome(module_folder: Path) -> Outcome:
    root = module_folder
    src = root / "src"
    videos = {**GOOD, **{case.video_id: case.layout for case in CASES}}
    for video_id, layout in videos.items():
        # 12 frames: 3 annotated frames (0, 4, 8); the png layout keeps every frame as JPEG.
        write_video(SampleVideo(video_id, 96, 64, 12, (DISC, BOX)), src / layout, layout)
    for case in CASES:
        case.breaks(src / case.layout, case.video_id)
    out = root / "store.zarr"
    before = _snapshot(root, out)
    result = subprocess.run(
        cli_build(
            src, out, workers=2, frames_per_shard=FRAMES_PER_SHARD, items_per_shard=ITEMS_PER_SHARD
        ),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    after = _snapshot(root, out)
    attrs = StoreDir(out).attrs() or {}
    failures = {failure["video_id"]: failure["reason"] for failure in attrs.get("failures", [])}
    return Outcome(result, out, failures, before, after)


def test_build_exits_1_without_traceback(outcome: Outcome) -> None:
    result = outcome.result
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{len(CASES)} videos failed and were skipped:" in result.stderr
    assert f"baked {len(GOOD)}/{len(GOOD) + len(CASES)} videos" in result.stdout


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_video_is_named_and_skipped(outcome: Outcome, case: Case) -> None:
    reason = outcome.failures.get(case.video_id)
    assert reason is not None, f"{case.video_id} was not recorded as failed"
    expected = case.reason if isinstance(case.reason, tuple) else (case.reason,)
    assert any(fragment in reason for fragment in expected), reason
    assert "\n" not in reason
    # Listed at the end of the build, one line each, naming the video.
    assert f"  {case.video_id}: {reason}\n" in outcome.result.stderr


def test_every_other_video_is_baked(outcome: Outcome) -> None:
    store = outcome.store
    attrs = StoreDir(store).require_complete()
    assert set(outcome.failures) == {case.video_id for case in CASES}
    assert attrs["counts"]["videos"] == len(GOOD) + len(CASES)
    assert attrs["counts"]["videos_failed"] == len(CASES)
    root = zarr.open_group(store, mode="r")
    ids = video_ids(root)
    status = dict(zip(ids, statuses(root), strict=True))
    assert {video_id for video_id, state in status.items() if state == "ok"} == set(GOOD)
    # 3 annotated frames per good video; one item per visible object and frame.
    assert attrs["counts"]["frames"] == 3 * len(GOOD)
    assert attrs["counts"]["items"] > 0


def test_store_holds_shards_of_baked_videos_only(outcome: Outcome) -> None:
    """A video that failed mid-bake leaves no shard behind."""
    store = StoreDir(outcome.store)
    root = zarr.open_group(outcome.store, mode="r")
    table = {key: root[f"videos/{key}"][:] for key in ("frame_row", "frames", "item_row", "items")}
    table["status"] = statuses(root)
    for name in DATA_ARRAYS:
        spec = array_specs()[name]
        per_shard = FRAMES_PER_SHARD if spec.rows == "frame_rows" else ITEMS_PER_SHARD
        first, count = (
            ("frame_row", "frames") if spec.rows == "frame_rows" else ("item_row", "items")
        )
        expected = {
            store.shard_path(spec, shard)
            for status, row, rows in zip(table["status"], table[first], table[count], strict=True)
            if status == "ok"
            for shard in owned_shards(int(row), int(rows), per_shard)
        }
        found = {path for path in (outcome.store / name / "c").rglob("*") if path.is_file()}
        assert found == expected, name


def test_nothing_written_outside_out(outcome: Outcome) -> None:
    assert outcome.outside_after == outcome.outside_before
    assert not (outcome.store / BUILD_DIR).exists()
