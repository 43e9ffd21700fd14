"""The build plan: which rows each video (unit of work) owns, fixed before anything is written.

Each unit's frame rows and item rows start on a shard boundary, so a unit writes only shards it
alone owns: units can run in any order, in parallel, on other machines, or again after a crash,
without touching each other (two writers on one shard lose data in zarr-python).

A plan of all SA-V holds tens of millions of items, so per-frame and per-item values are numpy
arrays (int32, 4 bytes a value) in memory and base64 strings in JSON, not Python lists.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from prebake.sources import Video, VideoRef

ITEM_COLUMNS = 3  # (t: annotated frame, k: masklet, area: source pixels on)


def encode_ints(values: np.ndarray, dtype: str = "<i4") -> str:
    """A JSON-friendly form of an integer array: base64 of its little-endian bytes."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def decode_ints(text: str, dtype: str = "<i4") -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def _no_items() -> np.ndarray:
    return np.zeros((0, ITEM_COLUMNS), dtype=np.int32)


def _no_frames() -> np.ndarray:
    return np.zeros(0, dtype=np.int32)


@dataclass
class UnitPlan:
    index: int
    video_id: str
    layout: str
    frames: str
    annotations: list[str]
    status: str = "planned"  # "planned" or "failed" (could not even be opened)
    reason: str = ""  # one-line failure message naming the file
    width: int = 0
    height: int = 0
    frame_count: int = 0
    frame_indices: np.ndarray = field(default_factory=_no_frames)  # int32, 24 fps index per t
    masklets: list[tuple[str, int]] = field(default_factory=list)
    items: np.ndarray = field(default_factory=_no_items)  # int32 (n, 3): (t, masklet k, area)
    frame_row: int = -1
    item_row: int = -1
    # How its source files looked when planned (`prebake.sources.fingerprint`): a later build
    # compares, to name a video whose source changed or vanished since it was baked.
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> VideoRef:
        return VideoRef(self.video_id, self.layout, self.frames, tuple(self.annotations))

    @classmethod
    def from_video(cls, index: int, video: Video) -> UnitPlan:
        return cls(
            index=index,
            **_ref_fields(video.ref),
            width=video.width,
            height=video.height,
            frame_count=video.frame_count,
            frame_indices=np.asarray(video.frame_indices, dtype=np.int32),
            masklets=[(m.type, m.id) for m in video.masklets],
            items=items_of(video.areas),
        )

    @classmethod
    def failed(cls, index: int, ref: VideoRef, reason: str) -> UnitPlan:
        return cls(index=index, **_ref_fields(ref), status="failed", reason=reason)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnitPlan:
        values = dict(data)
        values["frame_indices"] = decode_ints(data["frame_indices"])
        values["items"] = decode_ints(data["items"]).reshape(-1, ITEM_COLUMNS)
        values["masklets"] = [(str(kind), int(i)) for kind, i in data["masklets"]]
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        data["frame_indices"] = encode_ints(self.frame_indices)
        data["items"] = encode_ints(self.items)
        data["masklets"] = [list(masklet) for masklet in self.masklets]
        return data


def items_of(areas: np.ndarray) -> np.ndarray:
    """The (t, k, area) of every non-empty (annotated frame, masklet), frame by frame, masklet
    by masklet: the order of the item rows."""
    t, k = np.nonzero(areas > 0)
    # An area fits int32: sources refuse sides over 16384 (16384^2 < 2^31).
    return np.stack([t, k, areas[t, k]], axis=1).astype(np.int32)


def _ref_fields(ref: VideoRef) -> dict[str, Any]:
    return {
        "video_id": ref.video_id,
        "layout": ref.layout,
        "frames": ref.frames,
        "annotations": list(ref.annotations),
    }


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def assign_rows(
    units: list[UnitPlan],
    frames_per_shard: int,
    items_per_shard: int,
    first_frame_row: int = 0,
    first_item_row: int = 0,
) -> tuple[int, int]:
    """Give each planned unit shard-aligned row ranges, from the given (shard-aligned) first
    rows on (an append starts at the store's capacity, so it writes only new shards); return
    the (frame_rows, item_rows) capacity."""
    assert first_frame_row % frames_per_shard == 0 and first_item_row % items_per_shard == 0
    frame_rows, item_rows = first_frame_row, first_item_row
    for unit in units:
        if unit.status != "planned":
            continue
        unit.frame_row, unit.item_row = frame_rows, item_rows
        frame_rows += _round_up(len(unit.frame_indices), frames_per_shard)
        item_rows += _round_up(len(unit.items), items_per_shard)
    return frame_rows, item_rows


@dataclass
class Outcome:
    """What the records of a plan's units say: the units baked, and the failures as the store's
    `failures` attribute lists them (video id, path, one-line reason)."""

    baked: list[UnitPlan]
    failures: list[dict[str, str]]

    @classmethod
    def of(cls, units: list[UnitPlan], records: list[dict[str, Any]]) -> Outcome:
        """`records` are the units' records, in unit order."""
        pairs = list(zip(units, records, strict=True))
        return cls(
            baked=[unit for unit, record in pairs if record["status"] == "ok"],
            failures=[
                {"video_id": unit.video_id, "path": unit.frames, "reason": record["reason"]}
                for unit, record in pairs
                if record["status"] != "ok"
            ],
        )

    @property
    def frames(self) -> int:
        """Annotated frames of the baked units."""
        return sum(len(unit.frame_indices) for unit in self.baked)

    @property
    def items(self) -> int:
        """Items of the baked units."""
        return sum(len(unit.items) for unit in self.baked)
