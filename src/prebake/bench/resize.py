"""The resize step of a build, per frame, for each path (`build --resize pillow|torch`): both
reference resizes of an annotated frame and its stored forms, as a worker runs them
(`prebake.build.resizing`), in this process, on one core (torch on one intra-op thread)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from PIL import Image

from prebake.build.resizing import BATCH_FRAMES, Resizing, frame_resizer
from prebake.sources import discover, open_video

RESIZE_FRAMES = 32  # annotated frames timed per path


def first_frames(src: Path, count: int = RESIZE_FRAMES) -> list[Image.Image]:
    """The first `count` annotated frames of `src` that have the first video's size, decoded
    as a build decodes them (held in memory: about 2.8 MB each at 720p)."""
    frames: list[Image.Image] = []
    for ref in discover(src, masklets="all"):
        video = open_video(ref)
        if frames and (video.width, video.height) != frames[0].size:
            continue
        for _, frame in video.iter_frames():
            frames.append(frame)
            if len(frames) == count:
                return frames
    return frames


def resize_time(
    frames: list[Image.Image], resizing: Resizing, pillow: int = 13
) -> tuple[float, str]:
    """(ms per frame, sha256 of every row it gives, in order) of the resize step of `resizing`
    on `frames` (all of one size). A batch is resized first and not timed: the weights cached,
    a device's context started, as in a worker after its first frames."""
    width, height = frames[0].size
    digest = hashlib.sha256()
    warm = frame_resizer(resizing, "bench", (width, height), pillow)
    for frame in frames[:BATCH_FRAMES]:
        warm.push(frame)
    warm.flush()
    warm.close()
    resizer = frame_resizer(resizing, "bench", (width, height), pillow)
    seconds = 0.0
    try:
        for index in range(len(frames) + 1):
            started = time.perf_counter()
            rows = resizer.push(frames[index]) if index < len(frames) else resizer.flush()
            seconds += time.perf_counter() - started
            for row in rows:  # hashed outside the timed calls
                for image in row:
                    digest.update(b"" if image is None else image.tobytes())
    finally:
        resizer.close()
    return 1000 * seconds / len(frames), digest.hexdigest()
