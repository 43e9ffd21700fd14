"""Issue 10: a complete store grows with its source. New videos are appended in new shards
(old shard files untouched), item by item equal to a fresh build and to the reference; an
append killed (-9) or stopped while committing is finished by the next run; sources that changed
or vanished are named; failed videos are retried on request; --limit / --videos grow a store in
steps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from helpers.processes import children_of, kill9
from helpers.runs import frame_held, wait_for
from helpers.stores import CLI, items_by_key, text_column, video_ids
from reference.expected import assert_store_matches, expected_items

from prebake.build import BuildOptions, BuildReport, build
from prebake.demo import SampleObject, SampleVideo, write_video
from prebake.errors import StoreError
from prebake.reader import PrebakedDataset
from prebake.store.layout import BUILD_DIR, StoreDir
from prebake.store.schema import DATA_ARRAYS
from prebake.verify import verify_store

FRAMES_PER_SHARD = 1  # a unit's first frame is a whole shard: a kill inside a unit leaves one
ITEMS_PER_SHARD = 2
FOLDERS = {"train": "train", "frames": "frames", "png": "val"}
DISC = SampleObject("manual", "disc", (230, 60, 40), (0.3, 0.4), (0.01, 0.004), 0.2)
BOX = SampleObject("manual", "box", (40, 200, 90), (0.6, 0.6), (-0.008, -0.006), 0.15)
AUTO = SampleObject("auto", "box", (30, 80, 220), (0.35, 0.45), (0.009, 0.003), 0.25)
BASE = [("train", "sav_100002"), ("train", "sav_100003"), ("frames", "sav_100004")]
BASE += [("png", "sav_100005")]
# sav_100000 sorts first: a fresh build lists its items first, a grown store last.
ADDED = [("train", "sav_100000"), ("frames", "sav_100007"), ("png", "sav_100008")]
HELD = "sav_100007"  # the added video an append is held in (a FIFO for one of its frames)


def video(video_id: str, frames: int = 9) -> SampleVideo:
    return SampleVideo(video_id, 64, 48, frames, (DISC, BOX, AUTO))


def add_videos(src: Path, videos: list[tuple[str, str]]) -> None:
    for layout, video_id in videos:
        write_video(video(video_id), src / FOLDERS[layout], layout)


def expected(src: Path) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """Every frame and item the source holds, from its files (tests/reference)."""
    frames: dict[Any, Any] = {}
    items: dict[Any, Any] = {}
    for layout, folder in FOLDERS.items():
        if (src / folder).is_dir():
            more_frames, more_items = expected_items(src / folder, layout, ("manual", "auto"))
            frames.update(more_frames)
            items.update(more_items)
    return frames, items


def run(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(src, out, *extra), capture_output=True, text=True, timeout=120)


def command(src: Path, out: Path, *extra: str) -> list[str]:
    return [
        *CLI, "build", "--src", str(src), "--out", str(out), "--workers", "1", "--masklets", "all",
        "--frames-per-shard", str(FRAMES_PER_SHARD), "--items-per-shard", str(ITEMS_PER_SHARD),
        "-q", *extra,
    ]  # fmt: skip


def grow(src: Path, out: Path, **options: Any) -> BuildReport:
    return build(
        BuildOptions(
            src=src,
            out=out,
            masklets="all",
            frames_per_shard=FRAMES_PER_SHARD,
            items_per_shard=ITEMS_PER_SHARD,
            progress=False,
            **options,
        )
    )


def files_of(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and BUILD_DIR not in p.parts
    }


def shard_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """The data arrays' shard files (`<array>/c/<shard>/...`), not their zarr.json."""
    return {
        name: data
        for name, data in files.items()
        if name.split("/")[0] in DATA_ARRAYS and name.split("/")[1] == "c"
    }


def stored_items(store: Path) -> dict[tuple[str, int, str, int], tuple[Any, ...]]:
    return items_by_key(zarr.open_group(store, mode="r"))


def videos_of(store: Path) -> dict[str, dict[str, Any]]:
    """The videos table by id, less what says where rows are (which differs after appends)."""
    root = zarr.open_group(store, mode="r")
    columns: dict[str, Any] = {
        name: root[f"videos/{name}"][:] for name in root["videos"].array_keys()
    }
    columns.update(
        (name, text_column(root, f"videos/{name}")) for name in root["videos"].group_keys()
    )
    return {
        str(video_id): {
            name: values[row] if isinstance(values, list) else int(values[row])
            for name, values in columns.items()
            if name not in ("frame_row", "item_row", "fingerprint")
        }
        for row, video_id in enumerate(columns["video_id"])
    }


def attrs_of(store: Path) -> dict[str, Any]:
    return dict(json.loads((store / "zarr.json").read_text())["attributes"]["prebake"])


def test_a_grown_store_equals_a_fresh_build(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "store.zarr"
    add_videos(src, BASE)
    assert run(src, out).returncode == 0
    before = files_of(out)
    add_videos(src, ADDED)
    result = run(src, out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "3 videos added" in result.stdout and "the store holds 7 videos" in result.stdout
    after = files_of(out)
    for name, data in shard_files(before).items():  # no old shard rewritten, none removed
        assert after[name] == data, name
    assert len(shard_files(after)) > len(shard_files(before))
    verified = subprocess.run(
        [*CLI, "verify", str(out), "--src", str(src), "--samples", "all", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # A fresh build of the same files (libx264 encodes a video differently each time it is
    # written, so the copy is of these files, not a new rendering).
    fresh = tmp_path / "fresh.zarr"
    grow(shutil.copytree(src, tmp_path / "copy"), fresh)
    assert stored_items(out) == stored_items(fresh)
    assert videos_of(out) == videos_of(fresh)
    assert_store_matches(out, *expected(src))
    # Documented: appended videos' items follow the store's; a fresh build orders by video id.
    grown_order, fresh_order = list(stored_items(out)), list(stored_items(fresh))
    assert grown_order[-1][0] == "sav_100008" and fresh_order[0][0] == "sav_100000"
    attrs = attrs_of(out)
    assert attrs["counts"] == attrs_of(fresh)["counts"]
    assert [(a["videos_added"], a["videos_retried"], a["limit"]) for a in attrs["appends"]] == [
        (3, 0, None)
    ]
    again = run(src, out)
    assert again.returncode == 0 and "already complete" in again.stdout
    assert "nothing to add" in again.stdout
    assert files_of(out) == after


def all_items(store: Path) -> list[dict[str, Any]]:
    dataset = PrebakedDataset(store)
    return [dataset[i] for i in range(len(dataset))]


def same_items(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys()
        and all(bool((x[k] == y[k]).all()) if hasattr(x[k], "shape") else x[k] == y[k] for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_kill_during_an_append_then_rerun(tmp_path: Path) -> None:
    """kill -9 while a unit of the append is being baked: readers keep the old content, verify
    passes (noting the append), and the next run finishes the append: the same store as an
    append that was never interrupted."""
    src, out = tmp_path / "src", tmp_path / "store.zarr"
    add_videos(src, BASE)
    assert run(src, out).returncode == 0
    old_items = all_items(out)
    shutil.copytree(out, tmp_path / "reference.zarr")
    before = files_of(out)
    add_videos(src, ADDED)
    units = out / BUILD_DIR / "units"
    with frame_held(src / "frames" / "JPEGImages" / HELD, "00004.jpg") as held:
        process = subprocess.Popen(
            command(src, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        held.wait_read(process)
        # Held inside the append: sav_100000 (index 4) is baked, HELD (index 5) is not.
        record = units / "0000004.json"  # written once its result is back
        wait_for(record.is_file, process, "the record of sav_100000")
        assert not (units / "0000005.json").exists()
        assert StoreDir(out).require_complete()["counts"]["videos"] == 4
        assert same_items(all_items(out), old_items), "readers keep the old content"
        assert len(children_of(process.pid)) >= 1
        kill9(process)
        assert process.returncode == -9
        assert not (units / "0000005.json").exists()
    assert same_items(all_items(out), old_items)
    assert all(files_of(out)[name] == data for name, data in shard_files(before).items())
    verified = subprocess.run(
        [*CLI, "verify", str(out)], capture_output=True, text=True, timeout=120
    )
    assert verified.returncode == 0, verified.stdout
    assert "an append is under way" in verified.stdout
    report = grow(src, out)
    assert (report.added, report.resumed, report.failures) == (3, 1, [])
    assert not (out / BUILD_DIR).exists()
    reference = tmp_path / "reference.zarr"
    assert grow(src, reference).added == 3  # the same append, never interrupted
    assert_same_grown_store(out, reference)


def assert_same_grown_store(store: Path, reference: Path) -> None:
    """Every file bitwise equal but the root's zarr.json, whose attributes differ only in the
    appends' timing and id."""
    files, expected_files = files_of(store), files_of(reference)
    assert sorted(files) == sorted(expected_files)
    for name, data in files.items():
        if name != "zarr.json":
            assert data == expected_files[name], name

    def comparable(attrs: dict[str, Any]) -> dict[str, Any]:
        keep = ("videos_added", "videos_retried", "videos_baked", "limit", "videos_filter")
        attrs["appends"] = [{k: a[k] for k in keep} for a in attrs["appends"]]
        return attrs

    assert comparable(attrs_of(store)) == comparable(attrs_of(reference))


def test_an_append_stopped_while_committing_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while the tables are replaced (after the first): the store is refused by
    readers, and the next run finishes the commit from the staged tables."""
    src, out = tmp_path / "src", tmp_path / "store.zarr"
    add_videos(src, BASE)
    grow(src, out)
    shutil.copytree(out, tmp_path / "reference.zarr")
    add_videos(src, ADDED)
    write_tables = StoreDir.write_tables

    def crash_after_one(self: StoreDir, tables: Iterator[tuple[str, np.ndarray]]) -> None:
        write_tables(self, [next(iter(tables))])
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(StoreDir, "write_tables", crash_after_one)
    with pytest.raises(StoreError, match="simulated"):
        grow(src, out)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="incomplete"):
        PrebakedDataset(out)
    assert (out / BUILD_DIR / "tables" / "staged.json").is_file()
    report = grow(src, out)
    assert (report.added, report.resumed) == (3, 3)
    reference = tmp_path / "reference.zarr"
    grow(src, reference)
    assert_same_grown_store(out, reference)


def test_changed_and_vanished_sources_are_named(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "store.zarr"
    add_videos(src, BASE)
    assert run(src, out).returncode == 0
    old = stored_items(out)
    manual = src / "train" / "sav_100002_manual.json"
    manual.write_text(json.dumps(json.loads(manual.read_text()), indent=1))  # same masks
    frame = src / "frames" / "JPEGImages" / "sav_100004" / "00004.jpg"
    shutil.copyfile(frame, frame.with_suffix(".tmp"))
    os.replace(frame.with_suffix(".tmp"), frame)  # a frame rewritten and renamed into place
    for path in (src / "train").glob("sav_100003*"):
        path.unlink()
    add_videos(src, [("train", "sav_100000")])
    result = run(src, out)
    assert result.returncode == 1
    assert "1 videos added" in result.stdout
    assert result.stderr.splitlines() == [
        f"prebake: sav_100002: {manual} changed since the video was baked; it stays as baked "
        "(--overwrite bakes the store again)",
        "prebake: sav_100003: its source is gone since it was baked (was "
        "train/sav_100003.mp4); its items stay in the store",
        f"prebake: sav_100004: {frame.parent} changed since the video was baked; it stays as "
        "baked (--overwrite bakes the store again)",
    ]
    now = stored_items(out)
    assert all(now[key] == value for key, value in old.items()), "old items kept as baked"
    assert {key[0] for key in now} - {key[0] for key in old} == {"sav_100000"}
    after = files_of(out)
    again = run(src, out)
    assert again.returncode == 1 and "nothing to add" in again.stdout
    assert again.stderr == result.stderr
    assert files_of(out) == after


def test_failed_videos_are_retried_on_request(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "store.zarr"
    add_videos(src, BASE[:2])
    broken = src / "broken"
    for video_id in ("sav_100011", "sav_100012"):
        write_video(video(video_id), broken, "train")
    fixed = (broken / "sav_100011.mp4").read_bytes()
    fixed_frames, fixed_items = expected_items(broken, "train", ("manual", "auto"))
    for video_id in ("sav_100011", "sav_100012"):
        mp4 = broken / f"{video_id}.mp4"
        mp4.write_bytes(mp4.read_bytes()[: len(fixed) // 3])
    first = run(src, out)
    assert first.returncode == 1
    rows = {video_id: row for row, video_id in enumerate(video_ids(zarr.open_group(out)))}
    (broken / "sav_100011.mp4").write_bytes(fixed)  # fixed
    (broken / "sav_100012.mp4").write_bytes(b"")  # broken otherwise
    before = files_of(out)
    plain = run(src, out)
    assert plain.returncode == 1 and "nothing to add" in plain.stdout
    assert "2 videos failed and were skipped:" in plain.stderr
    assert plain.stderr.endswith("(once they are fixed, --retry-failed bakes them again)\n")
    assert files_of(out) == before
    retried = run(src, out, "--retry-failed")
    assert retried.returncode == 1
    assert "0 videos added" in retried.stdout
    assert "2 failed videos retried (1 baked now)" in retried.stdout
    attrs = attrs_of(out)
    assert [(f["video_id"], "empty file" in f["reason"]) for f in attrs["failures"]] == [
        ("sav_100012", True)
    ]
    assert attrs["counts"]["videos"] == 4 and attrs["counts"]["videos_failed"] == 1
    now = {video_id: row for row, video_id in enumerate(video_ids(zarr.open_group(out)))}
    assert now == rows, "a retried video keeps its row"
    frames, items = expected(src)
    frames.update((k, v) for k, v in fixed_frames.items() if k[0] != "sav_100012")
    items.update((k, v) for k, v in fixed_items.items() if k[0] != "sav_100012")
    assert_store_matches(out, frames, items)
    verified = subprocess.run(
        [*CLI, "verify", str(out), "--src", str(src), "--samples", "all", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout


def test_a_store_grows_in_steps(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "store.zarr"
    ids = [f"sav_1001{i:02d}" for i in range(6)]
    add_videos(src, [("train", video_id) for video_id in ids])
    assert grow(src, out, limit=2).videos == 2
    report = grow(src, out, limit=4)
    assert (report.added, report.videos) == (2, 4)
    listed = tmp_path / "videos.txt"
    listed.write_text(f"{ids[5]}\n")
    result = run(src, out, "--videos", str(listed))
    assert result.returncode == 0 and "1 videos added" in result.stdout
    report = grow(src, out, limit=3)
    assert report.already_complete and report.added == 0
    report = grow(src, out)
    assert (report.added, report.videos) == (1, 6)
    root = zarr.open_group(out, mode="r")
    assert video_ids(root) == [*ids[:4], ids[5], ids[4]]
    attrs = attrs_of(out)
    assert attrs["build"]["limit"] == 2
    assert [(a["limit"], a["videos_filter"], a["videos_added"]) for a in attrs["appends"]] == [
        (4, None, 2),
        (None, [ids[5]], 1),
        (None, None, 1),
    ]
    assert_store_matches(out, *expected(src))


def test_an_append_committed_before_a_crash_is_not_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after an append's commit and before its build folder is removed leaves its plan,
    records and staged tables behind: the next run neither replays them nor mistakes them for
    the next append's."""
    src, out = tmp_path / "src", tmp_path / "store.zarr"
    add_videos(src, BASE)
    grow(src, out)
    add_videos(src, ADDED[:1])
    monkeypatch.setattr(StoreDir, "remove_build_dir", lambda self: None)
    assert grow(src, out).added == 1
    monkeypatch.undo()
    assert (out / BUILD_DIR / "tables" / "staged.json").is_file()
    add_videos(src, ADDED[1:])
    report = grow(src, out)
    assert (report.added, report.videos) == (2, 7)
    assert not (out / BUILD_DIR).exists()
    ids = [video_id for _, video_id in BASE + ADDED]
    assert video_ids(zarr.open_group(out, mode="r")) == ids
    assert {key[0] for key in stored_items(out)} == set(ids)
    checked = verify_store(out, progress=False)
    assert checked.ok, checked.problems
