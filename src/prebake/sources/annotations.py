"""SA-V annotation JSON (`sav_NNNNNN_manual.json` / `_auto.json`): parse, validate, decode masks.

Checked against the real files: sizes and frame counts are floats, `masklet_first_appeared_frame`
is float in manual files, stability scores are None in manual files. Only the keys needed to bake
are required; everything is validated before any mask is allocated or decoded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from prebake.errors import SourceError
from prebake.storage import RemotePath

FRAME_STRIDE = 4  # masklet[t] annotates video frame 4t (SA-V annotates at 6 of 24 fps)
MAX_SIDE = 16384  # larger than any SA-V video (4K); rejects absurd sizes before allocating
REQUIRED_KEYS = (
    "video_id",
    "video_height",
    "video_width",
    "video_frame_count",
    "masklet",
    "masklet_id",
)


@dataclass(frozen=True)
class Annotation:
    """One annotation file: masklets of one type over the annotated frames of one video."""

    path: str
    video_id: str
    height: int
    width: int
    frame_count: int
    masklet_type: str
    masklet_ids: tuple[int, ...]
    rles: tuple[tuple[dict[str, Any], ...], ...]  # rles[t][k]
    areas: np.ndarray  # int64 (frames, masklets), from the RLE counts, no decoding

    def decode(self, t: int, k: int) -> np.ndarray:
        """The original-resolution uint8 0/1 mask of masklet k at annotated frame t."""
        return mask_utils.decode(self.rles[t][k])


def _whole_number(
    path: Path | RemotePath, key: str, value: object, *, minimum: int, maximum: int
) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SourceError(path, f"'{key}' must be a number, got {value!r}")
    if value != int(value) or not minimum <= value <= maximum:
        raise SourceError(
            path, f"'{key}' must be a whole number in {minimum}..{maximum}, got {value!r}"
        )
    return int(value)


def rle_runs(counts: str) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string (pycocotools' LEB128-like format), vectorized.

    Each number is 5-bit groups, low first, 0x20 meaning "more follows" and 0x10 in the last group
    its sign; from the fourth number on, a number is stored relative to the one two places back.
    """
    codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if codes.min() < 0 or codes.max() >= 64:
        raise ValueError("a byte is not an RLE digit")
    more = (codes & 0x20) != 0
    if more[-1]:
        raise ValueError("counts string ends inside a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 12:
        raise ValueError("a number is too long")
    position = np.arange(codes.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _rle_area(path: Path | RemotePath, where: str, rle: object, height: int, width: int) -> int:
    """Validate one RLE against the video size and return its area, without decoding it."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise SourceError(path, f"{where}: not an RLE object with 'size' and 'counts'")
    if not isinstance(rle["size"], list) or rle["size"] != [height, width]:
        raise SourceError(
            path, f"{where}: RLE size {rle['size']} is not the video's [{height}, {width}]"
        )
    if not isinstance(rle["counts"], str):
        raise SourceError(path, f"{where}: RLE counts must be a compressed string")
    try:
        runs = rle_runs(rle["counts"])
    except (ValueError, UnicodeEncodeError) as error:
        raise SourceError(path, f"{where}: malformed RLE counts ({error})") from None
    total = int(runs.sum())
    if (runs < 0).any() or total != height * width:
        # pycocotools trusts the counts; a wrong total would write outside its buffer.
        raise SourceError(path, f"{where}: RLE runs cover {total} pixels, not {height * width}")
    return int(runs[1::2].sum())


def load_annotation(
    path: Path | RemotePath, expected_video_id: str, masklet_type: str
) -> Annotation:
    """Read and validate one SA-V annotation file; raise SourceError with a one-line reason."""
    try:
        with path.open("rb") as handle:
            raw = json.load(handle)
    except OSError as error:
        raise SourceError(path, f"cannot read: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SourceError(path, f"invalid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise SourceError(path, "annotation must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise SourceError(path, f"missing required keys: {', '.join(missing)}")
    video_id = raw["video_id"]
    if not isinstance(video_id, str) or not video_id or any(c in video_id for c in "/\\\0"):
        raise SourceError(path, f"'video_id' {video_id!r} is not a plain name")
    if video_id != expected_video_id:
        raise SourceError(
            path, f"'video_id' {video_id!r} disagrees with the file name ({expected_video_id!r})"
        )
    height = _whole_number(path, "video_height", raw["video_height"], minimum=1, maximum=MAX_SIDE)
    width = _whole_number(path, "video_width", raw["video_width"], minimum=1, maximum=MAX_SIDE)
    frame_count = _whole_number(
        path, "video_frame_count", raw["video_frame_count"], minimum=1, maximum=10**8
    )
    ids = raw["masklet_id"]
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise SourceError(path, "'masklet_id' must be a list of integers")
    if len(set(ids)) != len(ids):
        raise SourceError(path, "'masklet_id' has duplicates")
    masklet = raw["masklet"]
    if not isinstance(masklet, list) or not all(isinstance(frame, list) for frame in masklet):
        raise SourceError(path, "'masklet' must be a list (annotated frames) of lists (masklets)")
    annotated_capacity = math.ceil(frame_count / FRAME_STRIDE)
    if len(masklet) > annotated_capacity:
        raise SourceError(
            path,
            f"{len(masklet)} annotated frames, but a {frame_count}-frame video has only {annotated_capacity}",
        )
    areas = np.zeros((len(masklet), len(ids)), dtype=np.int64)
    for t, frame in enumerate(masklet):
        if len(frame) != len(ids):
            raise SourceError(
                path, f"masklet[{t}] has {len(frame)} entries, expected {len(ids)} (masklet_id)"
            )
        for k, rle in enumerate(frame):
            areas[t, k] = _rle_area(path, f"masklet[{t}][{k}]", rle, height, width)
    return Annotation(
        path=str(path),
        video_id=video_id,
        height=height,
        width=width,
        frame_count=frame_count,
        masklet_type=masklet_type,
        masklet_ids=tuple(ids),
        rles=tuple(tuple(frame) for frame in masklet),
        areas=areas,
    )
