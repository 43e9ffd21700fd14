"""Which items a dataset serves, and where their rows are: the row tables read once at open,
the filters applied (`load_tables`: the one place they are, for every reader), and the keys a
clip looks its frames up by.

Options that leave no item of a store that holds some are refused with a ValueError that names
the cause (`_why_empty`); a store that itself holds no items serves none, without an error.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from prebake.errors import StoreError, counted, one_line
from prebake.storage import RemotePath, zarr_store
from prebake.store.columns import read_column
from prebake.store.schema import ArraySpec, array_specs

# Bit layout of an item key (video, annotated frame t, masklet type, masklet id), sorted like
# the items table; a clip looks up its frames with one searchsorted over these keys.
_ID_BITS, _TYPE_BITS, _T_BITS, _VIDEO_BITS = 22, 1, 16, 24
_T_SHIFT = _ID_BITS + _TYPE_BITS
_VIDEO_SHIFT = _T_SHIFT + _T_BITS

_OPTIONS = ("clip_len", "masklet_types", "min_prompt_cells", "videos")  # in the readers' order

# `videos=`: the ids of the videos to keep, or a predicate on the id (train/val splits).
VideoFilter = Collection[str] | Callable[[str], object]


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
    videos_kept: tuple[str, ...] | None  # `videos=` resolved: the ids kept, in store order

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
    videos: VideoFilter | None = None,
) -> ItemTables:
    """The item tables of a store of schema `version`, the filters applied; `rows` counts its
    "items", "videos", "frame_rows" and "item_rows" (root attributes).

    `videos` (ids, or a callable on the id) is resolved here into the ids kept
    (`ItemTables.videos_kept`), which a pickled reader passes back in its workers.

    Raises StoreError naming the table when one cannot be read or the tables do not describe
    rows of the store (a damaged store: `prebake verify` names the rows). Raises ValueError: a
    masklet type that is not a type name (naming the types the items hold), video ids the store
    does not hold (naming a few, and how many), or options that leave no item of a store that
    holds items (naming the option and the store's limit)."""
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

    specs = array_specs(version)
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
    videos_kept = _resolve_videos(videos, video_ids, path)
    filters = _Filters(clip_len, masklet_types, min_prompt_cells, videos_kept)
    masks: dict[str, np.ndarray] = {}  # per option: which items it keeps
    if videos_kept is not None:
        kept = set(videos_kept)
        masks["videos"] = np.array([video_id in kept for video_id in video_ids], bool)[video]
    if masklet_types is not None:
        held = [type_names[code] for code in np.unique(masklet_type)]
        unknown = sorted(set(masklet_types) - set(type_names))
        if unknown:
            holds = f"the store holds {held}" if len(video) else "the store holds no items"
            raise ValueError(f"unknown masklet types {unknown}; {holds}")
        codes = [type_names.index(name) for name in masklet_types]
        masks["masklet_types"] = np.isin(masklet_type, codes)
    prompt_cells = None
    if min_prompt_cells > 0:
        prompt_cells = column("items/prompt_cells")
        masks["min_prompt_cells"] = prompt_cells >= min_prompt_cells
    frames_frame_index = sorted_keys = key_order = None
    if clip_len is not None:
        # A clip starts only where it fits: t + T <= the video's annotated frames (no padding).
        masks["clip_len"] = t + clip_len <= video_frames[video]
        frames_frame_index = column("frames/frame_index")
        keys = item_keys(path, video, t, masklet_type, masklet_id)
        key_order = np.argsort(keys, kind="stable")
        sorted_keys = keys[key_order]
    masks = {name: masks[name] for name in _OPTIONS if name in masks}  # as the caller lists them
    keep = np.ones(len(video), dtype=bool)
    for mask in masks.values():
        keep &= mask
    if len(video) and not keep.any():
        store = _StoreFacts(
            video, masklet_type, type_names, video_ids, prompt_cells, video_frames, root, specs
        )
        raise ValueError(f"{path}: the dataset is empty: {_why_empty(masks, filters, store)}")
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
        videos_kept=videos_kept,
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


def _resolve_videos(
    videos: VideoFilter | None, video_ids: list[str], path: object
) -> tuple[str, ...] | None:
    """The ids `videos` keeps, in store order (None: no filter). A collection naming ids the
    store does not hold is refused (a typo would silently shrink a split)."""
    if videos is None:
        return None
    if isinstance(videos, str):
        videos = (videos,)
    if callable(videos):
        return tuple(video_id for video_id in video_ids if videos(video_id))
    if not isinstance(videos, Collection):
        raise TypeError(
            f"videos must be a collection of video ids or a callable on the id, "
            f"not {type(videos).__name__}"
        )
    wanted = {str(video_id) for video_id in videos}
    unknown = sorted(wanted - set(video_ids))
    if unknown:
        shown = ", ".join(unknown[:3]) + (
            f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        )
        raise ValueError(
            f"{path}: videos= names {counted(len(unknown), 'video id')} the store does not hold: "
            f"{shown} (it holds {counted(len(video_ids), 'video')}; prebake info --videos lists "
            "them)"
        )
    return tuple(video_id for video_id in video_ids if video_id in wanted)


@dataclass
class _Filters:
    clip_len: int | None
    masklet_types: tuple[str, ...] | None
    min_prompt_cells: int
    videos_kept: tuple[str, ...] | None

    def option(self, name: str) -> str:
        """The option as the caller wrote it (`videos=` as the count it keeps)."""
        if name == "videos":
            assert self.videos_kept is not None
            return f"videos= (keeping {counted(len(self.videos_kept), 'video')})"
        value = getattr(self, name)
        return f"{name}={list(value) if isinstance(value, tuple) else value}"


@dataclass
class _StoreFacts:
    """What the explanation of an empty dataset looks at (read only on that path)."""

    video: np.ndarray
    masklet_type: np.ndarray
    type_names: list[str]
    video_ids: list[str]
    prompt_cells: np.ndarray | None
    video_frames: np.ndarray | None
    root: zarr.Group
    specs: dict[str, ArraySpec]

    def statuses(self, videos: list[int]) -> str:
        try:
            status = read_column(self.root, self.specs["videos/status"])
        except Exception:  # a damaged table: the explanation goes without it
            return "statuses unreadable"
        return ", ".join(f"{self.video_ids[v]}: {status[v]}" for v in videos[:3]) + (
            f" and {len(videos) - 3} more" if len(videos) > 3 else ""
        )


def _why_empty(masks: dict[str, np.ndarray], filters: _Filters, store: _StoreFacts) -> str:
    """Why the options leave no item: each option that alone leaves none, with the store's
    limit it passes; else the options together, each with its limit among the items the others
    keep."""
    everything = np.ones(len(store.video), dtype=bool)
    alone = [name for name, mask in masks.items() if not mask.any()]
    if alone:
        return "; ".join(_limit(name, everything, filters, store) for name in alone)
    reasons = []
    for name in masks:
        others = everything.copy()
        for other, mask in masks.items():
            if other != name:
                others &= mask
        if others.any():
            reasons.append(_limit(name, others, filters, store))
    names = [filters.option(name) for name in masks]
    together = ", ".join(names[:-1]) + f" and {names[-1]}"
    return f"{together} together leave no items ({'; '.join(reasons)})"


def _limit(name: str, scope: np.ndarray, filters: _Filters, store: _StoreFacts) -> str:
    """What option `name` asks past, over the items in `scope` (all, or the others' items)."""
    whole = bool(scope.all())
    of = "" if whole else f" of the {counted(int(scope.sum()), 'item')} the other options keep"
    videos = np.unique(store.video[scope])
    if name == "clip_len":
        assert store.video_frames is not None
        longest = int(store.video_frames[videos].max())
        return (
            f"clip_len={filters.clip_len} is longer than the longest video{of} "
            f"({longest} annotated frames)"
        )
    if name == "min_prompt_cells":
        assert store.prompt_cells is not None
        largest = int(store.prompt_cells[scope].max())
        return (
            f"min_prompt_cells={filters.min_prompt_cells} is more than the largest prompt any "
            f"item{of} has ({largest} cells)"
        )
    if name == "masklet_types":
        held = [store.type_names[code] for code in np.unique(store.masklet_type[scope])]
        where = (
            "the store holds"
            if whole
            else f"the {counted(int(scope.sum()), 'item')} the other options keep are of"
        )
        return f"{filters.option(name)} keeps none: {where} types {held}"
    assert filters.videos_kept is not None
    if not filters.videos_kept:
        return f"videos= keeps none of the store's {len(store.video_ids)} videos"
    if whole:
        row = {video_id: number for number, video_id in enumerate(store.video_ids)}
        kept = [row[video_id] for video_id in filters.videos_kept]
        return f"videos= keeps only videos without items ({store.statuses(kept)})"
    return f"videos= keeps none of the {counted(len(videos), 'video')}{of}"


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
