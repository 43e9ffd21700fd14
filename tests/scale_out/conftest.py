"""The S3 server, the mixed source (all layouts and a broken video) local and in S3, the Dask
source, and the one-worker local stores every scale-out build must equal.

The server and the mixed source are made once for the S3 and the Dask tests alike: moto keeps
its buckets in the process, so a second server would find the first one's."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from helpers.runs import HeldFrame, frame_held
from helpers.scale_out import DASK_HELD_VIDEO, LOOPBACK, S3, SHARDS, dask_videos, free_port
from helpers.stores import build_store
from moto.server import ThreadedMotoServer

from prebake.demo import SampleVideo, default_sample, write_sample


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def remote_src(s3: S3, mixed_src: Path) -> str:
    s3.fs.put(f"{mixed_src}/", "sources/sav/", recursive=True)
    return "s3://sources/sav"


@pytest.fixture(scope="session")
def local_reference(mixed_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same source built locally with one worker."""
    out = tmp_path_factory.mktemp("reference") / "store.zarr"
    return build_store(mixed_src, out, **SHARDS)


@pytest.fixture(scope="module")
def dask_src(module_folder: Path) -> Path:
    """The Dask videos, and a short frame-folder video a test can hold open (`dask_held`)."""
    root = write_sample(module_folder / "src", "train", dask_videos())
    shape = dask_videos()[0]
    held = SampleVideo(DASK_HELD_VIDEO, shape.width, shape.height, 9, shape.objects)
    return write_sample(root / "frames", "frames", [held]).parent


@pytest.fixture
def dask_held(dask_src: Path) -> Iterator[HeldFrame]:
    """Frame 8 of DASK_HELD_VIDEO as a named pipe: the worker baking it blocks there."""
    with frame_held(dask_src / "frames" / "JPEGImages" / DASK_HELD_VIDEO) as held:
        yield held


@pytest.fixture(scope="module")
def dask_reference(dask_src: Path, module_folder: Path) -> Path:
    out = module_folder / "dask-reference.zarr"
    return build_store(dask_src, out, **SHARDS)
