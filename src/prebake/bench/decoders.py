"""Decoders side by side on one mp4: PyAV as prebake decodes, and OpenCV's `cv2.VideoCapture`.

`python -m prebake.bench.decoders VIDEO [--repeat N] [--json]` measures, each run in a fresh
process (so that its peak RSS is its own):

- frames/s: every frame decoded and converted to RGB; and as a build needs it, every frame
  decoded and every 4th (the annotated ones) converted;
- peak RSS of the process, and the same process's RSS after its imports (the difference is what
  decoding the video costs);
- damaged data: the video with 16 random bytes at 4 places of its middle third (as
  tests/build/test_broken_input.py damages videos), and cut at 60 %: what each decoder returns or says.

PyAV runs as prebake runs it (`Mp4Video.iter_frames`: one decoder thread, `err_detect=explode`,
`prebake.decoding`); OpenCV as SAM 2 and Sa2VA run it (`read()` + `cvtColor(BGR2RGB)`), with its
default decoder threads and with one thread (a build runs one decoder per worker, one worker per
core). The results are written up in docs/decoding.md.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

MODES = {
    "pyav": "PyAV as prebake decodes (1 thread, err_detect=explode)",
    "pyav-legacy": "PyAV rgb24, prebake before issue 9 (1 thread)",
    "opencv": "OpenCV cv2.VideoCapture + BGR2RGB (default threads)",
    "opencv-1-thread": "OpenCV cv2.VideoCapture + BGR2RGB (1 thread)",
}
STRIDE = 4  # annotated frames: every 4th


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("video", type=Path, nargs="?")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    # In a child process: mode, stride, "hash" or "time", the clean video's frames, width and
    # height, the video.
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, stride, hashes, frames, width, height, video = args.child
        shape = (int(frames), int(width), int(height))
        result = _run(mode, int(stride), Path(video), hashes == "hash", shape)
        print(json.dumps(result))
        return
    if args.video is None:
        parser.error("the video to measure is required")
    results = bench_decoders(args.video, repeat=args.repeat)
    print(json.dumps(results, indent=2) if args.json else format_decoders(results))


def bench_decoders(video: Path, repeat: int = 3) -> dict[str, Any]:
    """Speed and peak RSS of each mode on `video`, then how each treats damaged copies of it."""
    import av

    from prebake.decoding import FrameConverter

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        first = FrameConverter(str(video), stream)(next(container.decode(stream)))
    with av.open(str(video)) as container:
        count = sum(1 for packet in container.demux(video=0) if packet.size)
    frames = (count, first.width, first.height)
    speed: dict[str, Any] = {}
    for mode in MODES:
        for stride in (1, STRIDE):
            runs = [_child(mode, stride, video, frames) for _ in range(repeat)]
            speed[f"{mode}/{stride}"] = {
                "decoded": runs[0]["decoded"],
                "converted": runs[0]["converted"],
                "decoded_per_s": median(r["decoded"] / r["seconds"] for r in runs),
                "converted_per_s": median(r["converted"] / r["seconds"] for r in runs),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                "imports_rss_mib": max(r["imports_rss_mib"] for r in runs),
            }
    damaged: dict[str, Any] = {}
    clean = {
        mode: _child(mode, 1, video, frames, hashes=True)["hashes"] for mode in ("pyav", "opencv")
    }
    with tempfile.TemporaryDirectory(prefix="prebake-bench-decoders-") as folder:
        for name, damage in (("corrupt", _corrupt_middle), ("truncated", _truncate)):
            copy = Path(folder) / f"{video.stem}-{name}.mp4"
            copy.write_bytes(damage(video.read_bytes()))
            damaged[name] = {}
            for mode in ("pyav", "opencv"):
                run = _child(mode, 1, copy, frames, hashes=True)
                hashes = run.pop("hashes")
                run["differing"] = sum(a != b for a, b in zip(hashes, clean[mode], strict=False))
                damaged[name][mode] = run
    counts = {mode: len(hashes) for mode, hashes in clean.items()}
    return {"video": str(video), "speed": speed, "damaged": damaged, "clean_frames": counts}


def format_decoders(results: dict[str, Any]) -> str:
    lines = [f"decoders on {results['video']} (median of runs, each a fresh process)"]
    lines.append(
        f"  {'mode':58s} {'all frames':>12s} {'every 4th':>14s} {'peak RSS':>9s} {'imports':>8s}"
    )
    for mode, label in MODES.items():
        every, annotated = results["speed"][f"{mode}/1"], results["speed"][f"{mode}/{STRIDE}"]
        lines.append(
            f"  {label:58s} {every['converted_per_s']:8.1f} f/s "
            f"{annotated['decoded_per_s']:8.1f} dec/s {every['peak_rss_mib']:6.0f} MiB "
            f"{every['imports_rss_mib']:5.0f} MiB"
        )
    lines.append("damaged copies (frames returned of the clean video's; what was said):")
    for name, by_mode in results["damaged"].items():
        for mode, run in by_mode.items():
            said = run.get("error") or "nothing (no error)"
            lines.append(
                f"  {name:9s} {mode:7s} {run['decoded']:4d}/{results['clean_frames'][mode]} frames, "
                f"{run.get('differing', 0)} differ from the clean decode; said: {said}"
            )
    return "\n".join(lines)


def _child(
    mode: str, stride: int, video: Path, frames: tuple[int, int, int], *, hashes: bool = False
) -> dict[str, Any]:
    command = [sys.executable, "-m", "prebake.bench.decoders", "--child", mode, str(stride)]
    command += ["hash" if hashes else "time", *map(str, frames), str(video)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    logged = [line for line in done.stderr.splitlines() if line.strip()]
    if logged and "error" not in result:
        result["error"] = f"{len(logged)} lines on stderr, first: {logged[0].strip()}"
    return result


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(
    mode: str, stride: int, video: Path, hashes: bool, shape: tuple[int, int, int]
) -> dict[str, Any]:
    """In the child process: decode `video` one way, converting every `stride`th frame (and
    with `hashes`, keeping a digest of each converted frame)."""
    import hashlib

    import numpy as np

    if mode.startswith("pyav"):
        import av  # noqa: F401  (imported before the baseline is taken, as cv2 below)

        from prebake.errors import SourceError
        from prebake.sources.train import Mp4Video
    else:
        import cv2
    imports = _rss_mib()
    decoded = converted = 0
    error = None
    digests: list[str] = []

    def keep(rgb: Any) -> None:
        if hashes:
            digests.append(hashlib.blake2b(np.ascontiguousarray(rgb).tobytes()).hexdigest())

    started = time.perf_counter()
    if mode.startswith("pyav"):
        with tempfile.TemporaryDirectory() as folder:
            video_obj = _video_of(video, Path(folder), Mp4Video, shape)
            video_obj.frame_indices = list(range(0, shape[0], stride))
            conversion = "legacy" if mode == "pyav-legacy" else "opencv"
            try:
                for _, image in video_obj.iter_frames(conversion):
                    converted += 1
                    keep(np.asarray(image))
            except SourceError as failure:
                error = str(failure).split(": ", 1)[-1]
            decoded = (converted - 1) * stride + 1 if converted else 0
    else:
        capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, _opencv_params(cv2, mode))
        while True:
            if decoded % stride:
                if not capture.grab():
                    break
            else:
                ok, bgr = capture.read()
                if not ok:
                    break
                keep(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                converted += 1
            decoded += 1
        capture.release()
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "decoded": decoded,
        "converted": converted,
        "seconds": seconds,
        "peak_rss_mib": _rss_mib(),
        "imports_rss_mib": imports,
    }
    if error:
        result["error"] = error
    if hashes:
        result["hashes"] = digests
    return result


def _opencv_params(cv2: Any, mode: str) -> list[int]:
    return [cv2.CAP_PROP_N_THREADS, 1] if mode == "opencv-1-thread" else []


def _video_of(path: Path, folder: Path, video_class: Any, shape: tuple[int, int, int]) -> Any:
    """`path` as prebake opens an mp4: with an SA-V annotation (one empty masklet) beside it,
    for the clean video's (frames, width, height), whatever is left of a damaged copy."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from prebake.sources.base import VideoRef

    frames, width, height = shape
    annotated = (frames + STRIDE - 1) // STRIDE
    empty = mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    empty["counts"] = empty["counts"].decode("ascii")
    annotation = {
        "video_id": "bench",
        "video_height": height,
        "video_width": width,
        "video_frame_count": frames,
        "masklet": [[empty]] * annotated,
        "masklet_id": [0],
    }
    json_path = folder / "bench_manual.json"
    json_path.write_text(json.dumps(annotation))
    return video_class(VideoRef("bench", "train", str(path), (str(json_path),)))


def _corrupt_middle(data: bytes) -> bytes:
    damaged = bytearray(data)
    rng = random.Random(0)
    for _ in range(4):
        start = len(damaged) // 3 + rng.randrange(len(damaged) // 3)
        damaged[start : start + 16] = bytes(rng.randrange(256) for _ in range(16))
    return bytes(damaged)


def _truncate(data: bytes) -> bytes:
    return data[: int(len(data) * 0.6)]


if __name__ == "__main__":
    main()
