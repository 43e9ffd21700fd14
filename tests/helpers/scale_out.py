"""Scale-out tests' pieces: a real S3 API (moto's server) on loopback, the sources and shard
sizes they build, and remote stores compared with local ones."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from helpers.stores import text_column, three_object_videos
from prebake.demo import SampleVideo
from prebake.reader import PrebakedDataset
from prebake.store.layout import BUILD_DIR

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


# A fingerprint holds an mtime here, an ETag in S3 (of another length): compared by role below.
FINGERPRINT_BYTES = ("videos/fingerprint/utf8/", "videos/fingerprint/offsets/c/")


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
        elif not key.startswith(FINGERPRINT_BYTES):  # compared below
            assert data == (reference / key).read_bytes(), key
    remote = zarr.open_group(
        zarr.storage.FsspecStore.from_url(url, storage_options=s3.options), mode="r"
    )
    local = zarr.open_group(reference, mode="r")
    assert same_fingerprints(remote, local)
    for name in ("items/video", "items/mask_row", "frames/frame_index"):
        assert np.array_equal(remote[name][:], local[name][:]), name  # type: ignore[index]
    assert text_column(remote, "videos/source") == text_column(local, "videos/source")


def same_fingerprints(remote: zarr.Group, local: zarr.Group) -> bool:
    """Source fingerprints by role, each stamp's first value: a file's size or a folder's
    frame count. The second differs with where the source sat: an mtime here, an ETag in S3."""

    def firsts(root: zarr.Group) -> list[dict[str, Any]]:
        return [
            {role: stamp[0] for role, stamp in json.loads(str(text)).items()}
            for text in text_column(root, "videos/fingerprint")
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


# -- Dask ----------------------------------------------------------------------------------------


DASK_HELD_VIDEO = "sav_710099"  # the Dask source's frame-folder video (tests hold it open)


def dask_videos() -> list[SampleVideo]:
    # Long enough (about a second of baking each) for a worker to be killed mid-unit.
    return three_object_videos("sav_7100", 320, 240, first_length=60, step=8)
