"""Frames extracted for SAM 2 training: `<out>/<id>/00000.jpg, 00004.jpg ...` (named by 24 fps
index) with the `<id>_manual.json` files somewhere else under the source (often one flat folder)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from prebake.sources.base import VideoRef, open_jpeg, source_path
from prebake.sources.train import JsonAnnotatedVideo, json_files
from prebake.storage import RemotePath, sorted_paths


class JpegFolderVideo(JsonAnnotatedVideo):
    def iter_frames(self, conversion: str = "opencv") -> Iterator[tuple[int, Image.Image]]:
        folder = source_path(self.ref.frames, self.storage_options)
        for t, index in enumerate(self.frame_indices):
            path = folder / f"{index:05d}.jpg"
            yield t, open_jpeg(path, (self.width, self.height))


def discover(src: Path | RemotePath, masklets: str) -> list[VideoRef]:
    """Every frame folder named `<id>` (holding 00000.jpg) with a `<id>_manual.json` under `src`."""
    folders: dict[str, Path | RemotePath] = {}
    for first in sorted_paths(src.rglob("00000.jpg")):
        if "JPEGImages_24fps" not in first.parts:  # that is the val/test layout
            folders.setdefault(first.parent.name, first.parent)
    refs = []
    for manual in sorted_paths(src.rglob("*_manual.json")):
        video_id = manual.name.removesuffix("_manual.json")
        if video_id in folders and not manual.with_name(f"{video_id}.mp4").is_file():
            files = json_files(manual, masklets)
            if files:
                refs.append(VideoRef(video_id, "frames", str(folders[video_id]), files))
    return refs
