"""Which items a dataset serves, and where their rows are: the row tables read once at open,
the filters applied, and the keys a clip looks its frames up by."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from prebake.errors import StoreError, one_line
from prebake.storage import RemotePath, zarr_store
from prebake.store.columns import read_column
from prebake.store.schema import array_specs

# Bit layout of an item key (video, annotated frame t, masklet type, masklet id), sorted like
# the items table; a clip looks up its frames with one searchsorted over these keys.
_ID_BITS, _TYPE_BITS, _T_BITS, _VIDEO_BITS = 22, 1, 16, 24
_T_SHIFT = _ID_BITS + _TYPE_BITS
_VIDEO_SHIFT = _T_SHIFT + _T_BITS


@dataclass
class ItemTables:
    """The items the dataset serves and what it needs to read them, as numpy arrays."""

    # Columns keep the tables' dtypes (int32 where the schema says so): at SA-V scale (35 M
    # items) each byte per item is 35 MB in every worker that reads the tables.
    selected: np.ndarray  # int64: dataset index -> item
    frame_row: np.ndarray  # int64 per item
    mask_row: np.ndarray  # int64 per item
    video: np.ndarray  # int32 per item
    frame_index: np.ndarray  # int32 per item
    masklet_id: np.ndarray  # int32 per item
    masklet_type: np.ndarray  # uint8 per item
    t: np.ndarray  # int32 per item: annotated frame within the video
    video_ids: list[str]
    video_frame_row: np.ndarray  # int64 per video
    frames_frame_index: np.ndarray | None  # int32 per frame row (clips only)
    sorted_keys: np.ndarray | None  # item keys in ascending order (clips only)
    key_order: np.ndarray | None  # item of each sorted key (clips only)

    def clip(self, item: int, clip_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The clip of `clip_len` annotated frames starting at `item`: each step's frame row
        (int64), the item at that step (int64, meaningful where present) and whether the
        masklet has a mask there (bool); one searchsorted over the sorted item keys."""
        assert self.sorted_keys is not None and self.key_order is not None
        video = int(self.video[item])
        steps = np.arange(clip_len, dtype=np.int64)
        start_key = (
            (video << _VIDEO_SHIFT)
            | (int(self.t[item]) << _T_SHIFT)
            | (int(self.masklet_type[item]) << _ID_BITS)
            | int(self.masklet_id[item])
        )
        wanted = start_key + (steps << _T_SHIFT)
        found = np.searchsorted(self.sorted_keys, wanted)
        found = np.minimum(found, len(self.sorted_keys) - 1)
        present = self.sorted_keys[found] == wanted
        frame_rows = int(self.video_frame_row[video]) + int(self.t[item]) + steps
        return frame_rows, self.key_order[found], present


def load_tables(
    path: Path | RemotePath,
    type_names: list[str],
    clip_len: int | None,
    masklet_types: tuple[str, ...] | None,
    min_prompt_cells: int,
    version: int,
    rows: dict[str, int],
) -> ItemTables:
    """The item tables of a store of schema `version`, the filters applied; `rows` counts its
    "items", "videos", "frame_rows" and "item_rows" (root attributes). Raises StoreError naming the table when one cannot be read or the tables do not
    describe rows of the store (a damaged store: `prebake verify` names the rows)."""
    try:
        root = zarr.open_group(zarr_store(path), mode="r", zarr_format=3)
    except Exception as error:  # zarr raises many types for a broken node
        raise StoreError(f"{path}: cannot open the store ({_reason(error)})") from None

    lengths = {"items": rows["items"], "videos": rows["videos"], "frames": rows["frame_rows"]}

    def column(name: str) -> np.ndarray:
        """A table column, one value per row of its table (StoreError naming it, else)."""
        try:
            values = read_column(root, array_specs(version)[name])
        except StoreError as error:
            raise StoreError(f"{path}/{error}") from None
        except Exception as error:  # zarr raises many types for a broken array or chunk
            raise StoreError(f"{path}/{name}: table unreadable ({_reason(error)})") from None
        expected = lengths[name.split("/")[0]]
        if len(values) != expected:
            raise StoreError(
                f"{path}/{name}: {len(values)} rows, the root attributes say {expected}"
            )
        return values

    video = column("items/video")
    video_frame_row = column("videos/frame_row")
    video_frames = column("videos/frames")
    frame_row = column("items/frame_row")
    mask_row = column("items/mask_row")
    masklet_type = column("items/masklet_type")
    masklet_id = column("items/masklet_id")
    frame_index = column("items/frame_index")
    video_ids = column("videos/video_id").tolist()
    if len(masklet_type) and int(masklet_type.max()) >= len(type_names):
        raise StoreError(f"{path}/items/masklet_type: codes outside 0..{len(type_names) - 1}")
    _check_rows(path, rows, video, video_frame_row, video_frames, frame_row, mask_row)
    t = (frame_row - video_frame_row[video]).astype(np.int32)
    keep = np.ones(len(video), dtype=bool)
    if masklet_types is not None:
        codes = [type_names.index(name) for name in masklet_types]
        keep &= np.isin(masklet_type, codes)
    if min_prompt_cells > 0:
        keep &= column("items/prompt_cells") >= min_prompt_cells
    frames_frame_index = sorted_keys = key_order = None
    if clip_len is not None:
        # A clip starts only where it fits: t + T <= the video's annotated frames (no padding).
        keep &= t + clip_len <= video_frames[video]
        frames_frame_index = column("frames/frame_index")
        keys = item_keys(path, video, t, masklet_type, masklet_id)
        key_order = np.argsort(keys, kind="stable")
        sorted_keys = keys[key_order]
    return ItemTables(
        selected=np.flatnonzero(keep).astype(np.int64),
        frame_row=frame_row,
        mask_row=mask_row,
        video=video,
        frame_index=frame_index,
        masklet_id=masklet_id,
        masklet_type=masklet_type,
        t=t,
        video_ids=video_ids,
        video_frame_row=video_frame_row,
        frames_frame_index=frames_frame_index,
        sorted_keys=sorted_keys,
        key_order=key_order,
    )


def _check_rows(
    path: Path | RemotePath,
    rows: dict[str, int],
    video: np.ndarray,
    video_frame_row: np.ndarray,
    video_frames: np.ndarray,
    frame_row: np.ndarray,
    mask_row: np.ndarray,
) -> None:
    """What the reader relies on, checked once at open (vectorized): every item's rows inside
    the store and inside its video's frames."""
    wrong = (video < 0) | (video >= len(video_frame_row))
    if not wrong.any():
        start = video_frame_row[video]
        t = frame_row - start
        wrong = (
            (t < 0)
            | (t >= video_frames[video])
            | (start + video_frames[video] > rows["frame_rows"])
        )
        wrong |= (mask_row < 0) | (mask_row >= rows["item_rows"])
    if wrong.any():
        item = int(np.flatnonzero(wrong)[0])
        raise StoreError(
            f"{path}/items: item {item} refers to rows outside its video or the store; "
            "prebake verify names every such row"
        )


def _reason(error: Exception) -> str:
    return one_line(f"{type(error).__name__}: {error}")


def item_keys(
    path: Path | RemotePath,
    video: np.ndarray,
    t: np.ndarray,
    masklet_type: np.ndarray,
    masklet_id: np.ndarray,
) -> np.ndarray:
    limits = (
        (video, _VIDEO_BITS),
        (t, _T_BITS),
        (masklet_type, _TYPE_BITS),
        (masklet_id, _ID_BITS),
    )
    for values, bits in limits:
        if len(values) and (values.min() < 0 or values.max() >= 1 << bits):
            raise StoreError(f"{path}: item tables hold values too large for clip lookup")
    return (
        (video.astype(np.int64) << _VIDEO_SHIFT)
        | (t.astype(np.int64) << _T_SHIFT)
        | (masklet_type.astype(np.int64) << _ID_BITS)
        | masklet_id.astype(np.int64)
    )
