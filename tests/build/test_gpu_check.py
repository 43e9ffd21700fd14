"""The GPU check (`prebake bench --gpu`, scripts/gpu_check.sh) in its parts that run without a
GPU: the whole flow with the CPU standing in for the device, the store comparison, the JPEG
source, the report, and the refusals where no CUDA device is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.stores import CLI, ROOT

from prebake.bench.build import write_synthetic
from prebake.bench.gpu import bench_gpu, format_gpu, passed, store_differences
from prebake.sources import discover, open_video

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


def test_the_whole_check_with_the_cpu_as_device() -> None:
    lines: list[str] = []
    results = bench_gpu(
        device="cpu",
        cores=1,
        frames_per_core=4,
        sources=(("64x48 H.264", 64, 48, "train"),),
        echo=lines.append,
    )
    (entry,) = results["sources"]
    assert entry["videos"] == 2 and entry["frames"] == 4
    assert entry["rows_identical"] and entry["differences"] == [] and entry["files"] > 20
    assert passed(results) and "memory_mib" not in results
    assert lines[-1].startswith("gpu check: build, 1 workers: CPU only (Pillow) ")
    report = format_gpu(results)
    assert (
        report[0]
        == f"GPU check: torch {torch.__version__} on cpu, 1 cores (wall time of whole commands)"
    )
    assert any(
        line.startswith("  PASS  bytes of the two stores identical, 64x48 H.264 ")
        and line.endswith(f" {entry['files']} files")
        for line in report
    )
    assert any(
        line.startswith("  FAIL  whole build cpu / CPU-only, 64x48 H.264") for line in report
    )


def test_the_report_of_a_gpu() -> None:
    entry = {
        "label": "1401x1037 JPEG",
        "videos": 32,
        "frames": 2048,
        "resize_ms": {"pillow": 36.0, "device": 0.45},
        "rows_identical": True,
        "build_seconds": {"pillow": 8.0, "device": 1.6},
        "build_fps": {"pillow": 256.0, "device": 1280.0},
        "files": 812,
        "differences": ["g_pixel_values/c/3/0/0/0: bytes differ"],
    }
    results = {
        "device": "cuda",
        "described": "torch 2.13.0+cu128 on cuda:0 (NVIDIA H200)",
        "cores": 16,
        "sources": [entry],
        "memory_mib": {"3840x2160": (2, 412.0)},
    }
    assert format_gpu(results) == [
        "GPU check: torch 2.13.0+cu128 on cuda:0 (NVIDIA H200), 16 cores (wall time of whole commands)",
        "  1401x1037 JPEG (32 videos, 2048 annotated frames):",
        "    resize step per frame: Pillow on one core 36.0 ms, torch on cuda 0.45 ms (80.0 x)",
        "    build, 16 workers: CPU only (Pillow) 256.0 frames/s, --resize torch --device cuda 1280.0 frames/s (5.00 x)",
        "    differs: g_pixel_values/c/3/0/0/0: bytes differ",
        "  device memory of one worker's batch of 2 frames of 3840x2160: 412 MiB (bound 700 MiB)",
        "targets:",
        "  FAIL  bytes of the two stores identical, 1401x1037 JPEG    812 files",
        "  PASS  resize rows identical to Pillow's, 1401x1037 JPEG",
        "  PASS  whole build cuda / CPU-only, 1401x1037 JPEG          5.00 x (target >= 5 x)",
        "  PASS  device memory of a batch, 3840x2160                  412 MiB",
    ]  # fmt: skip
    assert not passed(results)


def test_store_differences_finds_every_changed_byte(train_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(train_store, copy)
    assert store_differences(copy, train_store) == []
    root = json.loads((copy / "zarr.json").read_text())
    root["attributes"]["prebake"]["build"]["resize"] = ["torch 9 on cuda:0 (a GPU)"]
    (copy / "zarr.json").write_text(json.dumps(root))
    assert store_differences(copy, train_store) == []  # what resized, and when: not the data
    shard = next(path for path in sorted((copy / "g_pixel_values").rglob("*")) if path.is_file())
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    masks = next(path for path in sorted((copy / "masks").rglob("*")) if path.is_file())
    masks.unlink()
    root["attributes"]["prebake"]["counts"]["frames"] += 1
    (copy / "zarr.json").write_text(json.dumps(root))
    assert store_differences(copy, train_store) == sorted(
        [f"{masks.relative_to(copy)}: only in {train_store}"]
    ) + sorted([f"{shard.relative_to(copy)}: bytes differ", "zarr.json: bytes differ"])


def test_a_synthetic_jpeg_source_of_any_size(tmp_path: Path) -> None:
    src = write_synthetic(tmp_path / "src", 2, 9, width=61, height=37, layout="frames")
    refs = discover(src, masklets="all")
    assert [(ref.video_id, ref.layout) for ref in refs] == [
        ("sav_990000", "frames"),
        ("sav_990001", "frames"),
    ]
    first, second = (open_video(ref) for ref in refs)
    assert (first.width, first.height, first.frame_indices) == (61, 37, [0, 4, 8])
    assert len(first.masklets) == 3 and second.frame_indices == [0, 4, 8]
    jpeg = src / "JPEGImages" / "sav_990001" / "00004.jpg"
    assert jpeg.stat().st_nlink == 2  # one file for every video's frame


@NO_CUDA
def test_without_cuda_the_check_is_refused_in_one_line() -> None:
    result = subprocess.run([*CLI, "bench", "--gpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("prebake: --gpu-device cuda: ")
    assert len(result.stderr.splitlines()) == 1
    script = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert script.returncode == 2
    assert script.stdout.startswith(f"FAIL  {sys.executable}: no CUDA device for its torch")
