"""Source benchmarks: finding the videos of a large tree, and growing a store with its source.

- discovery: a generated tree of empty files with valid SA-V names (all three layouts, one split
  behind a symbolic link, as sources joined from several disks are) is found with
  `find_videos`: one walk and the layouts' recognition; then every video is fingerprinted, as a
  build that checks a complete store against its source does. Nothing is opened, so empty files
  cost what real ones would. Timed three times, the median reported (a warm cache: the tree
  was just written).
- append: `prebake build` of N synthetic 1280 x 720 videos, then one more video added to the
  source and the same command run again (an append), against a fresh build of all N + 1: the
  append's share of a rebuild.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prebake.errors import PrebakeError, counted
from prebake.sources import find_videos, fingerprint

TRAIN_SHARE, FRAMES_SHARE = 0.6, 0.25  # of the files; the rest is the val/test layout
# Video ids: training videos from sav_000000 (up to 200 k of them: a 1 M-file tree), frame
# folders from sav_600000, val videos from sav_800000, so no id is found twice.
VIDEOS_PER_SPLIT = 1000  # SA-V's training tars hold about 900 videos each
FRAMES_PER_FOLDER = 20  # an extracted frame folder: every 4th frame of an 80-frame clip
VAL_FRAMES, VAL_OBJECTS, VAL_MASKS = 40, 2, 10  # every frame, and masks at every 4th
RUNS = 3


def write_tree(root: Path, files: int = 50_000) -> dict[str, int]:
    """Write `files` empty files named as SA-V's layouts name them under `root` (one training
    split lives beside `root` and is linked in); return what was written."""
    written = {"files": 0, "train": 0, "frames": 0, "png": 0}

    def touch(path: Path) -> None:
        path.touch()
        written["files"] += 1

    outside = root.parent / f"{root.name}-other-disk"
    train_files = int(files * TRAIN_SHARE) // 3 * 3
    for v in range(train_files // 3):
        split = f"sav_{v // VIDEOS_PER_SPLIT:03d}"
        base = (outside if split == "sav_001" else root / "sav_train") / split
        if v % VIDEOS_PER_SPLIT == 0:
            base.mkdir(parents=True, exist_ok=True)
        for suffix in (".mp4", "_manual.json", "_auto.json"):
            touch(base / f"sav_{v:06d}{suffix}")
        written["train"] += 1
    if (outside / "sav_001").is_dir():
        os.symlink(outside / "sav_001", root / "sav_train" / "sav_001")
    per_val = VAL_FRAMES + VAL_OBJECTS * VAL_MASKS
    val_videos = int(files * (1 - TRAIN_SHARE - FRAMES_SHARE)) // per_val
    for v in range(val_videos):
        video_id = f"sav_{800000 + v:06d}"
        frames = root / "sav_val" / "JPEGImages_24fps" / video_id
        frames.mkdir(parents=True)
        for i in range(VAL_FRAMES):
            touch(frames / f"{i:05d}.jpg")
        for k in range(VAL_OBJECTS):
            masks = root / "sav_val" / "Annotations_6fps" / video_id / f"{k:03d}"
            masks.mkdir(parents=True)
            for i in range(0, VAL_FRAMES, 4):
                touch(masks / f"{i:05d}.png")
        written["png"] += 1
    (root / "extracted" / "annotations").mkdir(parents=True)
    v = 0
    while files - written["files"] > FRAMES_PER_FOLDER + 1:
        video_id = f"sav_{600000 + v:06d}"
        frames = root / "extracted" / "JPEGImages" / video_id
        frames.mkdir(parents=True)
        for i in range(FRAMES_PER_FOLDER):
            touch(frames / f"{4 * i:05d}.jpg")
        touch(root / "extracted" / "annotations" / f"{video_id}_manual.json")
        written["frames"] += 1
        v += 1
    last = root / "extracted" / "JPEGImages" / f"sav_{600000 + max(v - 1, 0):06d}"
    last.mkdir(parents=True, exist_ok=True)  # a small tree: no whole folder was written
    for i in range(files - written["files"]):  # make the count exact
        touch(last / f"{4 * (FRAMES_PER_FOLDER + i):05d}.jpg")
    return written


def bench_discovery(files: int = 50_000) -> dict[str, Any]:
    """Time `find_videos` (and fingerprinting every video) on a generated tree of `files`."""
    with tempfile.TemporaryDirectory(prefix="prebake-discovery-") as folder:
        root = Path(folder) / "sav"
        root.mkdir()
        written = write_tree(root, files)
        found_seconds, fingerprint_seconds = [], []
        for _ in range(RUNS):
            started = time.perf_counter()
            found = find_videos(root, masklets="all")
            found_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
            for ref in found.refs:
                fingerprint(found.tree, ref)
            fingerprint_seconds.append(time.perf_counter() - started)
        expected = written["train"] + written["frames"] + written["png"]
        if len(found.refs) != expected or found.problems:
            raise PrebakeError(
                f"discovery benchmark: found {len(found.refs)} videos of {expected} "
                f"({len(found.problems)} problems)"
            )
        discovery = statistics.median(found_seconds)
        return {
            **written,
            "folders": len(found.tree.folders),
            "videos": len(found.refs),
            "seconds": round(discovery, 3),
            "files_per_s": round(written["files"] / discovery),
            "fingerprint_seconds": round(statistics.median(fingerprint_seconds), 3),
        }


def format_discovery(results: dict[str, Any]) -> list[str]:
    return [
        "discovery (find_videos: one walk, every layout recognised; median of "
        f"{RUNS}, warm cache):",
        f"  {counted(results['files'], 'file')} in {counted(results['folders'], 'folder')}, "
        f"{counted(results['videos'], 'video')} ({results['train']} train, "
        f"{counted(results['frames'], 'frame folder')}, {results['png']} val): "
        f"{results['seconds']:.3f} s ({results['files_per_s']} files/s)",
        f"  fingerprints of every video (the check of a complete store against its source): "
        f"{results['fingerprint_seconds']:.3f} s",
    ]


def bench_append(videos: int = 6, frames: int = 48) -> dict[str, Any]:
    """Seconds of `prebake build` adding one 1280 x 720 video to a store of `videos`, against a
    fresh build of all `videos + 1` (each a command, 2 workers, as a user runs them)."""
    from prebake.bench.build import write_synthetic

    with tempfile.TemporaryDirectory(prefix="prebake-append-") as folder:
        work = Path(folder)
        everything = write_synthetic(work / "all", videos + 1, frames)
        src = work / "src"
        src.mkdir()
        names = sorted(p.name for p in everything.iterdir())
        last = f"sav_99{videos:04d}"  # write_synthetic's last video
        for name in names:
            if not name.startswith(last):
                shutil.copy2(everything / name, src / name)
        first = _timed_build(src, work / "grown.zarr")
        for name in names:
            if name.startswith(last):
                shutil.copy2(everything / name, src / name)
        append = _timed_build(src, work / "grown.zarr")
        fresh = _timed_build(src, work / "fresh.zarr")
    return {
        "videos": videos,
        "frames_per_video": frames,
        "build_seconds": round(first, 2),
        "append_seconds": round(append, 2),
        "fresh_seconds": round(fresh, 2),
        "append_over_fresh": round(append / fresh, 3),
    }


def _timed_build(src: Path, out: Path) -> float:
    command = [sys.executable, "-c", "from prebake.cli import main; main()", "build"]
    command += ["--src", str(src), "--out", str(out), "--masklets", "all", "--workers", "2", "-q"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PrebakeError(f"append benchmark: build failed: {done.stderr.strip()}")
    return time.perf_counter() - started


def format_append(results: dict[str, Any]) -> list[str]:
    return [
        f"append (1 video of {results['frames_per_video']} frames, 1280x720, added to "
        f"{results['videos']}; 2 workers):",
        f"  build of {results['videos']}: {results['build_seconds']:.2f} s; "
        f"append of 1: {results['append_seconds']:.2f} s; fresh build of "
        f"{results['videos'] + 1}: {results['fresh_seconds']:.2f} s; "
        f"append / fresh {results['append_over_fresh']:.2f}",
    ]
