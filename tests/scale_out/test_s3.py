"""Issue 6, scale-out to object stores: builds from and into a real S3 API (moto's server on
127.0.0.1, reached over HTTP through s3fs), killed and resumed, grown; remote reads, verify and
info; a remote lock; every store bitwise equal to a one-worker local build. Nothing is mocked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import zarr
from helpers.scale_out import S3, SHARD_ARGS, SHARDS, assert_same_items, assert_same_remote_store
from helpers.stores import CLI, items_by_key, video_ids

from prebake.build import BuildOptions, build
from prebake.errors import StoreError
from prebake.reader import PrebakedDataset
from prebake.store import lock as lock_module
from prebake.store.layout import BUILD_DIR
from prebake.store.lock import RemoteStoreLock
from prebake.verify import verify_store

# -- S3 ------------------------------------------------------------------------------------------


def test_s3_build_read_verify_equal_to_local(
    s3: S3, remote_src: str, local_reference: Path
) -> None:
    """Source bucket -> store bucket with local worker processes; the store equals the local
    build object for object; the reader, verify and info work on the URL."""
    url = "s3://stores/pool.zarr"
    report = build(
        BuildOptions(
            src=remote_src,
            out=url,
            workers=2,
            masklets="all",
            progress=False,
            storage_options=s3.options,
            **SHARDS,  # type: ignore[arg-type]
        )
    )
    assert report.videos_failed == 1
    (failure,) = report.failures
    assert failure["path"] == "s3://sources/sav/broken/sav_930001.mp4"
    assert failure["reason"].startswith("s3://sources/sav/broken/sav_930001.mp4: ")
    assert_same_remote_store(s3, url, local_reference)

    remote = PrebakedDataset(url, storage_options=s3.options)
    assert set(remote.read_paths.values()) == {"zarr"}  # no memory map of an object store
    assert_same_items(remote, PrebakedDataset(local_reference), step=3)
    clips = PrebakedDataset(url, clip_len=3, storage_options=s3.options)
    assert_same_items(clips, PrebakedDataset(local_reference, clip_len=3), step=11)

    subset = torch.utils.data.Subset(remote, range(0, len(remote), 9))  # pickled to workers
    loader = torch.utils.data.DataLoader(subset, batch_size=2, num_workers=2, timeout=120)
    assert sum(len(batch["masks"]) for batch in loader) == len(subset)

    checked = verify_store(
        url, src=remote_src, samples=24, progress=False, storage_options=s3.options
    )
    assert checked.ok, checked.problems
    assert checked.source is not None and checked.source["items_checked"] == 24
    decoders = [decoder.split(" ")[0] for decoder in checked.source["decoders"]]
    assert decoders == ["OpenCV", "Pillow"]  # the mp4s (each copied here first), the JPEGs

    for command in (["verify", url, "--src", remote_src, "--samples", "2"], ["info", url]):
        result = subprocess.run(
            [*CLI, *command, "--storage-options", s3.options_json],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"{url}" in result.stdout
    info = subprocess.run(
        [*CLI, "info", url, "--json", "--storage-options", s3.options_json],
        capture_output=True,
        text=True,
        timeout=60,
    )
    details = json.loads(info.stdout)
    assert details["counts"]["videos_failed"] == 1
    assert details["arrays"]["g_pixel_values"]["rows_written"] == details["counts"]["frames"]


def test_storage_options_and_urls_errors_are_one_line(tmp_path: Path) -> None:
    bad_json = subprocess.run(
        [*CLI, "info", "s3://stores/x.zarr", "--storage-options", "{not json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_json.returncode == 2
    assert (
        bad_json.stderr.count("\n") == 1
        and "--storage-options is not valid JSON" in bad_json.stderr
    )
    no_workers = subprocess.run(
        [
            *CLI,
            "build",
            "--src",
            str(tmp_path),
            "--out",
            str(tmp_path / "s.zarr"),
            "--dask",
            "local:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_workers.returncode == 2 and no_workers.stderr.count("\n") == 1
    assert "expected local:N with N >= 1" in no_workers.stderr
    assert not (tmp_path / "s.zarr").exists()
    unknown = subprocess.run(
        [*CLI, "build", "--src", "nosuchproto://x/y", "--out", str(tmp_path / "s.zarr"), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1 and "nosuchproto://x/y" in unknown.stderr


def test_s3_build_killed_then_resumed(
    s3: S3, remote_src: str, local_reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of a build into S3: its lock object is left behind, fresh, and refuses the next
    build until it is stale; then it is taken over and the build resumes its records."""
    url = "s3://stores/resumed.zarr"
    prefix = url.removeprefix("s3://")
    args = ["build", "--src", remote_src, "--out", url, "--workers", "1", "-q", *SHARD_ARGS]
    process = subprocess.Popen(
        [*CLI, *args, "--storage-options", s3.options_json],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while len(s3.fs.find(f"{prefix}/{BUILD_DIR}/units", refresh=True)) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "no units committed"
        time.sleep(0.05)
    process.kill()
    process.communicate(timeout=60)
    committed = len(s3.fs.find(f"{prefix}/{BUILD_DIR}/units", refresh=True))
    options = BuildOptions(
        src=remote_src,
        out=url,
        masklets="all",
        progress=False,
        storage_options=s3.options,
        **SHARDS,  # type: ignore[arg-type]
    )
    with pytest.raises(StoreError, match="another build is writing this store"):
        build(options)
    monkeypatch.setattr(lock_module, "STALE_SECONDS", 1.0)
    monkeypatch.setattr(lock_module, "SETTLE_SECONDS", 0.05)
    time.sleep(1.0)
    report = build(options)
    assert report.resumed == committed >= 2  # the records of the killed build are kept
    assert_same_remote_store(s3, url, local_reference)


def test_s3_store_grows_with_its_source(s3: S3, mixed_src: Path, local_reference: Path) -> None:
    """A store in S3 built from a source in S3 that lacks its frame folders; they are uploaded
    and the same build adds them (new shard objects, tables staged in the bucket): every item
    equal to the local build of the whole source."""
    s3.fs.put(f"{mixed_src}/", "sources/growing/", recursive=True)
    s3.fs.rm("sources/growing/frames", recursive=True)
    url, src = "s3://stores/grown.zarr", "s3://sources/growing"
    options = BuildOptions(
        src=src,
        out=url,
        masklets="all",
        progress=False,
        storage_options=s3.options,
        **SHARDS,  # type: ignore[arg-type]
    )
    videos = len(video_ids(zarr.open_group(local_reference, mode="r")))
    first = build(options)
    assert first.built and first.videos == videos - 2
    s3.fs.put(f"{mixed_src}/frames/", "sources/growing/frames/", recursive=True)
    grown = build(options)
    assert (grown.added, grown.videos, grown.videos_failed) == (2, videos, 1)
    remote = zarr.open_group(
        zarr.storage.FsspecStore.from_url(url, storage_options=s3.options), mode="r"
    )
    assert items_by_key(remote) == items_by_key(zarr.open_group(local_reference, mode="r"))
    keys = s3.fs.find(url.removeprefix("s3://"), refresh=True)
    assert not any(BUILD_DIR in key for key in keys)
    checked = verify_store(url, src=src, samples=8, progress=False, storage_options=s3.options)
    assert checked.ok, checked.problems


# -- the lock of a remote store ------------------------------------------------------------------


def test_remote_lock_is_exclusive_stale_taken_over_and_lost(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock_module, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(lock_module, "SETTLE_SECONDS", 0.05)
    store = fsspec_path(s3, "s3://stores/locked.zarr")
    path = store / BUILD_DIR / "lock"
    first = RemoteStoreLock(path, store).acquire()
    record = json.loads(path.read_bytes())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    # A fresh lock: refused, with who holds it.
    with pytest.raises(StoreError, match="another build is writing this store") as error:
        RemoteStoreLock(path, store).acquire()
    assert f"pid {os.getpid()}" in str(error.value) and "\n" not in str(error.value)
    # A build through the CLI is refused too, in one line, exit 2.
    refused = subprocess.run(
        [
            *CLI,
            "build",
            "--src",
            "s3://sources/sav",
            "--out",
            str(store),
            "-q",
            "--storage-options",
            s3.options_json,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "another build is writing this store" in refused.stderr
    # The heartbeat keeps it fresh (every 0.05 s here; a loaded machine may take longer).
    deadline = time.monotonic() + 60
    while json.loads(path.read_bytes())["heartbeat"] <= record["heartbeat"]:
        assert time.monotonic() < deadline, "the lock's heartbeat was not refreshed"
        time.sleep(0.05)
    # Its holder stops (a pause, a partition): the heartbeat ages past the timeout.
    first._stop.set()
    assert first._thread is not None
    first._thread.join()
    stale = {**json.loads(path.read_bytes()), "heartbeat": time.time() - 3600}
    path.write_bytes(json.dumps(stale).encode())
    second = RemoteStoreLock(path, store).acquire()
    assert second.took_over is not None and second.took_over["token"] == first.token
    # The first holder, resuming, finds the lock is no longer its own and stops committing.
    first._stop.clear()
    first._beat()
    with pytest.raises(StoreError, match="lost the store's lock"):
        first.check()
    second.check()
    second.release()
    assert not path.exists()
    first.release()


def fsspec_path(s3: S3, url: str) -> Any:
    from prebake.storage import as_path

    return as_path(url, s3.options)
