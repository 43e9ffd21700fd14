"""A small, deterministic SA-V-format sample made by our own code, in any of the three layouts.

Frames are a textured background with moving shapes; each shape's mask is drawn with the same
geometry as its pixels, so masks are exact. `train` writes real H.264 mp4s (PyAV / libx264) with
`_manual.json` and `_auto.json` (COCO RLE via pycocotools); `frames` writes every 4th frame as
JPEG (quality 95, as SAM 2's extraction does) with the JSONs in one flat folder; `png` writes
`JPEGImages_24fps` and `Annotations_6fps` as SA-V val/test do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from prebake.sources.annotations import FRAME_STRIDE


@dataclass(frozen=True)
class SampleObject:
    kind: str  # "manual" or "auto"
    shape: str  # "disc" or "box"
    color: tuple[int, int, int]
    start: tuple[float, float]  # centre at frame 0, as fractions of width and height
    velocity: tuple[float, float]  # fractions per frame
    radius: float  # fraction of min(width, height)
    visible: tuple[int, int] = (0, 10**9)  # annotated frames [first, last) where it is drawn


@dataclass(frozen=True)
class SampleVideo:
    video_id: str
    width: int
    height: int
    frame_count: int  # 24 fps frames
    objects: tuple[SampleObject, ...] = field(default_factory=tuple)
    write_auto: bool = True


def default_sample() -> list[SampleVideo]:
    """Three short videos: landscape, portrait, and one without an `_auto.json`."""
    disc = SampleObject("manual", "disc", (230, 60, 40), (0.3, 0.4), (0.01, 0.004), 0.15)
    box = SampleObject(
        "manual", "box", (40, 200, 90), (0.6, 0.6), (-0.008, -0.006), 0.12, visible=(2, 10**9)
    )
    hidden = SampleObject(
        "manual", "disc", (255, 255, 0), (0.5, 0.5), (0.0, 0.0), 0.1, visible=(0, 0)
    )
    overlap = SampleObject("auto", "box", (30, 80, 220), (0.35, 0.45), (0.009, 0.003), 0.2)
    small = SampleObject("auto", "disc", (250, 250, 250), (0.8, 0.2), (-0.004, 0.01), 0.05)
    return [
        SampleVideo("sav_900001", 320, 240, 33, (disc, box, hidden, overlap, small)),
        SampleVideo("sav_900002", 192, 344, 26, (box, disc, overlap)),
        SampleVideo("sav_900003", 256, 192, 17, (disc, small), write_auto=False),
    ]


def render(video: SampleVideo, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frame `index` (RGB uint8) and every object's exact 0/1 mask at that frame."""
    h, w = video.height, video.width
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    seed = int(video.video_id.split("_")[-1])
    phase = seed % 7 + index * 0.15
    background = np.stack(
        [
            128 + 60 * np.sin(xs / 9.0 + phase) * np.cos(ys / 13.0),
            128 + 60 * np.sin((xs + ys) / 17.0 - phase),
            96 + 40 * np.cos(ys / 7.0 + phase / 2) + 0.1 * xs,
        ],
        axis=-1,
    )
    frame = np.clip(background, 0, 255).astype(np.uint8)
    masks = []
    annotated = index // FRAME_STRIDE
    for obj in video.objects:
        cx = (obj.start[0] + obj.velocity[0] * index) * w
        cy = (obj.start[1] + obj.velocity[1] * index) * h
        r = obj.radius * min(w, h)
        if obj.shape == "disc":
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        else:
            mask = (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r * 0.7)
        if not obj.visible[0] <= annotated < obj.visible[1]:
            mask = np.zeros_like(mask)
        frame[mask] = obj.color
        masks.append(mask.astype(np.uint8))
    return frame, masks


def _annotation(
    video: SampleVideo, kind: str, masks_by_frame: list[list[np.ndarray]]
) -> dict[str, object]:
    keep = [k for k, obj in enumerate(video.objects) if obj.kind == kind]
    masklet = []
    for masks in masks_by_frame:
        row = []
        for k in keep:
            rle = mask_utils.encode(np.asfortranarray(masks[k]))
            row.append(
                {"size": [video.height, video.width], "counts": rle["counts"].decode("ascii")}
            )
        masklet.append(row)
    floats = kind == "manual"  # the real manual files carry floats where auto ones carry ints
    return {
        "video_id": video.video_id,
        "video_duration": video.frame_count / 24,
        "video_frame_count": float(video.frame_count),
        "video_height": float(video.height),
        "video_width": float(video.width),
        "video_resolution": float(video.height * video.width),
        "masklet": masklet,
        "masklet_id": list(range(len(keep))),
        "masklet_num": len(keep),
        "masklet_first_appeared_frame": [
            float(video.objects[k].visible[0]) if floats else video.objects[k].visible[0]
            for k in keep
        ],
        "masklet_frame_count": [len(masklet)] * len(keep),
        "masklet_type": [kind] * len(keep),
        "masklet_stability_score": [None] * len(keep)
        if floats
        else [[1.0] * len(keep) for _ in masklet],
    }


def write_video(video: SampleVideo, root: Path, layout: str) -> None:
    """Write one sample video in `layout` under `root`."""
    annotated: list[list[np.ndarray]] = []
    if layout == "train":
        root.mkdir(parents=True, exist_ok=True)
        with av.open(str(root / f"{video.video_id}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast"}
            for index in range(video.frame_count):
                frame, masks = render(video, index)
                if index % FRAME_STRIDE == 0:
                    annotated.append(masks)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        json_dir = root
    elif layout == "frames":
        frame_dir = root / "JPEGImages" / video.video_id
        frame_dir.mkdir(parents=True, exist_ok=True)
        for index in range(0, video.frame_count, FRAME_STRIDE):
            frame, masks = render(video, index)
            annotated.append(masks)
            Image.fromarray(frame).save(frame_dir / f"{index:05d}.jpg", quality=95)
        json_dir = root / "annotations"
        json_dir.mkdir(parents=True, exist_ok=True)
    elif layout == "png":
        frame_dir = root / "JPEGImages_24fps" / video.video_id
        frame_dir.mkdir(parents=True, exist_ok=True)
        for index in range(video.frame_count):
            frame, masks = render(video, index)
            Image.fromarray(frame).save(frame_dir / f"{index:05d}.jpg", quality=95)
            if index % FRAME_STRIDE == 0:
                for k, mask in enumerate(masks):
                    obj_dir = root / "Annotations_6fps" / video.video_id / f"{k:03d}"
                    obj_dir.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask * 255).save(obj_dir / f"{index:05d}.png")
        return
    else:
        raise ValueError(f"unknown layout {layout!r}")
    kinds = ["manual", "auto"] if video.write_auto else ["manual"]
    for kind in kinds:
        with (json_dir / f"{video.video_id}_{kind}.json").open("w") as handle:
            json.dump(_annotation(video, kind, annotated), handle)


def write_sample(
    root: Path, layout: str = "train", videos: list[SampleVideo] | None = None
) -> Path:
    for video in videos or default_sample():
        write_video(video, root, layout)
    return root


def annotated_frames(video: SampleVideo) -> int:
    return math.ceil(video.frame_count / FRAME_STRIDE)


def run_demo(out: Path, echo: Callable[[str], None] = print) -> int:
    """Write the sample, build it, verify it, read a batch through a DataLoader; return an exit code."""
    import shutil

    from prebake.build import BuildOptions, build
    from prebake.verify import verify_store

    sample, store = out / "sample", out / "store.zarr"
    shutil.rmtree(sample, ignore_errors=True)
    write_sample(sample, "train")
    echo(
        f"sample: {len(default_sample())} SA-V-format videos (H.264 mp4 + manual/auto JSON) in {sample}"
    )
    report = build(
        BuildOptions(
            src=sample,
            out=store,
            workers=2,
            masklets="all",
            frames_per_shard=4,
            items_per_shard=16,
            overwrite=True,
        )
    )
    echo(
        f"build: {report.videos} videos, {report.frames} frames, {report.items} items, {report.bytes / 1e6:.1f} MB, {report.frames_per_second:.1f} frames/s"
    )
    verdict = verify_store(store, src=sample, samples=None)
    echo(f"verify: {verdict.summary()}")
    batch = _read_batch(store)
    echo("batch of 4 items through DataLoader(num_workers=2):")
    for key, value in batch.items():
        if hasattr(value, "dtype"):
            echo(
                f"  {key:15s} {value.dtype!s:14s} {tuple(value.shape)} min {value.min().item():.3f} max {value.max().item():.3f}"
            )
        else:
            echo(f"  {key:15s} {value}")
    echo(
        f"store: {store} (try: prebake info {store}; prebake show {store} --grid 8 --out preview.png)"
    )
    return 0 if verdict.ok and not report.failures else 1


def _read_batch(store: Path) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from prebake.reader import PrebakedDataset

    loader = DataLoader(PrebakedDataset(store), batch_size=4, shuffle=True, num_workers=2)
    batch: dict[str, Any] = next(iter(loader))
    return batch
