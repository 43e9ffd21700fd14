"""Issue 6, scale-out: builds from and into a real S3 API (moto's server on 127.0.0.1, reached
over HTTP through s3fs), builds on Dask LocalClusters (one with a worker SIGKILLed mid-unit),
remote reads, verify and info; every store bitwise equal to a one-worker local build. Nothing
is mocked, and nothing may listen on anything but 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import torch
import zarr
from conftest import CLI, build_store, children_of, items_by_key, three_object_videos
from moto.server import ThreadedMotoServer
from test_build_reliability import assert_same_store, records

from prebake.build import BuildOptions, build
from prebake.demo import SampleVideo, default_sample, write_sample
from prebake.errors import StoreError
from prebake.reader import PrebakedDataset
from prebake.store import lock as lock_module
from prebake.store.layout import BUILD_DIR
from prebake.store.lock import RemoteStoreLock
from prebake.store.plan import UnitPlan
from prebake.store.schema import DATA_ARRAYS
from prebake.verify import verify_store

SHARDS = {"frames_per_shard": 4, "items_per_shard": 8}
SHARD_ARGS = ["--frames-per-shard", "4", "--items-per-shard", "8", "--masklets", "all"]
LOOPBACK = "127.0.0.1"


# -- a real S3 API on loopback -------------------------------------------------------------------


@dataclasses.dataclass
class S3:
    endpoint: str
    options: dict[str, Any]
    fs: Any

    @property
    def options_json(self) -> str:
        return json.dumps(self.options)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    endpoint = f"http://{LOOPBACK}:{port}"
    # Dummy credentials: moto accepts any; nothing reads the environment's.
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    for bucket in ("sources", "stores"):
        fs.mkdir(bucket)
    try:
        yield S3(endpoint, options, fs)
    finally:
        server.stop()


def renamed(videos: list[SampleVideo], first: int) -> list[SampleVideo]:
    return [
        dataclasses.replace(video, video_id=f"sav_{first + i}") for i, video in enumerate(videos)
    ]


@pytest.fixture(scope="module")
def mixed_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All three layouts in one source, and a truncated mp4 (a video that fails to bake)."""
    root = tmp_path_factory.mktemp("mixed") / "sav"
    write_sample(root / "train", "train")
    write_sample(root / "frames", "frames", renamed(default_sample()[:2], 910001))
    write_sample(root / "val", "png", renamed(default_sample()[1:], 920001))
    broken = write_sample(root / "broken", "train", renamed(default_sample()[2:], 930001))
    mp4 = broken / "sav_930001.mp4"
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    return root


@pytest.fixture(scope="module")
def remote_src(s3: S3, mixed_src: Path) -> str:
    s3.fs.put(f"{mixed_src}/", "sources/sav/", recursive=True)
    return "s3://sources/sav"


@pytest.fixture(scope="module")
def local_reference(mixed_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same source built locally with one worker."""
    out = tmp_path_factory.mktemp("reference") / "store.zarr"
    return build_store(mixed_src, out, **SHARDS)


def root_attrs(metadata: bytes) -> dict[str, Any]:
    """The root's prebake attributes less what may differ between the builds compared here:
    timing and worker count, and where the source was (its URL or its folder)."""
    attrs = dict(json.loads(metadata)["attributes"]["prebake"])
    del attrs["build"]
    attrs["source"] = {k: v for k, v in attrs["source"].items() if k != "root"}
    settings_source = attrs["settings"]["source"]
    attrs["settings"] = {
        **attrs["settings"],
        "source": {k: v for k, v in settings_source.items() if k != "root"},
    }
    attrs["failures"] = [  # the same reason, after the file's local path or URL
        {**failure, "path": "", "reason": failure["reason"].removeprefix(failure["path"])}
        for failure in attrs["failures"]
    ]
    return attrs


def assert_same_remote_store(s3: S3, url: str, reference: Path) -> None:
    """Every object of the remote store bitwise equal to the local store's file of that name;
    the root attributes equal apart from timing and the source's location."""
    prefix = url.removeprefix("s3://")
    keys = sorted(key.removeprefix(prefix + "/") for key in s3.fs.find(prefix))
    files = sorted(str(p.relative_to(reference)) for p in reference.rglob("*") if p.is_file())
    assert keys == files
    assert not any(key.startswith(BUILD_DIR) for key in keys)
    for key in files:
        data = s3.fs.cat_file(f"{prefix}/{key}")
        if key == "zarr.json":
            assert root_attrs(data) == root_attrs((reference / key).read_bytes())
        elif not key.startswith("videos/fingerprint/c/"):  # compared below
            assert data == (reference / key).read_bytes(), key
    remote = zarr.open_group(
        zarr.storage.FsspecStore.from_url(url, storage_options=s3.options), mode="r"
    )
    local = zarr.open_group(reference, mode="r")
    assert same_fingerprints(remote, local)
    for name in ("items/video", "items/mask_row", "videos/source", "frames/frame_index"):
        assert np.array_equal(remote[name][:], local[name][:]), name  # type: ignore[index]


def same_fingerprints(remote: zarr.Group, local: zarr.Group) -> bool:
    """Source fingerprints by role, each stamp's first value: a file's size or a folder's
    frame count. The second differs with where the source sat: an mtime here, an ETag in S3."""

    def firsts(root: zarr.Group) -> list[dict[str, Any]]:
        return [
            {role: stamp[0] for role, stamp in json.loads(str(text)).items()}
            for text in root["videos/fingerprint"][:]
        ]

    return firsts(remote) == firsts(local)


def assert_same_items(remote: PrebakedDataset, local: PrebakedDataset, step: int) -> None:
    """Every `step`-th item equal (a request per row and array makes remote reads slow)."""
    assert len(remote) == len(local) > 0
    for index in range(0, len(local), step):
        got, expected = remote[index], local[index]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), (index, key)
            else:
                assert got[key] == value, (index, key)


# -- listening sockets ---------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = children_of(todo.pop())
        found += children
        todo += children
    return found


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of `pids` holds open."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:  # the process ended meanwhile
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                found.add((_address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def test_listening_sockets_are_seen() -> None:
    """The socket check itself: it sees a loopback listener of this process, and a wildcard one."""
    with socket.socket() as loopback, socket.socket() as wildcard:
        loopback.bind((LOOPBACK, 0))
        loopback.listen()
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen()
        seen = listening([os.getpid()])
        assert (LOOPBACK, loopback.getsockname()[1]) in seen
        assert ("0.0.0.0", wildcard.getsockname()[1]) in seen


def watch_build(
    args: list[str], timeout: float = 180
) -> tuple[subprocess.CompletedProcess[str], set]:
    """Run a CLI build; meanwhile collect the listening sockets of it, its descendants and this
    process (which runs the S3 server)."""
    process = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        seen |= listening([os.getpid(), process.pid, *descendants(process.pid)])
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=max(1, deadline - time.monotonic()))
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), seen


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
    loader = torch.utils.data.DataLoader(subset, batch_size=2, num_workers=2)
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


def test_dask_build_from_s3_to_s3_listens_on_loopback_only(
    s3: S3, remote_src: str, local_reference: Path
) -> None:
    """The scale-out case on one machine: Dask workers stream the source from the bucket and
    upload shards; the client commits. Equal to the local build; nothing listens beyond
    127.0.0.1 (the S3 server, the scheduler, the workers and their nannies)."""
    url = "s3://stores/dask.zarr"
    args = ["build", "--src", remote_src, "--out", url, "--dask", "local:2", "-q"]
    result, seen = watch_build([*args, *SHARD_ARGS, "--storage-options", s3.options_json])
    assert result.returncode == 1, result.stderr  # 1: the truncated video failed, as locally
    assert "sav_930001: s3://sources/sav/broken/sav_930001.mp4: " in result.stderr
    assert "Traceback" not in result.stderr
    assert_same_remote_store(s3, url, local_reference)
    assert len(seen) >= 4  # S3, the scheduler, and at least a worker and a nanny
    assert {address for address, _ in seen} == {LOOPBACK}, seen


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
    process.communicate()
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
    videos = len(zarr.open_group(local_reference, mode="r")["videos/video_id"][:])
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
    # The heartbeat keeps it fresh.
    time.sleep(0.3)
    assert json.loads(path.read_bytes())["heartbeat"] > record["heartbeat"]
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


# -- Dask ----------------------------------------------------------------------------------------


def _videos() -> list[SampleVideo]:
    # Long enough (about a second of baking each) for a worker to be killed mid-unit.
    return three_object_videos("sav_7100", 320, 240, first_length=60, step=8)


@pytest.fixture(scope="module")
def dask_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("dask") / "src", "train", _videos())


@pytest.fixture(scope="module")
def dask_reference(dask_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dask-reference") / "store.zarr"
    return build_store(dask_src, out, **SHARDS)


def test_dask_local_cluster_equals_one_worker(
    dask_src: Path, dask_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store.zarr"
    result = subprocess.run(
        dask_build_args(dask_src, out),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert_same_store(out, dask_reference)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["prebake"]
    assert attrs["build"]["workers"] == 2


def dask_build_args(src: Path, out: Path) -> list[str]:
    return [
        *CLI,
        "build",
        "--src",
        str(src),
        "--out",
        str(out),
        "--dask",
        "local:2",
        "-q",
        *SHARD_ARGS,
    ]


def test_dask_worker_killed_mid_unit(dask_src: Path, dask_reference: Path, tmp_path: Path) -> None:
    """SIGKILL a Dask worker while it writes a shard: Dask reruns its unit on the other worker
    (the nanny restarts the dead one), the build completes and the store is identical."""
    out = tmp_path / "store.zarr"
    process = subprocess.Popen(
        dask_build_args(dask_src, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    temporary = out / BUILD_DIR / "tmp"
    victim = None
    deadline = time.monotonic() + 120
    while victim is None:
        assert process.poll() is None, "the build ended before a worker could be killed"
        assert time.monotonic() < deadline, "no shard was seen being written"
        # A temporary shard is named <array>.<shard>.<pid of the worker writing it>.
        names = os.listdir(temporary) if temporary.is_dir() else []
        pids = {
            int(name.rsplit(".", 1)[1]) for name in names if re.fullmatch(r".+\.\d+\.\d+", name)
        }
        victim = next(iter(pids & set(descendants(process.pid))), None)  # a worker process
        time.sleep(0.002)
    committed = len(records(out))
    os.kill(victim, signal.SIGKILL)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    assert committed < len(_videos()), "the kill was meant to land while units were left"
    assert "Traceback" not in stderr
    assert_same_store(out, dask_reference)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["prebake"]
    assert attrs["failures"] == []


def test_dask_unit_whose_worker_always_dies_is_recorded_failed(
    dask_src: Path, dask_reference: Path, tmp_path: Path
) -> None:
    """A video whose worker is killed each time it runs (as a decoder crash would) is recorded
    as failed once it died alone too; the units that only shared its worker are baked."""
    out = tmp_path / "store.zarr"
    # Dask gives up on a unit at its first death here, so units merely queued beside the
    # victim are given up too: they must survive their retry alone.
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    args = [*CLI, "build", "--src", str(dask_src), "--out", str(out), "--dask", "local:2", "-q"]
    process = subprocess.Popen(
        [*args, *SHARD_ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    plan = out / BUILD_DIR / "plan.json"
    deadline = time.monotonic() + 120
    while not plan.is_file():
        assert process.poll() is None and time.monotonic() < deadline, "no plan was written"
        time.sleep(0.01)
    units = [UnitPlan.from_json(unit) for unit in json.loads(plan.read_text())["units"]]
    victim = max(units, key=lambda unit: len(unit.frame_indices))  # baked first
    first = victim.frame_row // SHARDS["frames_per_shard"]
    shards = range(first, first + len(victim.frame_indices) // SHARDS["frames_per_shard"] + 1)
    kills = 0
    while process.poll() is None:  # kill any worker writing an image shard of the victim
        temporary = out / BUILD_DIR / "tmp"
        for name in os.listdir(temporary) if temporary.is_dir() else []:
            match = re.fullmatch(r"g_pixel_values\.(\d+)\.(\d+)", name)
            if match and int(match[1]) in shards and int(match[2]) in descendants(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(match[2]), signal.SIGKILL)
                    kills += 1
        time.sleep(0.002)
    _, stderr = process.communicate()
    assert process.returncode == 1, stderr
    assert kills >= 2, "the victim was meant to be killed in the crowd, then alone"
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["prebake"]
    assert [failure["video_id"] for failure in attrs["failures"]] == [victim.video_id]
    assert "the worker process baking this video died" in attrs["failures"][0]["reason"]
    assert f"  {victim.video_id}: " in stderr and "Traceback" not in stderr

    # Every other video's shards are the reference's, bytes and all; the victim left none.
    def shards(store: Path) -> set[Path]:
        return {
            p.relative_to(store)
            for name in DATA_ARRAYS
            for p in (store / name / "c").rglob("*")
            if p.is_file()
        }

    stored, reference = shards(out), shards(dask_reference)
    assert stored and stored < reference
    for relative in stored:
        assert (out / relative).read_bytes() == (dask_reference / relative).read_bytes(), relative


def test_dask_ctrl_c_stops_cleanly_and_resumes(
    dask_src: Path, dask_reference: Path, tmp_path: Path
) -> None:
    """A Ctrl-C reaches the client and the local cluster's workers (one process group): one
    line, exit 130, the cluster stopped; the same command resumes to an identical store."""
    out = tmp_path / "store.zarr"
    args = [*CLI, "build", "--src", str(dask_src), "--out", str(out), "--dask", "local:2", "-q"]
    process = subprocess.Popen(
        [*args, *SHARD_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not records(out):
        assert process.poll() is None and time.monotonic() < deadline, "no unit was committed"
        time.sleep(0.01)
    workers = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "the cluster's processes outlived the build"
        time.sleep(0.05)
    again = subprocess.run([*args, *SHARD_ARGS], capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert_same_store(out, dask_reference)


def test_without_dask_nothing_of_dask_is_imported(tmp_path: Path) -> None:
    """A local build, the reader, verify and info never import distributed or dask."""
    src = write_sample(tmp_path / "src", "train", default_sample()[2:])
    code = f"""
import sys
import prebake.build, prebake.cli, prebake.reader, prebake.verify, prebake.info, prebake.storage
from prebake.build import BuildOptions, build
from prebake.reader import PrebakedDataset
from prebake.verify import verify_store
from prebake.info import store_info
report = build(BuildOptions(src={str(src)!r}, out={str(tmp_path / "s.zarr")!r}, progress=False))
assert report.videos_failed == 0
PrebakedDataset({str(tmp_path / "s.zarr")!r})[0]
assert verify_store({str(tmp_path / "s.zarr")!r}, progress=False).ok
store_info({str(tmp_path / "s.zarr")!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
print(loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", "if __name__ == '__main__':\n" + _indent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.strip().splitlines())
