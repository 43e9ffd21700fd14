"""`prebake build` run as a user runs it, on the reliability source: started, killed,
interrupted, resumed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.processes import descendants
from helpers.stores import cli_build
from prebake.build import BuildOptions, BuildReport, build

DEADLINE = 120  # seconds any wait of these helpers may take before the test fails
HELD_VIDEO = "sav_700099"  # the reliability source's frame-folder video: the shortest, baked last
HELD_VIDEO_FRAMES = 3  # annotated frames (0, 4, 8): its second image shard holds frame 8 alone

FRAMES_PER_SHARD = 2  # small shards: every video spans several, so kills land between them


ITEMS_PER_SHARD = 4


def cli_args(src: Path, out: Path, *extra: str, workers: int = 1) -> list[str]:
    return cli_build(
        src,
        out,
        *extra,
        workers=workers,
        frames_per_shard=FRAMES_PER_SHARD,
        items_per_shard=ITEMS_PER_SHARD,
    )


def start_build(src: Path, out: Path, *extra: str, workers: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_args(src, out, *extra, workers=workers),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C would reach it
    )


def run_build(
    src: Path, out: Path, *extra: str, workers: int = 1
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_args(src, out, *extra, workers=workers),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"build ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def resume(src: Path, out: Path, workers: int = 1) -> BuildReport:
    """Run the same build again (quiet, in this process): what it did."""
    options = BuildOptions(
        src=src,
        out=out,
        workers=workers,
        masklets="all",
        frames_per_shard=FRAMES_PER_SHARD,
        items_per_shard=ITEMS_PER_SHARD,
        progress=False,
    )
    return build(options)


@contextlib.contextmanager
def planning_blocked(src: Path) -> Iterator[None]:
    """Replace the last video's manual JSON by a FIFO: planning blocks when it opens it, as on
    a stalled network file system, so a signal is sure to land while the build plans."""
    annotation = sorted(src.glob("*_manual.json"))[-1]
    saved, stat = annotation.read_bytes(), annotation.stat()
    annotation.unlink()
    os.mkfifo(annotation)
    try:
        yield
    finally:
        annotation.unlink()
        annotation.write_bytes(saved)
        # As it was: its modification time is part of the video's fingerprint in the store.
        os.utime(annotation, ns=(stat.st_atime_ns, stat.st_mtime_ns))


class HeldFrame:
    """A named pipe (FIFO) in place of one frame file of a frame-folder video: the worker that
    bakes the video blocks opening it (or, once `wait_read` has opened our end, reading it),
    so the unit stays open, deterministically, until the test has done what it meant to do
    inside it (kill the build, a worker, send Ctrl-C). Nothing is ever written to the pipe: a
    unit that reads it never completes, so a unit that completes was baked again after."""

    def __init__(self, frame: Path, folder_times: tuple[int, int]) -> None:
        self.frame = frame
        self.folder_times = folder_times  # (atime, mtime) in ns: put back after each change
        self.writer: int | None = None
        self.restored = False

    def wait_read(self, process: subprocess.Popen[str]) -> None:
        """Wait until some process opens the pipe to read it; keep our end open, so that it
        stays blocked (now in read) and later readers block too."""
        deadline = time.monotonic() + DEADLINE
        while self.writer is None:
            try:
                self.writer = os.open(self.frame, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                if process.poll() is not None:
                    pytest.fail(
                        f"build ended (exit {process.returncode}) before reading {self.frame}"
                    )
                if time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(f"timed out waiting for the build to read {self.frame}")
                time.sleep(0.01)

    def readers(self, root: int) -> list[int]:
        """Processes under `root` (its descendants) that hold the pipe open."""
        target = str(self.frame)
        found = []
        for pid in descendants(root):
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) == target for fd in Path(f"/proc/{pid}/fd").iterdir()):
                    found.append(pid)
        return found

    def wait_readers(self, root: int, process: subprocess.Popen[str]) -> list[int]:
        """`readers(root)`, once there is one (a reader holds the pipe once `wait_read` ran)."""
        wait_for(lambda: bool(self.readers(root)), process, f"a process to hold {self.frame}")
        return self.readers(root)

    def restore(self) -> None:
        """Put the real frame back under its name (a new file: readers of the pipe stay
        blocked); later openers read the real frame."""
        if not self.restored:
            temporary = self.frame.with_name(self.frame.name + ".real")
            os.replace(temporary, self.frame)
            os.utime(self.frame.parent, ns=self.folder_times)
            self.restored = True


@contextlib.contextmanager
def frame_held(folder: Path, name: str = "00008.jpg") -> Iterator[HeldFrame]:
    """`HeldFrame` for frame `name` of the frame folder `folder`. The folder's modification
    time is put back each time it changes, so the video's fingerprint is that of its files."""
    frame = folder / name
    stamp = folder.stat()
    times = (stamp.st_atime_ns, stamp.st_mtime_ns)
    os.replace(frame, frame.with_name(name + ".real"))  # not a frame name: not listed as one
    os.mkfifo(frame)
    os.utime(folder, ns=times)
    held = HeldFrame(frame, times)
    try:
        yield held
    finally:
        if held.writer is not None:
            os.close(held.writer)
        held.restore()
