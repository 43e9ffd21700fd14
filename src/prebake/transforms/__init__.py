"""The reference preprocessing (REFERENCE.md section 4), and nothing else.

Every function takes the *original* frame or mask, never the output of another transform:
the seed's bug was building SAM 2's input from InternVL's normalized one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from prebake.transforms.pillow_rule import DEFAULT_PILLOW_RULE, PILLOW_RULES, vertical_first

__all__ = [
    "DEFAULT_PILLOW_RULE",
    "G_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MASK_SIZE",
    "PARAMS",
    "PILLOW_RULES",
    "PIXEL_SIZE",
    "PROMPT_GRID",
    "bicubic_resize",
    "g_pixel_values",
    "masks",
    "normalize",
    "pixel_values",
    "pixel_values_table",
    "prompt_masks",
    "resize_bicubic",
    "vertical_first",
]

G_SIZE = 1024  # SAM 2 input side (DirectResize in Sa2VA)
PIXEL_SIZE = 448  # InternVL tile side
PROMPT_GRID = 16  # 448 / 14 patch * 0.5 pixel shuffle
MASK_SIZE = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
_STD = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]

PARAMS = {
    "g_size": G_SIZE,
    "pixel_size": PIXEL_SIZE,
    "prompt_grid": PROMPT_GRID,
    "mask_size": MASK_SIZE,
    "g_filter": "bicubic",
    "pixel_filter": "bicubic",
    "mask_filter": "nearest",
    "prompt_sampling": "floor(i*H/n)",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
}


def resize_bicubic(image: Image.Image, size: tuple[int, int], pillow: int) -> Image.Image:
    """`image.resize(size, BICUBIC)` as Pillow `pillow` computes it, with any installed Pillow.

    Two single-axis resizes run exactly one pass each, in the order the rule says.
    """
    out_w, out_h = size
    if vertical_first(image.size, size, pillow):
        first = image.resize((image.width, out_h), Image.Resampling.BICUBIC)
    else:
        first = image.resize((out_w, image.height), Image.Resampling.BICUBIC)
    return first.resize(size, Image.Resampling.BICUBIC)


def g_pixel_values(frame: Image.Image, pillow: int = DEFAULT_PILLOW_RULE) -> np.ndarray:
    """SAM 2 input: uint8 (3, 1024, 1024), `np.array(img.resize((1024, 1024)))` in CHW order."""
    resized = np.asarray(resize_bicubic(frame, (G_SIZE, G_SIZE), pillow))
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


def pixel_values(frame: Image.Image, pillow: int = DEFAULT_PILLOW_RULE) -> np.ndarray:
    """InternVL input: float32 (3, 448, 448), Resize(BICUBIC) -> ToTensor -> Normalize(ImageNet)."""
    return normalize(np.asarray(resize_bicubic(frame, (PIXEL_SIZE, PIXEL_SIZE), pillow)))


def normalize(resized: np.ndarray) -> np.ndarray:
    """ToTensor then Normalize(ImageNet) of a uint8 (H, W, 3) image: float32 (3, H, W)."""
    values = resized.transpose(2, 0, 1).astype(np.float32)
    # Same float32 operations, in the same order, as ToTensor's div(255) and Normalize.
    values /= np.float32(255)
    values -= _MEAN
    values /= _STD
    return values


def pixel_values_table() -> np.ndarray:
    """float32 (3, 256): `normalize` of each 8-bit level in each channel.

    Each value `normalize` gives depends only on its channel and level (elementwise float32
    operations), so `table[c, level]` holds its exact bits: a lookup in this table is the
    normalization, on any device (the torch resize path gathers from it).
    """
    levels = np.arange(256, dtype=np.uint8)
    return normalize(np.stack([levels] * 3, axis=-1)[None])[:, 0, :]


def masks(mask: np.ndarray) -> np.ndarray:
    """Ground truth: uint8 (1024, 1024) holding exactly 0 and 1, Pillow NEAREST from the original."""
    binary = (mask != 0).astype(np.uint8)
    return np.asarray(
        Image.fromarray(binary).resize((MASK_SIZE, MASK_SIZE), Image.Resampling.NEAREST)
    )


def prompt_masks(mask: np.ndarray) -> np.ndarray:
    """Visual prompt: bool (16, 16), torch legacy nearest on the original-resolution mask.

    Legacy nearest samples source index floor(i * size / 16); with 16 a power of two the
    float computation torch does is exact, so integer arithmetic gives the same indices.
    """
    height, width = mask.shape
    rows = np.arange(PROMPT_GRID) * height // PROMPT_GRID
    cols = np.arange(PROMPT_GRID) * width // PROMPT_GRID
    return mask[np.ix_(rows, cols)] != 0


# The torch resize (torch_bicubic.py) is imported on first use: worker processes import this
# package and need not import torch.
if TYPE_CHECKING:
    from prebake.transforms.torch_bicubic import bicubic_resize as bicubic_resize


def __getattr__(name: str) -> object:
    if name == "bicubic_resize":
        from prebake.transforms.torch_bicubic import bicubic_resize

        return bicubic_resize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
