"""The Pillow rule: which pass of a BICUBIC resize runs first in the trainer's Pillow
(REFERENCE.md section 4c). Both resizes follow it: Pillow's (`prebake.transforms`) and the
torch one (`prebake.transforms.torch_bicubic`)."""

from __future__ import annotations

# Which Pillow's pass order the BICUBIC resizes follow (REFERENCE.md section 4c): the trainer's.
PILLOW_RULES = (13, 12)
DEFAULT_PILLOW_RULE = 13


def vertical_first(in_size: tuple[int, int], out_size: tuple[int, int], pillow: int) -> bool:
    """Whether Pillow `pillow` (13, or 12 and earlier) runs the vertical pass of a resize first.

    Sizes are (width, height). Pillow 13 (`src/libImaging/Resample.c`) goes vertical first when
    the height shrinks, and by more than twice what the width shrinks; Pillow 12 goes horizontal
    first, except that its `Image.resize` runs the vertical pass first for an image more than 100
    times taller than wide whose height shrinks. The two orders round differently (each pass
    writes uint8). Checked against Pillow 12.3 and 13.0 (tests/reference/pillow12.py).
    """
    if pillow not in PILLOW_RULES:
        raise ValueError(f"pillow rule must be one of {PILLOW_RULES}, got {pillow!r}")
    (in_w, in_h), (out_w, out_h) = in_size, out_size
    if pillow == 12:
        return in_h > in_w * 100 and out_h < in_h
    return in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)
