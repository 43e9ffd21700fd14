"""Training release layout: `sav_NNNNNN.mp4` beside `sav_NNNNNN_manual.json` (+ `_auto.json`).

Frames are decoded with PyAV in a stream and converted as OpenCV's `cv2.VideoCapture` (the
decoder SAM 2 and Sa2VA read SA-V with) converts them, bit for bit (`prebake.decoding`); only
annotated frames (every 4th) are converted, and no more than one frame is held at a time,
whatever the video's length.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from prebake import decoding
from prebake.errors import SourceError
from prebake.sources.annotations import FRAME_STRIDE, Annotation, load_annotation
from prebake.sources.base import Masklet, Video, VideoRef, source_path
from prebake.sources.discovery import (
    AUTO_SUFFIX,
    MANUAL_SUFFIX,
    VIDEO_SUFFIX,
    Folder,
    SourceTree,
)
from prebake.storage import RemotePath

# Remote videos are read in blocks of this size (one ranged GET each), read ahead as PyAV asks.
REMOTE_BLOCK_BYTES = 8 * 1024 * 1024


def load_annotations(
    ref: VideoRef, storage_options: Mapping[str, Any] | None = None
) -> list[Annotation]:
    """The ref's JSON files (manual and/or auto), checked to describe the same video."""
    loaded = [
        load_annotation(source_path(path, storage_options), ref.video_id, _masklet_type(path))
        for path in ref.annotations
    ]
    first = loaded[0]
    for other in loaded[1:]:
        shape = (other.height, other.width, other.frame_count, len(other.rles))
        if shape != (first.height, first.width, first.frame_count, len(first.rles)):
            raise SourceError(
                other.path,
                "size, frame count or annotated frames disagree with "
                + first.path.rsplit("/", 1)[-1],
            )
    return loaded


def _masklet_type(path: str) -> str:
    return "auto" if path.endswith("_auto.json") else "manual"


class JsonAnnotatedVideo(Video):
    """A video annotated by SA-V JSON files; subclasses say where its frames come from."""

    def __init__(self, ref: VideoRef, storage_options: Mapping[str, Any] | None = None) -> None:
        self.annotations = load_annotations(ref, storage_options)
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
            storage_options=storage_options,
        )

    def mask(self, t: int, k: int) -> np.ndarray:
        annotation, index = self._where[k]
        return annotation.decode(t, index)


class Mp4Video(JsonAnnotatedVideo):
    def iter_frames(self, conversion: str = "opencv") -> Iterator[tuple[int, Image.Image]]:
        path = self.ref.frames
        wanted = iter(enumerate(self.frame_indices))
        t, target = next(wanted, (-1, None))
        decoded = 0
        file = source_path(path, self.storage_options)
        if file.is_file() and file.stat().st_size == 0:
            raise SourceError(path, "cannot decode video (empty file)")
        try:
            with self._open_container(path, file) as container:
                stream = self._open_stream(container)
                convert = decoding.FrameConverter(path, stream, conversion)
                probe = decoding.OrientationProbe(path, stream)
                for packet in container.demux(stream):
                    probe.feed(packet)
                    for frame in packet.decode():
                        if frame.is_corrupt:  # concealed damage would be baked as if it were data
                            raise SourceError(
                                path, f"frame {decoded} is corrupt (damaged video data)"
                            )
                        if decoded == target:
                            image = convert(frame)
                            self.check_frame_size(image, path)
                            yield t, image
                            t, target = next(wanted, (-1, None))
                            if target is None:
                                return
                        decoded += 1
        except av.error.FFmpegError as error:
            where = f" at frame {decoded}" if decoded else ""
            message = error.strerror or str(error)
            raise SourceError(path, f"cannot decode video{where} ({message})") from None
        if target is not None:
            raise SourceError(
                path, f"video ends after {decoded} frames; annotation needs frame {target}"
            )

    def iter_reference_frames(self) -> Iterator[tuple[int, Image.Image]]:
        """The annotated frames as OpenCV decodes them (`prebake.decoding.opencv_frames`)."""
        path = self.ref.frames
        for t, image in decoding.opencv_frames(path, self.frame_indices, self.storage_options):
            self.check_frame_size(image, path)
            yield t, image

    @property
    def reference_decoder(self) -> str:
        return f"OpenCV {decoding.opencv_version()} cv2.VideoCapture + cvtColor(BGR2RGB)"

    @staticmethod
    @contextmanager
    def _open_container(path: str, file: Path | RemotePath) -> Iterator[Any]:
        """PyAV on the file (local), or on a file object streaming it from the object store."""
        if isinstance(file, Path):
            with av.open(path) as container:
                yield container
            return
        try:
            handle = file.open("rb", block_size=REMOTE_BLOCK_BYTES, cache_type="readahead")
        except FileNotFoundError:
            raise SourceError(path, "cannot decode video (No such file or directory)") from None
        with handle, av.open(handle) as container:
            yield container

    def _open_stream(self, container: Any) -> Any:
        """The video stream (the first, as OpenCV picks it), checked against the annotation
        before any frame is decoded."""
        path = self.ref.frames
        if not container.streams.video:
            raise SourceError(path, "no video stream")
        stream = container.streams.video[0]
        size = (stream.codec_context.width, stream.codec_context.height)
        # A display matrix may turn the coded frame a quarter turn (checked again on each frame).
        if all(size) and size not in ((self.width, self.height), (self.height, self.width)):
            raise SourceError(
                path, f"video is {size[0]}x{size[1]}, annotation says {self.width}x{self.height}"
            )
        # One thread: a build runs one decoder per worker process, one worker per core.
        stream.thread_type = "NONE"
        # Fail on damaged data instead of concealing it: a concealed frame is silently wrong.
        stream.codec_context.options = {"err_detect": "explode"}
        return stream


def recognise(tree: SourceTree, masklets: str) -> list[VideoRef]:
    """Every `<id>.mp4` with a `<id>_manual.json` (and `_auto.json` as `masklets` asks) in the
    same folder, wherever that folder is and whatever it is called."""
    refs = []
    for folder in tree.folders.values():
        names = set(folder.files)
        for name in folder.files:
            video_id = name.removesuffix(MANUAL_SUFFIX)
            if video_id != name and f"{video_id}{VIDEO_SUFFIX}" in names:
                files = annotation_files(tree, folder, names, video_id, masklets)
                if files:
                    mp4 = tree.join(folder.location, f"{video_id}{VIDEO_SUFFIX}")
                    refs.append(VideoRef(video_id, "train", mp4, files))
    return refs


def annotation_files(
    tree: SourceTree, folder: Folder, names: set[str], video_id: str, masklets: str
) -> tuple[str, ...]:
    """The annotation files of `video_id` in `folder` (whose file names are `names`) to read
    for `masklets` (manual, auto or all); the auto file is often missing (2,147 of SA-V's
    training videos have none)."""
    files = []
    if masklets in ("manual", "all"):
        files.append(tree.join(folder.location, f"{video_id}{MANUAL_SUFFIX}"))
    if masklets in ("auto", "all") and f"{video_id}{AUTO_SUFFIX}" in names:
        files.append(tree.join(folder.location, f"{video_id}{AUTO_SUFFIX}"))
    return tuple(files)
