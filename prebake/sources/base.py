"""What every SA-V layout yields: a `Video` with annotated frames, masklets and their masks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from prebake.errors import SourceError

MASKLET_TYPES = ("manual", "auto")


@dataclass(frozen=True)
class VideoRef:
    """Where one video's inputs are. Small and picklable: it travels to worker processes."""

    video_id: str
    layout: str  # "train", "frames" or "png"
    frames: str  # the mp4 (train) or the folder of JPEG frames (frames, png)
    annotations: tuple[
        str, ...
    ]  # JSON files, manual before auto (train, frames); mask folder (png)


@dataclass(frozen=True)
class Masklet:
    type: str  # "manual" or "auto"
    id: int


class Video(ABC):
    """An opened, validated video: sizes known, masklets listed, areas counted, nothing decoded yet."""

    def __init__(
        self,
        ref: VideoRef,
        *,
        width: int,
        height: int,
        frame_count: int,
        frame_indices: list[int],
        masklets: list[Masklet],
        areas: np.ndarray,
    ) -> None:
        self.ref = ref
        self.video_id = ref.video_id
        self.width = width
        self.height = height
        self.frame_count = frame_count
        self.frame_indices = frame_indices  # 24 fps index of each annotated frame t
        self.masklets = masklets
        self.areas = areas  # int64 (annotated frames, masklets): source pixels on

    @abstractmethod
    def iter_frames(self) -> Iterator[tuple[int, Image.Image]]:
        """Yield (t, original RGB frame) for every annotated frame, in order, streaming."""

    @abstractmethod
    def mask(self, t: int, k: int) -> np.ndarray:
        """Original-resolution uint8 mask (nonzero = on) of masklet k at annotated frame t."""

    def check_frame_size(self, frame: Image.Image, where: str | Path) -> None:
        if frame.size != (self.width, self.height):
            raise SourceError(
                where,
                f"frame is {frame.size[0]}x{frame.size[1]}, annotation says {self.width}x{self.height}",
            )


def open_jpeg(path: Path) -> Image.Image:
    """A frame as Sa2VA opens images: `Image.open(path).convert('RGB')`."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise SourceError(path, "missing frame") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise SourceError(path, f"unreadable image ({error})") from None
