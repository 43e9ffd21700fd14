"""Issue 10: sources found by what they hold. One walk of the tree; symbolic links to folders
followed, each real folder walked once (loops end), links that cannot be followed named; every
layout recognised by its files whatever the folders above them are called; the same video id
twice is the one question put to the user."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import fsspec
import pytest
import zarr
from helpers.stores import CLI, video_ids
from reference.expected import assert_store_matches, expected_items

from prebake.demo import SampleObject, SampleVideo, write_sample, write_video
from prebake.errors import PrebakeError
from prebake.sources import find_videos, fingerprint
from prebake.sources.discovery import walk
from prebake.storage import as_path

DISC = SampleObject("manual", "disc", (230, 60, 40), (0.3, 0.4), (0.01, 0.004), 0.2)
BOX = SampleObject("manual", "box", (40, 200, 90), (0.6, 0.6), (-0.008, -0.006), 0.15)


def tiny(video_id: str) -> SampleVideo:
    """9 frames (3 annotated), two manual masklets: cheap to bake."""
    return SampleVideo(video_id, 64, 48, 9, (DISC, BOX), write_auto=False)


def touch(root: Path, *names: str) -> None:
    """Empty files: recognising videos reads no file, so names are all a layout needs."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def found(src: Path, **options: str) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(id, layout, frames, annotations) of every video, paths relative to `src`."""

    def relative(path: str) -> str:
        return os.path.relpath(path, src)

    return [
        (ref.video_id, ref.layout, relative(ref.frames), tuple(map(relative, ref.annotations)))
        for ref in find_videos(src, **options).refs
    ]


def val_video(root: Path, frames: str, masks: str, video_id: str) -> None:
    """Empty files of one video in the val/test layout: frames in `frames`, masks in `masks`."""
    touch(root, *(f"{frames}/{video_id}/{i:05d}.jpg" for i in range(9)))
    touch(root, *(f"{masks}/{video_id}/{k:03d}/{i:05d}.png" for k in (0, 1) for i in (0, 4, 8)))


# -- layouts by content --------------------------------------------------------------------------

PARENT_NAMES = ["JPEGImages_24fps", "Annotations_6fps", "sav_train", "sav_val", "JPEGImages", "x"]


@pytest.mark.parametrize("parent", PARENT_NAMES)
def test_every_layout_is_found_whatever_its_folders_are_called(parent: str, tmp_path: Path) -> None:
    touch(tmp_path, f"{parent}/sav_000001.mp4", f"{parent}/sav_000001_manual.json")
    touch(tmp_path, f"{parent}/sav_000002_manual.json")  # its frames: elsewhere, under `parent`
    touch(tmp_path, *(f"{parent}/{parent}/sav_000002/{i:05d}.jpg" for i in (0, 4, 8)))
    val_video(tmp_path, f"{parent}/a", f"{parent}/b", "sav_000003")
    assert found(tmp_path) == [
        ("sav_000001", "train", f"{parent}/sav_000001.mp4", (f"{parent}/sav_000001_manual.json",)),
        (
            "sav_000002",
            "frames",
            f"{parent}/{parent}/sav_000002",
            (f"{parent}/sav_000002_manual.json",),
        ),
        ("sav_000003", "png", f"{parent}/a/sav_000003", (f"{parent}/b/sav_000003",)),
    ]


def test_val_layout_with_its_folder_names_swapped(tmp_path: Path) -> None:
    """Frames in a folder called Annotations_6fps, masks in one called JPEGImages_24fps."""
    val_video(tmp_path, "Annotations_6fps", "JPEGImages_24fps", "sav_000004")
    assert found(tmp_path) == [
        (
            "sav_000004",
            "png",
            "Annotations_6fps/sav_000004",
            ("JPEGImages_24fps/sav_000004",),
        )
    ]


def test_each_mask_folder_pairs_with_the_nearest_frame_folder(tmp_path: Path) -> None:
    """Two splits, each with the same JPEGImages_24fps/Annotations_6fps pair of folders for a
    different video; and a video id whose frames exist twice, equally near: asked."""
    val_video(tmp_path, "sav_val/JPEGImages_24fps", "sav_val/Annotations_6fps", "sav_000005")
    val_video(tmp_path, "sav_test/JPEGImages_24fps", "sav_test/Annotations_6fps", "sav_000006")
    touch(tmp_path, *(f"sav_test/JPEGImages_24fps/sav_000005/{i:05d}.jpg" for i in range(9)))
    assert [(v, frames) for v, _, frames, _ in found(tmp_path)] == [
        ("sav_000005", "sav_val/JPEGImages_24fps/sav_000005"),
        ("sav_000006", "sav_test/JPEGImages_24fps/sav_000006"),
    ]
    touch(tmp_path, *(f"sav_val/copy/sav_000005/{i:05d}.jpg" for i in range(9)))
    with pytest.raises(PrebakeError, match="video sav_000005 found twice") as error:
        find_videos(tmp_path)
    assert "sav_val/JPEGImages_24fps/sav_000005" in str(error.value)
    assert "sav_val/copy/sav_000005" in str(error.value)


def run_build(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`prebake build -q` of `src` into `out` in a subprocess, with a deadline."""
    args = [*CLI, "build", "--src", str(src), "--out", str(out), *extra, "-q"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_frame_folders_under_a_val_named_parent_are_baked(tmp_path: Path) -> None:
    """SAM 2-style extracted frames kept in a folder named like the val layout's, JSON
    elsewhere: baked (exit 0), every value equal to the reference computed from the files."""
    src = write_sample(tmp_path / "src", "frames", [tiny("sav_000011"), tiny("sav_000012")])
    (src / "JPEGImages").rename(src / "JPEGImages_24fps")
    out = tmp_path / "store.zarr"
    result = run_build(src, out, "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert_store_matches(out, *expected_items(src, "frames", ("manual",)))


def test_the_same_video_twice_is_asked_once(tmp_path: Path) -> None:
    touch(tmp_path, "sav_000/sav_000021.mp4", "sav_000/sav_000021_manual.json")
    touch(tmp_path, "sav_001/sav_000021.mp4", "sav_001/sav_000021_manual.json")
    result = run_build(tmp_path, tmp_path / "s.zarr")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "video sav_000021 found twice" in lines[0]
    assert "sav_000/sav_000021.mp4" in lines[0] and "sav_001/sav_000021.mp4" in lines[0]
    assert not (tmp_path / "s.zarr").exists()


def test_an_mp4_and_its_extracted_frames_are_the_same_video_twice(tmp_path: Path) -> None:
    """The JSON beside the mp4 also annotates an extracted frame folder: two sources of one
    video. Asked; --layout picks one."""
    touch(tmp_path, "sav_train/sav_000022.mp4", "sav_train/sav_000022_manual.json")
    touch(tmp_path, *(f"frames/sav_000022/{i:05d}.jpg" for i in (0, 4)))
    with pytest.raises(PrebakeError, match="sav_000022 found twice"):
        find_videos(tmp_path)
    assert [layout for _, layout, _, _ in found(tmp_path, layout="train")] == ["train"]
    assert [layout for _, layout, _, _ in found(tmp_path, layout="frames")] == ["frames"]


def test_files_that_pair_with_nothing_are_noted(tmp_path: Path) -> None:
    touch(tmp_path, "a/sav_000031.mp4", "a/sav_000031_manual.json")
    touch(tmp_path, "a/sav_000032_manual.json", "b/sav_000033.mp4")
    touch(tmp_path, *(f"masks/sav_000034/000/{i:05d}.png" for i in (0, 4)))
    discovery = find_videos(tmp_path)
    assert [ref.video_id for ref in discovery.refs] == ["sav_000031"]
    assert len(discovery.notes) == 3
    assert (
        "1 annotation files" in discovery.notes[0]
        and "sav_000032_manual.json" in discovery.notes[0]
    )
    assert "1 mp4 files" in discovery.notes[1] and "sav_000033.mp4" in discovery.notes[1]
    assert "1 mask folders" in discovery.notes[2] and "masks/sav_000034" in discovery.notes[2]
    assert discovery.problems == []


# -- symbolic links --------------------------------------------------------------------------------


def linked_source(root: Path) -> tuple[Path, Path, Path]:
    """Real files outside the source, a real folder inside it, a folder linked in; and a source
    made only of a link (folders joined from several disks)."""
    disk = root / "disk2"
    write_video(tiny("sav_000041"), disk / "sav_000", "train")
    src = root / "src"
    write_video(tiny("sav_000042"), src / "sav_001", "train")
    (src / "sav_000").symlink_to(disk / "sav_000")
    only_links = root / "only_links"
    only_links.mkdir()
    (only_links / "sav_000").symlink_to(disk / "sav_000")
    return disk, src, only_links


def test_symlinked_folders_are_followed(tmp_path: Path) -> None:
    disk, src, only_links = linked_source(tmp_path)
    assert found(src) == [
        ("sav_000041", "train", "sav_000/sav_000041.mp4", ("sav_000/sav_000041_manual.json",)),
        ("sav_000042", "train", "sav_001/sav_000042.mp4", ("sav_001/sav_000042_manual.json",)),
    ]
    for source, ids in ((src, ["sav_000041", "sav_000042"]), (only_links, ["sav_000041"])):
        out = tmp_path / f"{source.name}.zarr"
        result = run_build(source, out, "--workers", "1")
        assert result.returncode == 0, result.stderr
        assert video_ids(zarr.open_group(out, mode="r")) == ids
    frames, items = expected_items(disk, "train", ("manual",))
    assert_store_matches(tmp_path / "only_links.zarr", frames, items)


def test_loops_and_folders_reached_twice_are_walked_once(tmp_path: Path) -> None:
    touch(tmp_path, "src/a/sav_000051.mp4", "src/a/sav_000051_manual.json")
    src = tmp_path / "src"
    (src / "a" / "back").symlink_to(src)  # a loop
    (src / "a" / "deeper").mkdir()
    (src / "a" / "deeper" / "up").symlink_to("../..")  # a relative loop
    (src / "b").symlink_to(src / "a")  # the same folder by a second name
    (src / "c").symlink_to("b")  # a link to a link
    tree = walk(src)
    assert sorted(os.path.relpath(path, src) for path in tree.folders) == [".", "a", "a/deeper"]
    assert tree.problems == []
    assert found(src) == [
        ("sav_000051", "train", "a/sav_000051.mp4", ("a/sav_000051_manual.json",))
    ]


def test_the_same_files_through_two_links_are_one_video(tmp_path: Path) -> None:
    """File links (not folders): the mp4 and JSON reached as two paths are one source."""
    touch(tmp_path, "real/sav_000052.mp4", "real/sav_000052_manual.json")
    (tmp_path / "alias").mkdir()
    for name in ("sav_000052.mp4", "sav_000052_manual.json"):
        (tmp_path / "alias" / name).symlink_to(tmp_path / "real" / name)
    assert found(tmp_path) == [
        ("sav_000052", "train", "alias/sav_000052.mp4", ("alias/sav_000052_manual.json",))
    ]


def test_links_that_cannot_be_followed_are_named(tmp_path: Path) -> None:
    """A link to a missing folder (a disk not mounted) and a link to itself: one line each on
    stderr, the rest is baked, exit 1; a source of nothing else is an error (exit 2)."""
    src = tmp_path / "src"
    write_video(tiny("sav_000061"), src / "sav_000", "train")
    (src / "sav_001").symlink_to(tmp_path / "unmounted" / "sav_001")
    (src / "sav_002").symlink_to("sav_002")
    discovery = find_videos(src)
    assert [ref.video_id for ref in discovery.refs] == ["sav_000061"]
    assert discovery.problems == [
        f"{src}/sav_001: link to {tmp_path}/unmounted/sav_001 cannot be followed "
        "(its target does not exist); what it holds is not baked",
        f"{src}/sav_002: link to sav_002 cannot be followed "
        "(Too many levels of symbolic links); what it holds is not baked",
    ]
    out = tmp_path / "store.zarr"
    result = run_build(src, out, "--workers", "1")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"prebake: {line}" for line in discovery.problems]
    assert "baked 1/1 videos" in result.stdout
    assert video_ids(zarr.open_group(out, mode="r")) == ["sav_000061"]
    broken_only = tmp_path / "broken_only"
    broken_only.mkdir()
    (broken_only / "sav_000").symlink_to(tmp_path / "unmounted")
    result = run_build(broken_only, tmp_path / "b.zarr")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "no SA-V videos found" in result.stderr and "could not be read" in result.stderr
    assert f"{broken_only}/sav_000: link to {tmp_path}/unmounted" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_a_folder_that_cannot_be_listed_is_named(tmp_path: Path) -> None:
    touch(tmp_path, "a/sav_000071.mp4", "a/sav_000071_manual.json", "locked/x.mp4")
    (tmp_path / "locked").chmod(0)
    try:
        discovery = find_videos(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert [ref.video_id for ref in discovery.refs] == ["sav_000071"]
    assert discovery.problems == [f"{tmp_path}/locked: cannot list this folder (Permission denied)"]


# -- one recogniser for local and remote sources ------------------------------------------------


def test_a_remote_listing_gives_the_same_videos(tmp_path: Path) -> None:
    """The same tree in an fsspec filesystem (memory://) is recognised by the same rules."""
    touch(tmp_path, "train/sav_000081.mp4", "train/sav_000081_manual.json")
    touch(tmp_path, "train/sav_000081_auto.json", "ann/sav_000082_manual.json")
    touch(tmp_path, *(f"JPEGImages_24fps/sav_000082/{i:05d}.jpg" for i in (0, 4)))
    val_video(tmp_path, "v/JPEGImages_24fps", "v/Annotations_6fps", "sav_000083")
    memory = fsspec.filesystem("memory")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            memory.pipe_file(f"/issue10/{path.relative_to(tmp_path)}", b"12345")
    remote = as_path("memory://issue10")
    local, far = find_videos(tmp_path, masklets="all"), find_videos(remote, masklets="all")

    def shape(refs: list, root: str) -> list[tuple[str, str, str, tuple[str, ...]]]:
        def relative(path: str) -> str:
            return path.removeprefix(root).lstrip("/")

        return [
            (r.video_id, r.layout, relative(r.frames), tuple(map(relative, r.annotations)))
            for r in refs
        ]

    assert shape(far.refs, "memory:///issue10") == shape(local.refs, str(tmp_path))
    assert len(far.refs) == 3
    stamps = fingerprint(far.tree, far.refs[0])
    assert set(stamps) == {"video", "manual", "auto"}
    assert all(stamp is not None and stamp[0] == 5 for stamp in stamps.values())
    assert fingerprint(far.tree, far.refs[2])["frames"] == [9, 45]  # 9 frames of 5 bytes
    memory.rm("/issue10", recursive=True)


def test_the_discovery_benchmark_tree(tmp_path: Path) -> None:
    """`prebake bench --discovery N`'s generator, small, so it does not rot (the measurement
    itself is the benchmark's, not a test's)."""
    from prebake.bench.sources import write_tree

    root = tmp_path / "sav"
    root.mkdir()
    written = write_tree(root, 7_000)
    assert written["files"] == sum(1 for p in tmp_path.rglob("*") if p.is_file()) == 7_000
    discovery = find_videos(root, masklets="all")
    assert len(discovery.refs) == written["train"] + written["frames"] + written["png"]
    assert {ref.layout for ref in discovery.refs} == {"train", "frames", "png"}
    assert (root / "sav_train" / "sav_001").is_symlink()
    assert discovery.problems == discovery.notes == []
