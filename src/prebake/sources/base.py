"""What every SA-V layout yields: a `Video` with annotated frames, masklets and their masks."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from prebake.errors import SourceError
from prebake.storage import RemotePath, as_path

MASKLET_TYPES = ("manual", "auto")
T = TypeVar("T")


@dataclass(frozen=True)
class VideoRef:
    """Where one video's inputs are. Small and picklable: it travels to worker processes."""

    video_id: str
    layout: str  # "train", "frames" or "png"
    frames: str  # the mp4 (train) or the folder of JPEG frames (frames, png): path or URL
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
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.ref = ref
        self.storage_options = storage_options
        self.video_id = ref.video_id
        self.width = width
        self.height = height
        self.frame_count = frame_count
        self.frame_indices = frame_indices  # 24 fps index of each annotated frame t
        self.masklets = masklets
        self.areas = areas  # int64 (annotated frames, masklets): source pixels on

    @abstractmethod
    def iter_frames(self, conversion: str = "opencv") -> Iterator[tuple[int, Image.Image]]:
        """Yield (t, original RGB frame) for every annotated frame, in order, streaming.

        `conversion` says how a decoded video frame becomes RGB (`prebake.decoding.CONVERSIONS`);
        image files are opened one way only and ignore it.
        """

    def iter_reference_frames(self) -> Iterator[tuple[int, Image.Image]]:
        """The same frames as the reference trainers' decoder gives them (`verify --src`)."""
        return self.iter_frames()

    @property
    def reference_decoder(self) -> str:
        """What `iter_reference_frames` decodes with, for reports."""
        return "Pillow Image.open(path).convert('RGB')"

    @abstractmethod
    def mask(self, t: int, k: int) -> np.ndarray:
        """Original-resolution uint8 mask (nonzero = on) of masklet k at annotated frame t."""

    def check_frame_size(self, frame: Image.Image, where: str | Path | RemotePath) -> None:
        if frame.size != (self.width, self.height):
            raise SourceError(
                where,
                f"frame is {frame.size[0]}x{frame.size[1]}, annotation says {self.width}x{self.height}",
            )


def open_jpeg(path: Path | RemotePath, size: tuple[int, int] | None = None) -> Image.Image:
    """A frame as Sa2VA opens images: `Image.open(path).convert('RGB')`.

    With `size` (width, height), a frame of another size is refused from its header, before its
    pixels are decoded: a damaged or foreign file must not cost memory.
    """
    with open_image(path, "image", missing="missing frame") as image:
        if size is not None and image.size != size:
            raise SourceError(
                path,
                f"frame is {image.size[0]}x{image.size[1]}, annotation says {size[0]}x{size[1]}",
            )
        return decoded(path, "image", lambda: image.convert("RGB"))


def source_path(text: str, storage_options: Mapping[str, Any] | None = None) -> Path | RemotePath:
    """A source file or folder named in a `VideoRef` (a path, or a URL for a remote source)."""
    return as_path(text, storage_options)


@contextmanager
def open_image(
    path: Path | RemotePath, what: str, *, missing: str | None = None
) -> Iterator[Image.Image]:
    """`Image.open` (header only), with one-line SourceErrors for files that are not images.

    A remote image is fetched whole (one GET: frames and masks are small) and opened from memory.
    """
    try:
        image = Image.open(path if isinstance(path, Path) else io.BytesIO(path.read_bytes()))
    except FileNotFoundError:
        raise SourceError(path, missing or f"missing {what}") from None
    except Image.UnidentifiedImageError:
        raise SourceError(path, f"unreadable {what} (not an image Pillow can read)") from None
    except Image.DecompressionBombError:
        raise SourceError(path, f"unreadable {what} (its size is absurdly large)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise SourceError(path, f"unreadable {what} ({error})") from None
    with image:
        yield image


def decoded(path: Path | RemotePath, what: str, decode: Callable[[], T]) -> T:
    """Run `decode` (which reads the pixels of an opened image), with one-line SourceErrors."""
    try:
        return decode()
    except (OSError, SyntaxError, ValueError) as error:  # truncated or damaged pixel data
        raise SourceError(path, f"unreadable {what} ({error})") from None
