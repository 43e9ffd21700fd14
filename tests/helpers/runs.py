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

from helpers.stores import build_store, cli_build

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
        cli_args(src, out, *extra, workers=workers), capture_output=True, text=True, timeout=120
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"build ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def resume(src: Path, out: Path, workers: int = 1) -> None:
    build_store(
        src,
        out,
        workers=workers,
        frames_per_shard=FRAMES_PER_SHARD,
        items_per_shard=ITEMS_PER_SHARD,
    )


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
