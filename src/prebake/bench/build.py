"""Build benchmark: worker scaling, overhead over the bare compute, peak memory of the build.

Measured in one run on the same videos:

- decoder: PyAV as a build decodes (`Video.iter_frames`: every frame decoded up to the last
  annotated one, each annotated frame converted to RGB as OpenCV converts it), in this process;
- bare compute: what a build cannot avoid, in this process: decode every frame, both reference
  resizes of each annotated frame, and each item's RLE decode, mask resize and prompt grid;
  nothing is encoded or written;
- the resize step per frame, both sizes, as a worker runs it, on one core: Pillow, and
  `bicubic_resize` on the CPU (and on the GPU, where CUDA is present); and what share of a
  build's CPU the Pillow resize step is, which bounds what any faster resize can gain on the
  same cores (if the resizes cost nothing);
- `prebake build` with 1 and with 2 workers, each a fresh command (wall time of the whole
  command: start-up, planning, baking, commit), frames/s; with 2 workers and `--resize torch`
  (`--device cpu`, and `cuda` where present); and, when distributed is installed,
  with `--dask local:2` (a Dask LocalCluster of two worker processes, started by the command);
- peak RSS of the whole build (the command and every process it starts), sampled from /proc;
  each process's own peak (VmHWM) is kept, and their sum (an upper bound of the tree's peak,
  as if every process peaked at once) is what the target checks. Measured with 2 workers on
  short and on long 1280 x 720 videos, to show that memory does not grow with video length.

The throughput videos are `src` when it holds enough annotated frames, otherwise synthetic
1280 x 720 videos (the targets are set for 720p); the memory videos are always synthetic.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from prebake import transforms
from prebake.bench.resize import first_frames, resize_time
from prebake.bench.targets import BUILD_TARGETS, format_verdict
from prebake.build import tune_memory
from prebake.build.resizing import Resizing
from prebake.demo import SampleObject, SampleVideo, _annotation, render
from prebake.errors import PrebakeError
from prebake.sources import Video, discover, open_video
from prebake.sources.annotations import FRAME_STRIDE
from prebake.store.layout import StoreDir

WIDTH, HEIGHT = 1280, 720
THROUGHPUT_VIDEOS = 8
# 24 fps frames per video: 48 annotated, 384 in all; enough that the fixed costs of a command
# (start-up, spawning workers, planning, commit: about a second) do not decide the ratios.
THROUGHPUT_FRAMES = 192
MIN_SRC_FRAMES = 300  # annotated frames `src` needs to be used for throughput instead
SHORT_FRAMES = THROUGHPUT_FRAMES  # the 2-worker throughput build is the short-video one
LONG_FRAMES = 5 * SHORT_FRAMES
CYCLE = 24  # distinct frames rendered per synthetic video; longer videos repeat them
SAMPLE_SECONDS = 0.05
OBJECTS = (
    SampleObject("manual", "disc", (230, 60, 40), (0.3, 0.4), (0.004, 0.002), 0.15),
    SampleObject("manual", "box", (40, 200, 90), (0.6, 0.6), (-0.003, -0.002), 0.12),
    SampleObject("auto", "box", (30, 80, 220), (0.35, 0.45), (0.003, 0.001), 0.2),
)


def bench_build(src: Path) -> dict[str, Any]:
    """Frames/s of the bare compute and of builds with 1 and 2 workers; peak RSS of builds."""
    with tempfile.TemporaryDirectory(prefix="prebake-bench-build-") as scratch:
        work = Path(scratch)
        synthetic = _annotated_frames(src) < MIN_SRC_FRAMES
        throughput_src = src
        if synthetic:
            throughput_src = work / "throughput"
            write_synthetic(throughput_src, THROUGHPUT_VIDEOS, THROUGHPUT_FRAMES)
        frames = _annotated_frames(throughput_src)
        videos = len(discover(throughput_src, masklets="all"))
        decoded, decoder_seconds = decoder_speed(throughput_src)
        bare, bare_cpu = bare_compute(throughput_src)
        resize_ms = resize_speeds(throughput_src)
        one = run_build(throughput_src, work / "one.zarr", workers=1)
        two = run_build(throughput_src, work / "two.zarr", workers=2)
        torched = {
            device: run_build(
                throughput_src,
                work / f"torch-{device}.zarr",
                workers=2,
                extra=("--resize", "torch", "--device", device),
            )
            for device in _torch_devices()
        }
        dask = None
        if importlib.util.find_spec("distributed") is not None:
            dask = run_build(throughput_src, work / "dask.zarr", workers=2, dask="local:2")
        if synthetic:
            short = two  # the same 2-worker build on short 720p videos
        else:
            write_synthetic(work / "short", 2, SHORT_FRAMES)
            short = run_build(work / "short", work / "short.zarr", workers=2)
        write_synthetic(work / "long", 2, LONG_FRAMES)
        long = run_build(work / "long", work / "long.zarr", workers=2)
    results: dict[str, Any] = {
        "source": "synthetic 1280x720" if synthetic else str(src),
        "videos": videos,
        "frames": frames,
        "cores": os.cpu_count(),
        "decoded_video_frames": decoded,
        "frames_per_s": {
            "decoder": frames / decoder_seconds,
            "bare_compute": frames / bare,
            "workers_1": frames / one.seconds,
            "workers_2": frames / two.seconds,
        },
        "ratios": {
            "scaling": one.seconds / two.seconds,
            "overhead": bare / one.seconds,
            # The Pillow resize step's share of a build's CPU per frame (1 worker: the whole
            # command's processes), and the speed-up of the same cores if it cost nothing
            # (say, on a GPU): 1 / (1 - share).
            "resize_share": resize_ms["pillow"] / (1000 * one.cpu_seconds / frames),
        },
        "resize_ms_per_frame": resize_ms,
        # CPU time / wall time: how many cores each build really got. On a busy machine a
        # 2-worker build gets less than 2, and its speed-up says more about the machine.
        "cores_used": {
            "workers_1": one.cpu_seconds / one.seconds,
            "workers_2": two.cpu_seconds / two.seconds,
        },
        "cpu_ms_per_frame": {
            "bare_compute": 1000 * bare_cpu / frames,
            "workers_1": 1000 * one.cpu_seconds / frames,
            "workers_2": 1000 * two.cpu_seconds / frames,
        },
        "rss": {
            "short": short.memory(SHORT_FRAMES),
            "long": long.memory(LONG_FRAMES),
        },
    }
    for device, run in torched.items():
        results["frames_per_s"][f"torch_{device}_2"] = frames / run.seconds
        results["cores_used"][f"torch_{device}_2"] = run.cpu_seconds / run.seconds
        results["cpu_ms_per_frame"][f"torch_{device}_2"] = 1000 * run.cpu_seconds / frames
    results["verdicts"] = build_verdicts(results)
    if dask is not None:
        results["frames_per_s"]["dask_local_2"] = frames / dask.seconds
        results["cores_used"]["dask_local_2"] = dask.cpu_seconds / dask.seconds
        results["cpu_ms_per_frame"]["dask_local_2"] = 1000 * dask.cpu_seconds / frames
    return results


def build_verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The build targets (`prebake.bench.targets.BUILD_TARGETS`) checked on `results`."""
    rss = results["rss"]
    measured = {
        **results["ratios"],
        "rss_mib": rss["long"]["sum_of_peaks_mib"],
        "length_growth": rss["long"]["sum_of_peaks_mib"] / rss["short"]["sum_of_peaks_mib"],
    }
    return [target.check(measured[target.key]) for target in BUILD_TARGETS]


def format_build(results: dict[str, Any]) -> list[str]:
    speed, rss = results["frames_per_s"], results["rss"]
    short, long = rss["short"], rss["long"]
    lines = [
        f"build: {results['source']} ({results['videos']} videos, {results['frames']} annotated "
        f"frames; {results['cores']} cores; wall time of whole commands)",
        f"  {'decoder (PyAV as a build decodes)':38s} {speed['decoder']:9.1f} frames/s "
        f"({speed['decoder'] * results['decoded_video_frames'] / results['frames']:.1f} video "
        "frames/s decoded, annotated ones converted to RGB)",
        f"  {'bare compute (decode, resizes, masks)':38s} {speed['bare_compute']:9.1f} frames/s",
        f"  {'prebake build --workers 1':38s} {speed['workers_1']:9.1f} frames/s",
        f"  {'prebake build --workers 2':38s} {speed['workers_2']:9.1f} frames/s",
    ]
    for device in ("cpu", "cuda"):
        if f"torch_{device}_2" in speed:
            torched = speed[f"torch_{device}_2"]
            lines.append(
                f"  {'  ... --resize torch --device ' + device:38s} {torched:9.1f} frames/s "
                f"({torched / speed['workers_2']:.2f} x Pillow's; CPU ms per frame "
                f"{results['cpu_ms_per_frame'][f'torch_{device}_2']:.1f})"
            )
    lines += format_resize(results)
    if "dask_local_2" in speed:
        lines.append(
            f"  {'prebake build --dask local:2':38s} {speed['dask_local_2']:9.1f} frames/s "
            f"({speed['dask_local_2'] / speed['workers_2']:.2f} x --workers 2; CPU ms per frame "
            f"{results['cpu_ms_per_frame']['dask_local_2']:.1f}, cores used "
            f"{results['cores_used']['dask_local_2']:.2f})"
        )
    lines += [
        "  CPU ms per frame: bare {bare_compute:.1f}, 1 worker {workers_1:.1f}, "
        "2 workers {workers_2:.1f}".format(**results["cpu_ms_per_frame"])
        + "; cores used: 1 worker {workers_1:.2f}, 2 workers {workers_2:.2f}".format(
            **results["cores_used"]
        ),
    ]
    for run in (short, long):
        lines.append(
            f"  peak RSS, 2 workers, {run['video_frames']}-frame 720p videos: "
            f"{run['sum_of_peaks_mib']:.0f} MiB summed over {run['processes']} processes "
            f"(largest {run['largest_process_mib']:.0f} MiB, sampled tree {run['tree_mib']:.0f} MiB)"
        )
    lines.append("targets:")
    lines.extend(format_verdict(verdict) for verdict in results["verdicts"])
    return lines


def format_resize(results: dict[str, Any]) -> list[str]:
    """The resize step per frame of each path, and what a free resize could gain."""
    resize, share = results["resize_ms_per_frame"], results["ratios"]["resize_share"]
    pillow = resize["pillow"]
    shown = [f"Pillow {pillow:.1f} ms"] + [
        f"torch on {device} {resize[key]:.2f} ms ({pillow / resize[key]:.2f} x Pillow's speed)"
        for device, key in (("cpu", "torch_cpu"), ("cuda", "torch_cuda"))
        if key in resize
    ]
    return [
        "  resize step per frame (both sizes, stored forms), one core: " + ", ".join(shown),
        f"  Pillow's resize step is {100 * share:.0f} % of a 1-worker build's CPU per frame: "
        f"with it free (on a GPU), the same cores bake at most {1 / (1 - share):.2f} x faster",
    ]


def resize_speeds(src: Path) -> dict[str, float]:
    """ms per frame of the resize step of each path on the first annotated frames of `src`;
    refuses paths that give other rows than Pillow's (none should)."""
    frames = first_frames(src)
    speeds, digests = {}, {}
    for device in ("", *_torch_devices()):
        key = f"torch_{device}" if device else "pillow"
        resizing = Resizing("torch", device) if device else Resizing()
        speeds[key], digests[key] = resize_time(frames, resizing)
    if len(set(digests.values())) != 1:
        raise PrebakeError(f"{src}: the resize paths gave different rows ({digests})")
    return speeds


def _torch_devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def write_synthetic(
    root: Path,
    videos: int,
    frames: int,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    layout: str = "train",
) -> Path:
    """`videos` SA-V-format videos of `frames` frames of `width` x `height` with manual and
    auto JSON: H.264 mp4s (`train`; even sizes only), or every 4th frame as a JPEG
    (`frames`, SAM 2's extracted frames; any size).

    Rendering a 720p sample frame costs ~50 ms, so CYCLE distinct frames are rendered once and
    repeated; every video holds the same frames (only throughput and memory are measured).
    """
    root.mkdir(parents=True, exist_ok=True)
    shape = SampleVideo("sav_990000", width, height, frames, OBJECTS)
    cycle = [render(shape, index) for index in range(min(CYCLE, frames))]
    annotated = [cycle[index % len(cycle)][1] for index in range(0, frames, FRAME_STRIDE)]
    annotations = {kind: _annotation(shape, kind, annotated) for kind in ("manual", "auto")}
    json_dir = root if layout == "train" else root / "annotations"
    json_dir.mkdir(parents=True, exist_ok=True)
    for number in range(videos):
        video_id = f"sav_99{number:04d}"
        if layout == "train":
            _write_mp4(root / f"{video_id}.mp4", shape, cycle, first=root / "sav_990000.mp4")
        elif layout == "frames":
            _write_jpegs(root / "JPEGImages" / video_id, shape, cycle, root / "JPEGImages")
        else:
            raise ValueError(f"unknown layout {layout!r}")
        for kind, annotation in annotations.items():
            text = json.dumps({**annotation, "video_id": video_id})
            (json_dir / f"{video_id}_{kind}.json").write_text(text)
    return root


def _write_mp4(path: Path, shape: SampleVideo, cycle: list[Any], *, first: Path) -> None:
    """The video as H.264, or a copy of the first one written."""
    if first.is_file():
        shutil.copyfile(first, path)
        return
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = shape.width, shape.height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for index in range(shape.frame_count):
            frame = av.VideoFrame.from_ndarray(cycle[index % len(cycle)][0], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _write_jpegs(folder: Path, shape: SampleVideo, cycle: list[Any], frames_root: Path) -> None:
    """Every 4th frame as `NNNNN.jpg` (quality 95), hard links to the first video's files."""
    folder.mkdir(parents=True)
    first = frames_root / "sav_990000"
    for index in range(0, shape.frame_count, FRAME_STRIDE):
        name = f"{index:05d}.jpg"
        if folder != first:
            os.link(first / name, folder / name)
        else:
            Image.fromarray(cycle[index % len(cycle)][0]).save(folder / name, quality=95)


def _annotated_frames(src: Path) -> int:
    try:
        refs = discover(src, masklets="all")
    except Exception:
        return 0
    total = 0
    for ref in refs:
        try:
            total += len(open_video(ref).frame_indices)
        except Exception:
            continue
    return total


def _open_videos(src: Path) -> list[Video]:
    """Every video of `src` (all masklets) that opens; a broken one is not baked by a build either."""
    videos = []
    for ref in discover(src, masklets="all"):
        try:
            videos.append(open_video(ref))
        except Exception:
            continue
    return videos


def decoder_speed(src: Path) -> tuple[int, float]:
    """(video frames decoded, wall seconds) to decode the annotated frames of `src` as a build
    does, in this process; nothing else is computed."""
    videos = _open_videos(src)
    started = time.perf_counter()
    decoded = 0
    for video in videos:
        for _ in video.iter_frames():
            pass
        decoded += video.frame_indices[-1] + 1 if video.frame_indices else 0
    return decoded, time.perf_counter() - started


def bare_compute(src: Path) -> tuple[float, float]:
    """Wall and CPU seconds to decode, resize and mask-process every annotated frame of `src`,
    in this process."""
    tune_memory()  # as in the build's workers, so that both run with the same allocator
    videos = _open_videos(src)
    started, cpu_started = time.perf_counter(), time.process_time()
    for video in videos:
        for t, frame in video.iter_frames():
            transforms.pixel_values(frame)
            transforms.g_pixel_values(frame)
            for k in np.flatnonzero(video.areas[t]):
                mask = video.mask(t, int(k))
                transforms.masks(mask)
                transforms.prompt_masks(mask)
    return time.perf_counter() - started, time.process_time() - cpu_started


@dataclass
class BuildRun:
    seconds: float
    cpu_seconds: float  # user + system time of the command and the workers it waited for
    peaks_kib: dict[int, int]  # pid -> VmHWM
    tree_kib: int  # largest sampled sum of VmRSS over the tree

    def memory(self, video_frames: int) -> dict[str, Any]:
        return {
            "video_frames": video_frames,
            "processes": len(self.peaks_kib),
            "sum_of_peaks_mib": sum(self.peaks_kib.values()) / 1024,
            "largest_process_mib": max(self.peaks_kib.values(), default=0) / 1024,
            "tree_mib": self.tree_kib / 1024,
        }


def run_build(
    src: Path,
    out: Path,
    *,
    workers: int,
    dask: str | None = None,
    extra: tuple[str, ...] = (),
    keep: bool = False,
) -> BuildRun:
    """Run `prebake build` as its own command, sampling the memory of its process tree;
    with `dask` (`local:N`), on a Dask LocalCluster the command starts instead of its pool;
    `extra` options added; the store removed after unless `keep`."""
    command = [sys.executable, "-c", "from prebake.cli import main; main()", "build"]
    command += ["--src", str(src), "--out", str(out)]
    command += ["--dask", dask] if dask is not None else ["--workers", str(workers)]
    command += ["--masklets", "all", "--overwrite", "-q", *extra]
    peaks: dict[int, int] = {}
    tree = 0
    cpu_before = _children_cpu()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while process.poll() is None:
        total = 0
        for pid in _tree(process.pid):
            status = _status(pid)
            if status:
                peaks[pid] = max(peaks.get(pid, 0), status.get("VmHWM", 0))
                total += status.get("VmRSS", 0)
        tree = max(tree, total)
        time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - started
    cpu_seconds = _children_cpu() - cpu_before
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise PrebakeError(f"benchmark build failed (exit {process.returncode}): {stderr.strip()}")
    StoreDir(out).require_complete()
    if not keep:
        shutil.rmtree(out)
    return BuildRun(seconds, cpu_seconds, peaks, tree)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc/<pid>/task/<tid>/children."""
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    queue += [int(child) for child in handle.read().split()]
            except OSError:
                continue
    return found


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of a process, empty if it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
    except OSError:
        return {}
    return values
