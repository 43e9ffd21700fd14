"""Pillow's BICUBIC resize redone in torch, bit for bit, on any device (REFERENCE.md section 4c).

Pillow (`src/libImaging/Resample.c`) resizes a uint8 image in two separable passes, each writing
uint8 before the next. Per axis it precomputes, for every output index, the first source index
and up to `ksize` double weights (the Keys cubic at a = -0.5, normalized by their sum), turns them
into integers with 22 fractional bits, and computes each output value as
`clip((2**21 + sum(in[first + k] * weight[k])) >> 22, 0, 255)` in 32-bit integers.

Here the weights are computed with the same IEEE double operations in the same order (numpy, no
fused multiply-add), so they equal Pillow's integers; each pass gathers its taps with
`index_select` and sums `tap * weight` in int32, the very integer arithmetic Pillow does (no
partial sum overflows, as none does in Pillow's own loop). int32 elementwise ops and
`index_select` exist on CPU and CUDA, so the result is the same on both.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Iterator

import numpy as np
import torch

from prebake.transforms.pillow_rule import vertical_first

PRECISION_BITS = 22  # Pillow's fixed-point weights: 32 - 8 - 2 bits
_HALF = 1 << (PRECISION_BITS - 1)
_LARGEST = (256 << PRECISION_BITS) - 1  # the largest sum that still rounds down to 255

# Beyond its input and output, a call holds uint8 intermediates (the first pass's output) of at
# most this many bytes at a time, or of one frame if a frame needs more.
CHUNK_BYTES = 256 << 20
# int32 working set of one block of a pass (the widened block, the sums, one gathered tap):
# on a CPU sized to the caches (measured best on a 1 MiB-L2 core: a horizontal pass transposes
# its block, so it wants it smaller), on a GPU large enough for each kernel to fill the device.
CPU_BLOCK_BYTES = {"horizontal": 1 << 20, "vertical": 4 << 20}
DEVICE_BLOCK_BYTES = 256 << 20
# Distinct (input size, output size, device) weight sets kept; one is a few KB to a few 100 KB.
WEIGHT_CACHE_SIZE = 64


def pillow_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's BICUBIC taps for one axis: first source index and int weights per output index.

    Returns `first` int64 (out_size,) and `weights` int64 (out_size, ksize), the integer
    weights with `PRECISION_BITS` fractional bits; taps past a window's end weigh 0. Follows
    `precompute_coeffs` and `normalize_coeffs_8bpc` in Pillow's `src/libImaging/Resample.c`
    operation by operation (a box of the whole image, as `Image.resize` passes).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale  # bicubic's support is 2
    ksize = math.ceil(support) * 2 + 1
    inv_filterscale = 1.0 / filterscale
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # C's (int) truncates toward zero; clamping at 0 makes that the same as floor here.
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    end = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    count = end - first
    taps = np.arange(ksize)[None, :]
    x = np.abs(((taps + first[:, None]) - center[:, None] + 0.5) * inv_filterscale)
    # Keys cubic, a = -0.5, in Pillow's order of operations.
    near = ((1.5 * x - 2.5) * x) * x + 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5
    weights = np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
    weights = np.where(taps < count[:, None], weights, 0.0)
    # Summed tap by tap, as Pillow sums them (accumulate is sequential; np.sum would pair them).
    total = np.add.accumulate(weights, axis=1)[:, -1]
    nonzero = total != 0.0
    weights[nonzero] /= total[nonzero, None]
    scaled = weights * (1 << PRECISION_BITS)
    rounded = np.trunc(np.where(weights < 0, scaled - 0.5, scaled + 0.5)).astype(np.int64)
    return first, rounded[:, : int(count.max())]


@functools.lru_cache(maxsize=WEIGHT_CACHE_SIZE)
def _axis_taps(
    in_size: int, out_size: int, device: torch.device
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Per tap: source indices int64 (out,) and weights int32 (out, 1), on `device`."""
    first, weights = pillow_weights(in_size, out_size)
    taps = first[None, :] + np.arange(weights.shape[1])[:, None]
    # A tap past the image's edge weighs 0; any valid index serves.
    index = torch.from_numpy(np.minimum(taps, in_size - 1)).to(device)
    weight = torch.from_numpy(weights.T.astype(np.int32)).to(device)
    return index.unbind(0), weight[:, :, None].unbind(0)


def _block_shape(
    frames: int, columns: int, in_size: int, out_size: int, device: torch.device, pass_: str
) -> tuple[int, int]:
    """Frames and columns per block of a pass, so that its int32 working set fits the budget."""
    budget = CPU_BLOCK_BYTES[pass_] if device.type == "cpu" else DEVICE_BLOCK_BYTES
    # Per frame-column: the widened block, the sums and one gathered tap.
    per_column = 4 * (in_size + 2 * out_size)
    fit = max(1, budget // per_column)
    if columns <= fit:
        return max(1, min(frames, fit // columns)), columns
    return 1, fit


def _weighted_taps(block: torch.Tensor, out_size: int) -> torch.Tensor:
    """Pillow's integer pass along axis 1: int32 (B, L, C) -> int32 (B, out_size, C) in 0..255."""
    indices, weights = _axis_taps(block.shape[1], out_size, block.device)
    sums = torch.full(
        (block.shape[0], out_size, block.shape[2]), _HALF, dtype=torch.int32, device=block.device
    )
    for index, weight in zip(indices, weights, strict=True):
        sums.addcmul_(block.index_select(1, index), weight)
    return sums.clamp_(0, _LARGEST).bitwise_right_shift_(PRECISION_BITS)


def _vertical(source: torch.Tensor, out: torch.Tensor) -> None:
    """Pillow's vertical pass: uint8 (n, H, W, 3) into uint8 `out` (n, out_h, W, 3)."""
    n, height, width, channels = source.shape
    out_h, columns = out.shape[1], width * channels
    rows, out_rows = source.reshape(n, height, columns), out.view(n, out_h, columns)
    frames, step = _block_shape(n, columns, height, out_h, source.device, "vertical")
    for f in range(0, n, frames):
        for c in range(0, columns, step):
            part = rows[f : f + frames, :, c : c + step]
            block = part.to(torch.int32, memory_format=torch.contiguous_format)
            out_rows[f : f + frames, :, c : c + step] = _weighted_taps(block, out_h)


def _horizontal(source: torch.Tensor, out: torch.Tensor) -> None:
    """Pillow's horizontal pass: uint8 (n, H, W, 3) into uint8 `out` (n, H, out_w, 3).

    Each block of rows is laid out (W, 3, rows) as it is widened to int32, so that a tap is a
    gather of whole rows of that layout, and laid back as it is narrowed to uint8 (on a CPU,
    blocks of a few rows keep these transposes in cache; (W, rows, 3) was slower).
    """
    n, height, width, channels = source.shape
    out_w = out.shape[2]
    frames, step = _block_shape(n, height * channels, width, out_w, source.device, "horizontal")
    rows = max(1, step // channels)
    for f in range(0, n, frames):
        for r in range(0, height, rows):
            part = source[f : f + frames, r : r + rows].permute(0, 2, 3, 1)
            block = part.to(torch.int32, memory_format=torch.contiguous_format)
            sums = _weighted_taps(block.view(part.shape[0], width, -1), out_w)
            laid = sums.view(part.shape[0], out_w, channels, -1)
            out[f : f + frames, r : r + rows] = laid.permute(0, 3, 1, 2)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On a CPU, torch's intra-op threads set to 1 for the call, then restored.

    A pass on a CPU is many small ops (cache-sized blocks); fanning each out to intra-op threads
    gains nothing, and where the cores are busy (decoding workers) every op waits for a thread
    that has lost its core: measured here on 2 busy cores, 1.3-1.6 s a frame with 2 threads
    against 35-60 ms with 1. torch's OpenMP thread count is per calling thread.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _resize_into(frames: torch.Tensor, out: torch.Tensor, pillow: int) -> None:
    """Both passes, uint8 (n, H, W, 3) into `out` (n, out_h, out_w, 3), in Pillow's order.

    Like Pillow, a pass whose axis keeps its size is skipped.
    """
    n, in_h, in_w, channels = frames.shape
    out_h, out_w = out.shape[1:3]
    if (in_h, in_w) == (out_h, out_w):
        out.copy_(frames)
    elif in_h == out_h:
        _horizontal(frames, out)
    elif in_w == out_w:
        _vertical(frames, out)
    elif vertical_first((in_w, in_h), (out_w, out_h), pillow):
        middle = torch.empty((n, out_h, in_w, channels), dtype=torch.uint8, device=out.device)
        _vertical(frames, middle)
        _horizontal(middle, out)
    else:
        middle = torch.empty((n, in_h, out_w, channels), dtype=torch.uint8, device=out.device)
        _horizontal(frames, middle)
        _vertical(middle, out)


def bicubic_resize(images: torch.Tensor, size: tuple[int, int], pillow: int = 13) -> torch.Tensor:
    """Resize RGB frames exactly as Pillow's `Image.resize(size, Image.BICUBIC)` does.

    `images` is a uint8 tensor (N, H, W, 3) on any device (RGB frames, as `np.asarray` of a PIL
    image gives them); `size` is (width, height) in pixels, as Pillow takes it; `pillow` is the
    pass-order rule, 13 for Pillow 13 or 12 for Pillow 12 and earlier (REFERENCE.md section 4c,
    `vertical_first`). Returns a new uint8 tensor (N, height, width, 3) on the same device,
    equal for every image to `np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))`
    as that Pillow computes it. Proven bit for bit in `tests/transforms/test_bicubic.py` against Pillow
    13.0 (rule 13; noise and natural frames from 1 x 1 to 3840 x 2160) and Pillow 12.3 (rule
    12; from 1 x 1 to 1401 x 1037), downscaling, upscaling and mixed, on CPU (its CUDA tests
    run where a GPU is present).

    Weights are computed once per (input size, output size, device) and kept in a bounded
    cache (`WEIGHT_CACHE_SIZE` entries). Frames go through in chunks, so memory is bounded
    whatever N is: beyond its input and output, a call holds at most `CHUNK_BYTES` (256 MiB)
    of uint8 intermediates (the first pass's output, and a copy of a non-contiguous input; or
    one frame's, if a single frame needs more) and an int32 working set of at most 4 MiB on a
    CPU (`CPU_BLOCK_BYTES`), 256 MiB on another device (`DEVICE_BLOCK_BYTES`), plus the cached
    weights. On a CPU the call runs on one intra-op thread (torch's setting is restored after
    it; see `_one_cpu_thread`).

    Raises TypeError if `images` is not a uint8 torch tensor, ValueError for a shape other than
    (N, H, W, 3) with H, W >= 1, a size whose width or height is below 1, or an unknown rule.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (N, H, W, 3), got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[3] != 3 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(
            f"images must have shape (N, H, W, 3) with H, W >= 1, got {tuple(images.shape)}"
        )
    try:
        out_w, out_h = (operator.index(side) for side in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (width, height) integers, got {size!r}") from None
    if out_w < 1 or out_h < 1:
        raise ValueError(f"size must be at least (1, 1), got {(out_w, out_h)}")
    n, in_h, in_w, _ = images.shape
    vertical_first((in_w, in_h), (out_w, out_h), pillow)  # rejects an unknown rule
    out = torch.empty((n, out_h, out_w, 3), dtype=torch.uint8, device=images.device)
    # The first pass's output, for one frame: the larger of the two orders'.
    frame_bytes = 3 * max(out_w * in_h, in_w * out_h)
    if not images.is_contiguous():
        frame_bytes += 3 * in_w * in_h  # the vertical pass takes a contiguous copy
    chunk = max(1, CHUNK_BYTES // frame_bytes)
    with _one_cpu_thread(images.device):
        for start in range(0, n, chunk):
            _resize_into(images[start : start + chunk], out[start : start + chunk], pillow)
    return out
