"""Issue 16: `prebake build --resize torch` gives the very bytes of a Pillow build, whatever the
layout, orientation and Pillow rule; resumes and appends may switch paths; a device failure
fails one video with one line and `--retry-failed` bakes it again; `--device cuda` without a
GPU is refused before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from helpers.processes import kill9
from helpers.runs import FRAMES_PER_SHARD, ITEMS_PER_SHARD, start_build, wait_for
from helpers.stores import CLI, assert_same_store, build_store, items_by_key, records

from prebake.build import BuildOptions, build
from prebake.build.resizing import BATCH_FRAMES
from prebake.demo import SampleObject, SampleVideo, write_sample
from prebake.errors import PrebakeError
from prebake.info import format_info, store_info

CUDA = torch.cuda.is_available()
DISC = SampleObject("manual", "disc", (230, 60, 40), (0.3, 0.4), (0.004, 0.003), 0.2)
BOX = SampleObject("auto", "box", (40, 200, 90), (0.6, 0.6), (-0.003, -0.002), 0.15)


@pytest.fixture(scope="module")
def mixed(module_folder: Path) -> Path:
    """All three layouts in one source; portrait frames taller than 448 (where the two Pillow
    rules differ) and landscape ones, odd sizes where JPEG allows them, and a video of more
    annotated frames than a batch holds."""
    root = module_folder / "src"
    long = 4 * BATCH_FRAMES + 4  # BATCH_FRAMES + 1 annotated frames
    write_sample(
        root / "train",
        "train",
        [
            SampleVideo("sav_160001", 456, 560, long, (DISC, BOX)),
            SampleVideo("sav_160002", 320, 240, 21, (DISC,), write_auto=False),
        ],
    )
    write_sample(root / "frames", "frames", [SampleVideo("sav_160003", 243, 461, 17, (DISC, BOX))])
    write_sample(root / "val", "png", [SampleVideo("sav_160004", 301, 207, 13, (DISC, BOX))])
    return root


def mixed_build(src: Path, out: Path, **options: object) -> Path:
    return build_store(src, out, frames_per_shard=3, items_per_shard=5, **options)


@pytest.mark.parametrize("rule", [13, 12])
def test_a_torch_build_is_byte_identical_to_a_pillow_build(
    rule: int, mixed: Path, tmp_path: Path
) -> None:
    pillow = mixed_build(mixed, tmp_path / "pillow.zarr", pillow_rule=rule)
    torched = mixed_build(mixed, tmp_path / "torch.zarr", pillow_rule=rule, resize="torch")
    assert_same_store(torched, pillow)  # every file bitwise, attributes apart from `build`
    built = {
        name: json.loads((store / "zarr.json").read_text())["attributes"]["prebake"]["build"]
        for name, store in (("pillow", pillow), ("torch", torched))
    }
    assert built["pillow"]["resize"] == ["Pillow"]
    assert built["torch"]["resize"] == [f"torch {torch.__version__} on cpu"]
    shown = format_info(store_info(torched))
    workers = built["torch"]["workers"]
    used = f"{workers} worker" + "s" * (workers != 1)
    assert f", {used}; images resized by torch {torch.__version__} on cpu" in shown
    root = zarr.open_group(pillow, mode="r")
    assert root.attrs["prebake"]["counts"]["frames"] == 17 + 6 + 5 + 4
    assert root.attrs["prebake"]["counts"]["videos_failed"] == 0


def test_the_two_pillow_rules_differ_on_this_source(mixed: Path, tmp_path: Path) -> None:
    """So that the test above checks both pass orders, not one twice."""
    stores = [
        mixed_build(mixed, tmp_path / f"{rule}.zarr", pillow_rule=rule, resize="torch")
        for rule in (13, 12)
    ]
    first, second = (zarr.open_group(store, mode="r")["pixel_values"][:] for store in stores)
    assert not np.array_equal(first, second)


def test_resume_and_append_with_the_other_path(src: Path, reference: Path, tmp_path: Path) -> None:
    """The bytes are the same, so the path is no setting: a build killed under Pillow resumes
    under torch, and the store says both baked it."""
    out = tmp_path / "store.zarr"
    process = start_build(src, out)
    wait_for(lambda: len(records(out)) >= 2, process, "two units are committed")
    kill9(process)
    assert len(records(out)) < 6
    build_store(
        src, out, frames_per_shard=FRAMES_PER_SHARD, items_per_shard=ITEMS_PER_SHARD, resize="torch"
    )
    assert_same_store(out, reference)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["prebake"]
    assert attrs["build"]["resize"] == ["Pillow", f"torch {torch.__version__} on cpu"]

    grown = tmp_path / "grown.zarr"
    shards = {"frames_per_shard": FRAMES_PER_SHARD, "items_per_shard": ITEMS_PER_SHARD}
    build_store(src, grown, limit=3, resize="torch", **shards)
    build_store(src, grown, **shards)  # the other three added by Pillow
    assert items_by_key(zarr.open_group(grown, mode="r")) == items_by_key(
        zarr.open_group(reference, mode="r")
    )
    attrs = json.loads((grown / "zarr.json").read_text())["attributes"]["prebake"]
    assert attrs["build"]["resize"] == [f"torch {torch.__version__} on cpu"]
    assert attrs["appends"][0]["resize"] == ["Pillow"]


SITECUSTOMIZE = '''
"""Test fault: the device fails for one video, in every process (workers are spawned)."""
import os

VIDEO, KIND = os.environ["PREBAKE_TEST_DEVICE_FAULT"].split(":")
if VIDEO:
    from prebake.build import resizing

    def failing(self, n):
        if VIDEO in self.where:
            import torch

            if KIND == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError("CUDA error: an illegal memory access was encountered\\nmore")
        return original(self, n)

    original = resizing.DeviceFrames._resize_batch
    resizing.DeviceFrames._resize_batch = failing
    if KIND == "broken":  # as a CUDA context is after such an error
        resizing.context_usable = lambda device: False
'''


@pytest.mark.parametrize("kind", ["oom", "broken"])
def test_a_device_failure_fails_one_video_and_retry_bakes_it(
    kind: str, src: Path, reference: Path, tmp_path: Path
) -> None:
    """Out of memory fails the video; an error that leaves the CUDA context unusable fails it
    too, and the worker exits at its next video, so that a fresh one bakes the rest."""
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    victim = "sav_700005"  # the longest video: baked first, the worker has more to do after it
    out = tmp_path / "store.zarr"
    args = [
        *CLI, "build", "--src", str(src), "--out", str(out), "--masklets", "all", "--workers",
        "1", "--frames-per-shard", str(FRAMES_PER_SHARD), "--items-per-shard",
        str(ITEMS_PER_SHARD), "--resize", "torch", "-q",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(faults), "PREBAKE_TEST_DEVICE_FAULT": f"{victim}:{kind}"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 1, result.stderr
    failures = [line for line in result.stderr.splitlines() if line.startswith("  sav_")]
    what = (
        "out of memory: tried to allocate 2.00 GiB"
        if kind == "oom"
        else "RuntimeError: CUDA error: an illegal memory access was encountered more"
    )
    assert len(failures) == 1 and failures[0].startswith(f"  {victim}: "), result.stderr
    assert f"cpu failed resizing 11 frames of 240x176 ({what}" in failures[0]
    assert failures[0].endswith("--retry-failed bakes it again")
    want = items_by_key(zarr.open_group(reference, mode="r"))
    if kind == "broken":  # the rest was baked by fresh workers; retrying is as for "oom"
        assert "exits, its CUDA context is unusable" in result.stderr
        got = items_by_key(zarr.open_group(out, mode="r"))
        assert got == {key: value for key, value in want.items() if key[0] != victim}
        return
    env["PREBAKE_TEST_DEVICE_FAULT"] = ":"
    result = subprocess.run(
        [*args, "--retry-failed"], capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "1 failed videos retried (1 baked now)" in result.stdout
    assert items_by_key(zarr.open_group(out, mode="r")) == want


def test_bad_resize_options_are_refused_before_anything_is_written(
    mixed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store.zarr"
    for options, message in [
        ({"resize": "opencv"}, "--resize must be pillow or torch, not 'opencv'"),
        ({"resize": "torch", "device": "tpu"}, "--device must be cpu, cuda or cuda:N, not 'tpu'"),
        ({"device": "cuda"}, "--device cuda resizes with torch: add --resize torch"),
    ]:
        with pytest.raises(PrebakeError, match=message):
            build(BuildOptions(src=mixed, out=out, progress=False, **options))  # type: ignore[arg-type]
        assert not out.exists()


@pytest.mark.skipif(CUDA, reason="a CUDA device is present")
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(
    train_store: Path, sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    before = {path: path.read_bytes() for path in train_store.rglob("*") if path.is_file()}
    for out in (tmp_path / "new.zarr", train_store):
        result = subprocess.run(
            [*CLI, "build", "--src", str(sample_sources["train"]), "--out", str(out),
             "--resize", "torch", "--device", "cuda", "-q"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith("prebake: --device cuda: ")
        assert "built without CUDA" in result.stderr or "no CUDA device" in result.stderr
    assert not (tmp_path / "new.zarr").exists()
    after = {path: path.read_bytes() for path in train_store.rglob("*") if path.is_file()}
    assert after == before


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_a_cuda_build_is_byte_identical_to_a_pillow_build(mixed: Path, tmp_path: Path) -> None:
    for rule in (13, 12):
        pillow = mixed_build(mixed, tmp_path / f"pillow{rule}.zarr", pillow_rule=rule)
        cuda = mixed_build(
            mixed, tmp_path / f"cuda{rule}.zarr", pillow_rule=rule, resize="torch", device="cuda"
        )
        assert_same_store(cuda, pillow)
        resize = json.loads((cuda / "zarr.json").read_text())["attributes"]["prebake"]["build"]
        assert resize["resize"][0].startswith(f"torch {torch.__version__} on cuda:")
