"""The build plan: which rows each video (unit of work) owns, fixed before anything is written.

Each unit's frame rows and item rows start on a shard boundary, so a unit writes only shards it
alone owns: units can run in any order, in parallel, on other machines, or again after a crash,
without touching each other (two writers on one shard lose data in zarr-python).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prebake.sources import Video, VideoRef


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
    frame_indices: list[int] = field(default_factory=list)
    masklets: list[tuple[str, int]] = field(default_factory=list)
    items: list[tuple[int, int, int]] = field(default_factory=list)  # (t, masklet k, area)
    frame_row: int = -1
    item_row: int = -1

    @property
    def ref(self) -> VideoRef:
        return VideoRef(self.video_id, self.layout, self.frames, tuple(self.annotations))

    @classmethod
    def from_video(cls, index: int, video: Video) -> UnitPlan:
        areas = video.areas
        return cls(
            index=index,
            **_ref_fields(video.ref),
            width=video.width,
            height=video.height,
            frame_count=video.frame_count,
            frame_indices=list(video.frame_indices),
            masklets=[(m.type, m.id) for m in video.masklets],
            items=[
                (t, k, int(areas[t, k]))
                for t in range(areas.shape[0])
                for k in range(areas.shape[1])
                if areas[t, k] > 0
            ],
        )

    @classmethod
    def failed(cls, index: int, ref: VideoRef, reason: str) -> UnitPlan:
        return cls(index=index, **_ref_fields(ref), status="failed", reason=reason)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnitPlan:
        plan = cls(**data)
        plan.masklets = [(str(kind), int(i)) for kind, i in plan.masklets]
        plan.items = [(int(t), int(k), int(a)) for t, k, a in plan.items]
        return plan

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
    units: list[UnitPlan], frames_per_shard: int, items_per_shard: int
) -> tuple[int, int]:
    """Give each planned unit shard-aligned row ranges; return the (frame_rows, item_rows) capacity."""
    frame_rows = item_rows = 0
    for unit in units:
        if unit.status != "planned":
            continue
        unit.frame_row, unit.item_row = frame_rows, item_rows
        frame_rows += _round_up(len(unit.frame_indices), frames_per_shard)
        item_rows += _round_up(len(unit.items), items_per_shard)
    return frame_rows, item_rows
