"""Frames extracted for SAM 2 training: `<out>/<id>/00000.jpg, 00004.jpg ...` (named by 24 fps
index) with the `<id>_manual.json` files somewhere else under the source (often one flat folder).
Recognised by what the files are, whatever the folders above them are called."""

from __future__ import annotations

from collections.abc import Iterator

from PIL import Image

from prebake.sources.base import VideoRef, open_jpeg, source_path
from prebake.sources.discovery import MANUAL_SUFFIX, SourceTree, nearest
from prebake.sources.train import JsonAnnotatedVideo, annotation_files


class JpegFolderVideo(JsonAnnotatedVideo):
    def iter_frames(self, conversion: str = "opencv") -> Iterator[tuple[int, Image.Image]]:
        folder = source_path(self.ref.frames, self.storage_options)
        for t, index in enumerate(self.frame_indices):
            path = folder / f"{index:05d}.jpg"
            yield t, open_jpeg(path, (self.width, self.height))


def recognise(tree: SourceTree, masklets: str) -> list[VideoRef]:
    """Every `<id>_manual.json` with a folder `<id>/` of NNNNN.jpg frames anywhere under the
    source. Several such folders: the one sharing the longest path with the JSON file; two
    equally near are the same video found twice (both are returned, and the caller asks)."""
    by_name = tree.frame_folders()
    refs = []
    for folder in tree.folders.values():
        names = set(folder.files)
        for name in folder.files:
            video_id = name.removesuffix(MANUAL_SUFFIX)
            if video_id == name or video_id not in by_name:
                continue
            files = annotation_files(tree, folder, names, video_id, masklets)
            for frames in nearest(folder.location, by_name[video_id]) if files else []:
                refs.append(VideoRef(video_id, "frames", frames.location, files))
    return refs
