"""Training release layout: `sav_NNNNNN.mp4` beside `sav_NNNNNN_manual.json` (+ `_auto.json`).

Frames are decoded with PyAV in a stream (bit-identical to the OpenCV path SAM 2 and Sa2VA use,
REFERENCE.md section 3); only annotated frames (every 4th) are converted to RGB, and no more than
one frame is held at a time, whatever the video's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image

from prebake.errors import SourceError
from prebake.sources.annotations import FRAME_STRIDE, Annotation, load_annotation
from prebake.sources.base import Masklet, Video, VideoRef


def load_annotations(ref: VideoRef) -> list[Annotation]:
    """The ref's JSON files (manual and/or auto), checked to describe the same video."""
    loaded = [
        load_annotation(Path(path), ref.video_id, _masklet_type(path)) for path in ref.annotations
    ]
    first = loaded[0]
    for other in loaded[1:]:
        shape = (other.height, other.width, other.frame_count, len(other.rles))
        if shape != (first.height, first.width, first.frame_count, len(first.rles)):
            raise SourceError(
                other.path,
                "size, frame count or annotated frames disagree with " + Path(first.path).name,
            )
    return loaded


def _masklet_type(path: str) -> str:
    return "auto" if path.endswith("_auto.json") else "manual"


class JsonAnnotatedVideo(Video):
    """A video annotated by SA-V JSON files; subclasses say where its frames come from."""

    def __init__(self, ref: VideoRef) -> None:
        self.annotations = load_annotations(ref)
        first = self.annotations[0]
        masklets = [Masklet(a.masklet_type, i) for a in self.annotations for i in a.masklet_ids]
        self._where = [(a, k) for a in self.annotations for k in range(len(a.masklet_ids))]
        super().__init__(
            ref,
            width=first.width,
            height=first.height,
            frame_count=first.frame_count,
            frame_indices=[FRAME_STRIDE * t for t in range(len(first.rles))],
            masklets=masklets,
            areas=np.concatenate([a.areas for a in self.annotations], axis=1),
        )

    def mask(self, t: int, k: int) -> np.ndarray:
        annotation, index = self._where[k]
        return annotation.decode(t, index)


class Mp4Video(JsonAnnotatedVideo):
    def iter_frames(self) -> Iterator[tuple[int, Image.Image]]:
        path = self.ref.frames
        wanted = iter(enumerate(self.frame_indices))
        t, target = next(wanted, (-1, None))
        decoded = 0
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise SourceError(path, "no video stream")
                for frame in container.decode(container.streams.video[0]):
                    if decoded == target:
                        image = Image.fromarray(frame.to_ndarray(format="rgb24"))
                        self.check_frame_size(image, path)
                        yield t, image
                        t, target = next(wanted, (-1, None))
                        if target is None:
                            return
                    decoded += 1
        except av.error.FFmpegError as error:
            raise SourceError(path, f"cannot decode video ({error.strerror or error})") from None
        if target is not None:
            raise SourceError(
                path, f"video ends after {decoded} frames; annotation needs frame {target}"
            )


def discover(src: Path, masklets: str) -> list[VideoRef]:
    """Every `<id>.mp4` with a `<id>_manual.json` (and `_auto.json` as `masklets` asks) beside it."""
    refs = []
    for manual in sorted(src.rglob("*_manual.json")):
        video_id = manual.name.removesuffix("_manual.json")
        mp4 = manual.with_name(f"{video_id}.mp4")
        if mp4.is_file():
            files = json_files(manual, masklets)
            if files:
                refs.append(VideoRef(video_id, "train", str(mp4), files))
    return refs


def json_files(manual: Path, masklets: str) -> tuple[str, ...]:
    """The annotation files to read for `masklets` (manual, auto or all); auto is often missing."""
    auto = manual.with_name(manual.name.removesuffix("_manual.json") + "_auto.json")
    files = []
    if masklets in ("manual", "all"):
        files.append(str(manual))
    if masklets in ("auto", "all") and auto.is_file():
        files.append(str(auto))
    return tuple(files)
