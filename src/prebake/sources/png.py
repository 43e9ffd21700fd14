"""Val / test layout: `JPEGImages_24fps/<id>/00000.jpg ...` (every frame) and
`Annotations_6fps/<id>/<obj:03d>/<frame:05d>.png`, one binary PNG per object per annotated frame
(recognised by those files, whatever the folders above them are called).
All masklets are manual; the object folder's number is the masklet id. Objects may overlap, so
masks stay per object. An object with no PNG at an annotated frame is absent there."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prebake.errors import SourceError
from prebake.sources.base import (
    Masklet,
    Video,
    VideoRef,
    decoded,
    open_image,
    open_jpeg,
    source_path,
)
from prebake.sources.discovery import Folder, SourceTree, nearest
from prebake.storage import RemotePath, listed


def read_png_mask(path: Path | RemotePath, size: tuple[int, int]) -> np.ndarray:
    """A mask PNG as 0/1 uint8, refused (from its header) when its size is not the frames'."""
    with open_image(path, "PNG") as image:
        if image.size != size:
            raise SourceError(
                path, f"mask is {image.size[0]}x{image.size[1]}, frames are {size[0]}x{size[1]}"
            )
        values = decoded(path, "PNG", lambda: np.asarray(image))
    if values.ndim != 2:
        raise SourceError(path, f"mask has {values.shape[2]} channels, expected one")
    return (values != 0).astype(np.uint8)


class PngMaskVideo(Video):
    def __init__(self, ref: VideoRef, storage_options: Mapping[str, Any] | None = None) -> None:
        # Listed once each when remote: every mask's existence is asked below.
        frames = listed(source_path(ref.frames, storage_options))
        masks = listed(source_path(ref.annotations[0], storage_options))
        objects = sorted(
            (p for p in masks.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda p: int(p.name),
        )
        if not objects:
            raise SourceError(masks, "no object folders (expected <obj:03d>/<frame:05d>.png)")
        indices = sorted(
            {int(p.stem) for obj in objects for p in obj.glob("*.png") if p.stem.isdigit()}
        )
        if not indices:
            raise SourceError(masks, "no mask PNGs")
        jpegs = {int(p.stem) for p in frames.glob("*.jpg") if p.stem.isdigit()}
        missing = [i for i in indices if i not in jpegs]
        if missing:
            raise SourceError(
                frames / f"{missing[0]:05d}.jpg",
                f"missing frame ({len(missing)} annotated frames have no JPEG)",
            )
        with open_image(frames / f"{indices[0]:05d}.jpg", "image") as first:
            width, height = first.size
        self._paths = [[obj / f"{i:05d}.png" for obj in objects] for i in indices]
        areas = np.zeros((len(indices), len(objects)), dtype=np.int64)
        for t, row in enumerate(self._paths):
            for k, path in enumerate(row):
                if path.is_file():
                    areas[t, k] = int(read_png_mask(path, (width, height)).sum())
        super().__init__(
            ref,
            width=width,
            height=height,
            frame_count=max(jpegs) + 1,
            frame_indices=indices,
            masklets=[Masklet("manual", int(obj.name)) for obj in objects],
            areas=areas,
            storage_options=storage_options,
        )

    def iter_frames(self, conversion: str = "opencv") -> Iterator[tuple[int, Image.Image]]:
        for t, index in enumerate(self.frame_indices):
            path = source_path(self.ref.frames, self.storage_options) / f"{index:05d}.jpg"
            yield t, open_jpeg(path, (self.width, self.height))

    def mask(self, t: int, k: int) -> np.ndarray:
        path = self._paths[t][k]
        if not path.is_file():
            return np.zeros((self.height, self.width), dtype=np.uint8)
        return read_png_mask(path, (self.width, self.height))


def recognise(tree: SourceTree, masklets: str) -> list[VideoRef]:
    """Every mask folder `<id>/` (subfolders `<obj:03d>/` of NNNNN.png masks) with a folder
    `<id>/` of NNNNN.jpg frames. Several frame folders of that name: the one sharing the
    longest path with the mask folder (in SA-V, `JPEGImages_24fps/<id>` beside
    `Annotations_6fps/<id>`); two equally near are the same video found twice (both are
    returned, and the caller asks). Folder names above them do not matter."""
    if masklets == "auto":
        return []  # val/test have manual masklets only
    by_name = tree.frame_folders()
    refs = []
    for masks in mask_folders(tree):
        candidates = [f for f in by_name.get(masks.name, []) if f.location != masks.location]
        for frames in nearest(masks.location, candidates):
            refs.append(VideoRef(masks.name, "png", frames.location, (masks.location,)))
    return refs


def mask_folders(tree: SourceTree) -> list[Folder]:
    """Folders with at least one subfolder named by a number that holds NNNNN.png masks."""
    found = []
    for folder in tree.folders.values():
        for name in folder.subfolders:
            child = tree.folders.get(tree.join(folder.location, name))
            if name.isdigit() and child is not None and child.pngs:
                found.append(folder)
                break
    return found
