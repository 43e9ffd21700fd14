"""Sources: one module per SA-V layout (REFERENCE.md section 1), all yielding `Video`s.

`find_videos` walks a source once (`discovery.walk`) and lets each layout recognise its videos
in that one tree by what the files are; `open_video` opens one of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prebake.errors import PrebakeError
from prebake.sources import frames, png, train
from prebake.sources.base import MASKLET_TYPES, Masklet, Video, VideoRef
from prebake.sources.discovery import (
    MANUAL_SUFFIX,
    VIDEO_SUFFIX,
    SourceTree,
    Stamp,
    walk,
)
from prebake.storage import RemotePath, listed, missing

LAYOUTS = {"train": train, "frames": frames, "png": png}
_VIDEO_CLASSES: dict[str, Callable[..., Video]] = {
    "train": train.Mp4Video,
    "frames": frames.JpegFolderVideo,
    "png": png.PngMaskVideo,
}
NOT_FOUND_HINT = (
    "looked for <id>.mp4 + <id>_manual.json, <id>/NNNNN.jpg + <id>_manual.json, "
    "<id>/NNNNN.jpg + <id>/<obj>/NNNNN.png"
)

__all__ = [
    "LAYOUTS",
    "MASKLET_TYPES",
    "Discovery",
    "Masklet",
    "Video",
    "VideoRef",
    "discover",
    "find_videos",
    "fingerprint",
    "open_video",
    "select",
]


@dataclass
class Discovery:
    """What one walk of a source found."""

    src: Path | RemotePath
    tree: SourceTree
    refs: list[VideoRef]  # every video recognised, sorted by id
    problems: list[str] = field(default_factory=list)  # one line each; data that was not read
    notes: list[str] = field(default_factory=list)  # files that pair with nothing (not baked)


def find_videos(
    src: Path | RemotePath, *, layout: str = "auto", masklets: str = "manual"
) -> Discovery:
    """Every video under `src` in one layout, or in any with `layout='auto'`, sorted by id.

    Raises PrebakeError (one line) when `src` is not a folder, or when one video id has two
    different sources (two mp4s, an mp4 and a frame folder, two equally near frame folders...):
    naming both, since only the user knows which is meant. The same files reached twice
    through links are one source.
    """
    src = listed(src)
    if not src.is_dir():
        if src.is_file():
            raise PrebakeError(
                f"{src}: is a file; the source is the folder that holds the SA-V videos "
                "(--videos FILE bakes some of them)"
            )
        raise PrebakeError(f"{src}: {missing(src, 'source folder')}")
    tree = walk(src)
    names = list(LAYOUTS) if layout == "auto" else [layout]
    found: dict[str, VideoRef] = {}
    twice: list[tuple[VideoRef, VideoRef]] = []
    for name in names:
        for ref in sorted(LAYOUTS[name].recognise(tree, masklets), key=_ref_order):
            other = found.setdefault(ref.video_id, ref)
            if other is not ref and not _same_source(other, ref, tree):
                twice.append((other, ref))
    if twice:
        first, second = twice[0]
        more = len({a.video_id for a, _ in twice}) - 1
        raise PrebakeError(
            f"{src}: video {first.video_id} found twice ({first.frames} and {second.frames})"
            + (f", and {more} more videos too" if more else "")
            + "; keep one of them under --src, or choose a layout with --layout"
        )
    refs = [found[key] for key in sorted(found)]
    notes = _unpaired(tree, refs) if layout == "auto" and masklets != "auto" else []
    return Discovery(src, tree, refs, list(tree.problems), notes)


def select(
    src: Path | RemotePath,
    refs: list[VideoRef],
    video_ids: list[str] | None = None,
    limit: int | None = None,
) -> list[VideoRef]:
    """The videos `--videos` names (all when None), then the first `limit` of them by id."""
    if video_ids is not None:
        wanted = set(video_ids)
        unknown = sorted(wanted - {ref.video_id for ref in refs})
        if unknown:
            raise PrebakeError(
                f"{src}: {len(unknown)} requested videos not found, first: {unknown[0]}"
            )
        refs = [ref for ref in refs if ref.video_id in wanted]
    return refs[:limit] if limit is not None else refs


def discover(
    src: Path | RemotePath,
    *,
    layout: str = "auto",
    masklets: str = "manual",
    video_ids: list[str] | None = None,
    limit: int | None = None,
) -> list[VideoRef]:
    """The videos `find_videos` finds, selected by `video_ids` and `limit` (see `select`)."""
    found = find_videos(src, layout=layout, masklets=masklets)
    return select(found.src, found.refs, video_ids, limit)


def fingerprint(tree: SourceTree, ref: VideoRef) -> dict[str, Stamp | None]:
    """How the files a video is baked from looked, by role: `video` (the mp4), `manual`,
    `auto` (annotation files), `frames` (the frame folder), `masks` and `masks/<obj>` (mask
    folders). Files by (size, mtime in ns), or (size, ETag or modification time) remote;
    folders by (frame files, mtime in ns), or (frame files, their bytes) remote: stats and
    listings only, never a read, so checking 50 k videos costs a stat or two each. A frame
    rewritten in place under its own name, with the folder's mtime kept, goes unseen."""
    stamps: dict[str, Stamp | None] = {}
    if ref.layout == "train":
        stamps["video"] = tree.file_stamp(ref.frames)
    else:
        stamps["frames"] = tree.folder_stamp(ref.frames)
    if ref.layout == "png":
        masks = ref.annotations[0]
        stamps["masks"] = tree.folder_stamp(masks)
        folder = tree.folders.get(masks)
        for name in folder.subfolders if folder is not None else []:
            if name.isdigit():
                stamps[f"masks/{name}"] = tree.folder_stamp(tree.join(masks, name))
    else:
        for path in ref.annotations:
            role = "manual" if path.endswith(MANUAL_SUFFIX) else "auto"
            stamps[role] = tree.file_stamp(path)
    return stamps


def open_video(ref: VideoRef, storage_options: Mapping[str, Any] | None = None) -> Video:
    """Open and validate one video's annotations (raises SourceError naming the bad file).

    A ref's files are paths or fsspec URLs; `storage_options` are passed to fsspec for URLs.
    """
    return _VIDEO_CLASSES[ref.layout](ref, storage_options=storage_options)


def _ref_order(ref: VideoRef) -> tuple[str, str]:
    return (ref.video_id, ref.frames)


def _same_source(a: VideoRef, b: VideoRef, tree: SourceTree) -> bool:
    """Two refs naming the same files (reached through different links)."""
    if a.layout != b.layout or tree.remote:
        return a == b
    real = os.path.realpath
    return real(a.frames) == real(b.frames) and [real(p) for p in a.annotations] == [
        real(p) for p in b.annotations
    ]


def _unpaired(tree: SourceTree, refs: list[VideoRef]) -> list[str]:
    """One note per kind of file that pairs with nothing, so it is not baked without a word."""
    used = {ref.frames for ref in refs} | {path for ref in refs for path in ref.annotations}
    manual, videos = [], []
    for folder in tree.folders.values():
        for name in folder.files:
            location = tree.join(folder.location, name)
            if location in used:
                continue
            if name.endswith(MANUAL_SUFFIX):
                manual.append(location)
            elif name.endswith(VIDEO_SUFFIX):
                videos.append(location)
    masks = [f.location for f in png.mask_folders(tree) if f.location not in used]
    notes = []
    for paths, what in (
        (manual, "annotation files have no <id>.mp4 beside them and no <id>/ folder of frames"),
        (videos, "mp4 files have no <id>_manual.json beside them"),
        (masks, "mask folders have no <id>/ folder of NNNNN.jpg frames"),
    ):
        if paths:
            paths.sort()
            notes.append(f"{len(paths)} {what}, so they are not baked (first: {paths[0]})")
    return notes
