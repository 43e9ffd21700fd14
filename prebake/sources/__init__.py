"""Sources: one module per SA-V layout (REFERENCE.md section 1), all yielding `Video`s."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prebake.errors import PrebakeError
from prebake.sources import frames, png, train
from prebake.sources.base import MASKLET_TYPES, Masklet, Video, VideoRef
from prebake.storage import RemotePath, listed

LAYOUTS = {"train": train, "frames": frames, "png": png}
_VIDEO_CLASSES: dict[str, Callable[..., Video]] = {
    "train": train.Mp4Video,
    "frames": frames.JpegFolderVideo,
    "png": png.PngMaskVideo,
}

__all__ = ["LAYOUTS", "MASKLET_TYPES", "Masklet", "Video", "VideoRef", "discover", "open_video"]


def discover(
    src: Path | RemotePath,
    *,
    layout: str = "auto",
    masklets: str = "manual",
    video_ids: list[str] | None = None,
    limit: int | None = None,
) -> list[VideoRef]:
    """Find the videos under `src` (recursively) in one layout, or in any with `layout='auto'`.

    Sorted by video id, so the same source always gives the same rows. A remote source is
    listed once (one fs.find), then searched in memory.
    """
    src = listed(src)
    if not src.is_dir():
        raise PrebakeError(f"{src}: source folder not found")
    layouts = list(LAYOUTS) if layout == "auto" else [layout]
    found: dict[str, VideoRef] = {}
    for name in layouts:
        for ref in LAYOUTS[name].discover(src, masklets):
            if ref.video_id in found:
                other = found[ref.video_id]
                raise PrebakeError(
                    f"{src}: video {ref.video_id} found twice ({other.frames} and {ref.frames}); "
                    "pick one with --layout or --videos"
                )
            found[ref.video_id] = ref
    refs = [found[key] for key in sorted(found)]
    if video_ids is not None:
        wanted = set(video_ids)
        unknown = sorted(wanted - set(found))
        if unknown:
            raise PrebakeError(
                f"{src}: {len(unknown)} requested videos not found, first: {unknown[0]}"
            )
        refs = [ref for ref in refs if ref.video_id in wanted]
    return refs[:limit] if limit is not None else refs


def open_video(ref: VideoRef, storage_options: Mapping[str, Any] | None = None) -> Video:
    """Open and validate one video's annotations (raises SourceError naming the bad file).

    A ref's files are paths or fsspec URLs; `storage_options` are passed to fsspec for URLs.
    """
    return _VIDEO_CLASSES[ref.layout](ref, storage_options=storage_options)
