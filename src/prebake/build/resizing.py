"""The two image resizes of a unit (`build --resize pillow|torch --device cpu|cuda`): Pillow,
one frame at a time, or `prebake.transforms.bicubic_resize` on a torch device, in batches.

Worker side, like `prebake.build.unit`, which alone uses the resizers: each worker process
batches its own video's annotated frames and resizes them on the device itself (one CUDA
context per worker; the choice against one device process fed by the workers is argued in
docs/gpu.md). Both paths give the same bytes: the torch resize equals Pillow bit for bit, and
`pixel_values` is normalized by a lookup in `transforms.pixel_values_table()`, the exact
values of `transforms.normalize` for each 8-bit level. torch is imported only by the torch path.

Memory of the torch path, per worker: a batch holds at most `BATCH_FRAMES` frames and at most
`BATCH_BYTES` of decoded frames (one frame if a frame is larger: a 3840 x 2160 frame is 24.9
MB, so two go in a batch). On the device that is the batch, its two resized copies and their
stored forms (about 7.7 MB a frame: 0.6 MB at 448, 3.1 MB at 1024, 2.4 MB of float32
`pixel_values`, 1.6 MB of lookup indices), the resize's intermediates (at most 256 MiB, in
practice the first pass's output, 4.3 MB a 1401 x 1037 frame) and its int32 working set (at
most 256 MiB): under 0.7 GiB whatever the frame size, plus the CUDA context. On the host, the
batch and pinned copies of its results: under 160 MiB.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from prebake import transforms
from prebake.errors import PrebakeError, one_line

if TYPE_CHECKING:
    import torch

RESIZES = ("pillow", "torch")
DEFAULT_RESIZE = "pillow"
DEFAULT_DEVICE = "cpu"
BATCH_FRAMES = 16  # annotated frames resized together on a device
BATCH_BYTES = 64 << 20  # decoded frames in a batch (at least one frame)
UNUSABLE_EXIT = 75  # a worker whose CUDA context broke exits with this status (EX_TEMPFAIL)

# (pixel_values, g_pixel_values) per frame; None for an image the store does not hold.
ImageRows = list[tuple[np.ndarray | None, np.ndarray | None]]


@dataclass(frozen=True)
class ImageFields:
    """Which images a unit stores, and whether `pixel_values` is stored as its uint8 448
    levels (schema v2, normalized on read) or as the float32 InternVL input (schema v1)."""

    pixel_values: bool = True
    g_pixel_values: bool = True
    levels: bool = True


@dataclass(frozen=True)
class Resizing:
    """How a build resizes frames: `resize` "pillow" or "torch"; `device` "cpu", "cuda" or
    "cuda:N" (torch only). Decides no byte of the store: both paths give the same bytes."""

    resize: str = DEFAULT_RESIZE
    device: str = DEFAULT_DEVICE


class DeviceError(PrebakeError):
    """A device failed while resizing one video's frames (out of memory, a CUDA error): the
    video fails with this one line and `--retry-failed` bakes it again."""


def check_options(resizing: Resizing) -> None:
    """Refuse a resize path or device name that is not one (no torch import: names only).

    Raises PrebakeError naming the option.
    """
    if resizing.resize not in RESIZES:
        raise PrebakeError(f"--resize must be pillow or torch, not {resizing.resize!r}")
    device = resizing.device
    index = device.removeprefix("cuda:")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
        raise PrebakeError(f"--device must be cpu, cuda or cuda:N, not {device!r}")
    if resizing.resize == "pillow" and device != "cpu":
        raise PrebakeError(
            f"--device {device} resizes with torch: add --resize torch (Pillow runs on the CPU)"
        )


def check_device(device: str, option: str = "--device") -> None:
    """Refuse a CUDA device this process cannot use: torch built without CUDA, no GPU visible,
    or an index past the visible GPUs. Creates no CUDA context. Raises PrebakeError naming
    `option`."""
    if device == "cpu":
        return
    import torch

    option = f"{option} {device}"
    if not torch.backends.cuda.is_built():
        raise PrebakeError(
            f"{option}: this torch ({torch.__version__}) is built without CUDA; "
            "install a CUDA build of torch"
            + (", or use --device cpu" if "--device" in option else "")
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise PrebakeError(
            f"{option}: no CUDA device is visible{hint} (torch {torch.__version__}, "
            f"CUDA {torch.version.cuda})"
        )
    index = torch.device(device).index
    if index is not None and index >= count:
        raise PrebakeError(f"{option}: only {count} CUDA devices are visible")


class FrameResizer(Protocol):
    """A unit's frames in, their (pixel_values, g_pixel_values) rows out, in frame order."""

    description: str  # what resized them, as the store records it

    def push(self, frame: Image.Image) -> ImageRows:
        """Take the next frame; return the rows now ready (none while a batch fills)."""
        ...

    def flush(self) -> ImageRows:
        """The rows of the frames taken and not returned yet."""
        ...

    def close(self) -> None: ...


def frame_resizer(
    resizing: Resizing,
    where: str,
    size: tuple[int, int],
    pillow: int,
    images: ImageFields = ImageFields(),
) -> FrameResizer:
    """The resizer of one unit whose frames are `size` (width, height); `where` names the
    video in errors; `pillow` is the Pillow rule; `images` what to make of each frame."""
    if resizing.resize == "pillow":
        return PillowFrames(pillow, images)
    return DeviceFrames(resizing.device, where, size, pillow, images)


class PillowFrames:
    """The reference: each frame resized by Pillow as it comes (`prebake.transforms`)."""

    description = "Pillow"

    def __init__(self, pillow: int, images: ImageFields = ImageFields()) -> None:
        self.pillow, self.images = pillow, images
        self.pixel = transforms.pixel_levels if images.levels else transforms.pixel_values

    def push(self, frame: Image.Image) -> ImageRows:
        images = self.images
        pixel = self.pixel(frame, self.pillow) if images.pixel_values else None
        g_pixel = transforms.g_pixel_values(frame, self.pillow) if images.g_pixel_values else None
        return [(pixel, g_pixel)]

    def flush(self) -> ImageRows:
        return []

    def close(self) -> None:
        pass


# Set in a worker whose CUDA context failed for good (an illegal address, a device-side
# assert...): every later call on it would fail too.
_unusable: str | None = None


def exit_if_unusable() -> None:
    """Called before each unit: a worker whose CUDA context broke exits (status
    `UNUSABLE_EXIT`), so that its executor replaces it with a fresh process and context and
    bakes the unit it was given elsewhere, instead of failing every later video here."""
    if _unusable is not None:
        print(
            f"prebake: worker {os.getpid()} exits, its CUDA context is unusable ({_unusable})",
            file=sys.stderr,
            flush=True,
        )
        os._exit(UNUSABLE_EXIT)


class DeviceFrames:
    """Frames resized by `bicubic_resize` on a torch device, `capacity` at a time.

    `push` copies each frame into a (pinned, on CUDA) host batch; a full batch goes to the
    device, the resizes of the images stored run there, `pixel_values` is normalized by table
    lookup when the store holds it as float32 (schema v1), the images are laid out channels
    first, and the rows come back into pinned host buffers
    (views of them are returned: append them before the next `push`). torch runs on one
    intra-op thread while the resizer is open (workers are one process per core).
    """

    def __init__(
        self,
        device: str,
        where: str,
        size: tuple[int, int],
        pillow: int,
        images: ImageFields = ImageFields(),
    ) -> None:
        import torch

        from prebake.transforms.torch_bicubic import bicubic_resize

        self._torch, self._resize = torch, bicubic_resize
        self.device = torch.device(device)
        self.where, self.size, self.pillow, self.images = where, size, pillow, images
        width, height = size
        self.capacity = max(1, min(BATCH_FRAMES, BATCH_BYTES // (3 * width * height)))
        self.count = 0
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            pinned = self.device.type == "cuda"
            self.description = describe_device(self.device)
            self.batch = torch.empty(
                (self.capacity, height, width, 3), dtype=torch.uint8, pin_memory=pinned
            )
            self.pixel = torch.empty(
                (self.capacity, 3, transforms.PIXEL_SIZE, transforms.PIXEL_SIZE),
                dtype=torch.uint8 if images.levels else torch.float32,
                pin_memory=pinned,
            )
            self.g_pixel = torch.empty(
                (self.capacity, 3, transforms.G_SIZE, transforms.G_SIZE),
                dtype=torch.uint8,
                pin_memory=pinned,
            )
            table = torch.from_numpy(transforms.pixel_table().reshape(-1).copy())
            self.table = table.to(self.device)
            offsets = torch.arange(3, dtype=torch.int32).mul_(256).view(1, 3, 1, 1)
            self.offsets = offsets.to(self.device)
        except Exception as error:
            self.close()
            raise self._failure(error, 0) from None

    def push(self, frame: Image.Image) -> ImageRows:
        self.batch[self.count].numpy()[...] = np.asarray(frame)
        self.count += 1
        return self.flush() if self.count == self.capacity else []

    def flush(self) -> ImageRows:
        n, self.count = self.count, 0
        if n == 0:
            return []
        try:
            self._resize_batch(n)
        except Exception as error:
            raise self._failure(error, n) from None
        images = self.images
        pixel = self.pixel.numpy() if images.pixel_values else None
        g_pixel = self.g_pixel.numpy() if images.g_pixel_values else None
        return [
            (None if pixel is None else pixel[i], None if g_pixel is None else g_pixel[i])
            for i in range(n)
        ]

    def _resize_batch(self, n: int) -> None:
        torch, size = self._torch, transforms.PIXEL_SIZE
        images = self.images
        frames = self.batch[:n].to(self.device, non_blocking=True)
        if images.g_pixel_values:
            big = self._resize(frames, (transforms.G_SIZE, transforms.G_SIZE), self.pillow)
            self.g_pixel[:n].copy_(big.permute(0, 3, 1, 2))
            del big
        if not images.pixel_values:
            return
        small = self._resize(frames, (size, size), self.pillow).permute(0, 3, 1, 2)
        del frames
        if images.levels:  # schema v2 stores the levels
            self.pixel[:n].copy_(small)
            return
        levels = small.to(torch.int32, memory_format=torch.contiguous_format)
        levels.add_(self.offsets)
        del small
        pixel = self.table.index_select(0, levels.view(-1)).view(n, 3, size, size)
        del levels
        self.pixel[:n].copy_(pixel)

    def _failure(self, error: Exception, n: int) -> DeviceError:
        """The one-line failure of this video; a CUDA context left unusable marks the worker."""
        global _unusable
        torch = self._torch
        width, height = self.size
        what = f"{n} frames of {width}x{height}" if n else f"frames of {width}x{height}"
        if isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error):
            asked = re.search(r"allocate ([\d.]+ ?\w+)", str(error))
            kind = "out of memory" + (f": tried to allocate {asked[1]}" if asked else "")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # what this unit cached goes back for the next one
        else:
            kind = f"{type(error).__name__}: {error}"
            if not context_usable(self.device):
                _unusable = one_line(f"{self.device}: {kind}")
        return DeviceError(
            one_line(
                f"{self.where}: {self.device} failed resizing {what} ({kind}); "
                "--retry-failed bakes it again"
            )
        )

    def close(self) -> None:
        self._torch.set_num_threads(self._threads)


def context_usable(device: torch.device) -> bool:
    """Whether a tiny computation still runs on `device` (after an error, a CUDA context may be
    broken for good: every later call fails). A CPU always is."""
    import torch

    if device.type != "cuda":
        return True
    try:
        value = torch.ones(1, device=device).add_(1)
        torch.cuda.synchronize(device)
        return float(value.item()) == 2.0
    except Exception:
        return False


def describe_device(device: str | torch.device) -> str:
    """'torch 2.13.0+cpu on cpu', 'torch 2.13.0+cu128 on cuda:0 (NVIDIA H200)'."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return f"torch {torch.__version__} on {device}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"torch {torch.__version__} on cuda:{index} ({torch.cuda.get_device_name(index)})"
