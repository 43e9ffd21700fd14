"""One pass over a source: what every folder holds, for the layouts to recognise videos in.

A source is walked once (local: `os.scandir`, folder by folder; remote: one `fs.find`) into a
`SourceTree`: per folder, the names of its video and annotation files, how many frame files
(`NNNNN.jpg`, `NNNNN.png`) it holds, and its subfolders. Each layout module recognises its
videos from that tree by what the files are (REFERENCE.md section 1), never by what a folder is
called, so the same rules serve a local folder and an object store.

Local walks follow symbolic links to folders. Every folder is identified by the (st_dev,
st_ino) of what it really is, so a folder reached twice (two links to it, or a link back to an
ancestor: a loop) is walked once, through the first path that reaches it (breadth first, in
name order, real folders before links, so the same tree always gives the same paths). A link
that cannot be followed (its target is missing, unreadable, or a link loop) and a folder that
cannot be listed are `problems`: one line each, naming the path and the reason.
"""

from __future__ import annotations

import os
import posixpath
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prebake.storage import RemotePath

MANUAL_SUFFIX = "_manual.json"
AUTO_SUFFIX = "_auto.json"
VIDEO_SUFFIX = ".mp4"
FRAME_NAME_DIGITS = 5  # SA-V names frames `{index:05d}.jpg` and masks `{index:05d}.png`

Stamp = list[int | str | None]  # how a file or folder looked: compared, never interpreted


def frame_file_kind(name: str) -> str | None:
    """'jpg' or 'png' for a frame-named file (`00012.jpg`: five or more digits), else None."""
    stem, dot, extension = name.rpartition(".")
    if dot and extension in ("jpg", "png") and len(stem) >= FRAME_NAME_DIGITS and stem.isdigit():
        return extension
    return None


def is_source_file(name: str) -> bool:
    """A file the layouts pair by name: an mp4 or an SA-V annotation JSON."""
    return name.endswith((VIDEO_SUFFIX, MANUAL_SUFFIX, AUTO_SUFFIX))


@dataclass
class Folder:
    """What one folder of the source holds (only what recognising videos needs)."""

    location: str  # path as reached from the source root (local), or URL (remote)
    name: str
    stamp: int | None = None  # local: the folder's st_mtime_ns (changes when files come or go)
    files: list[str] = field(default_factory=list)  # mp4 and annotation JSON names
    jpegs: int = 0  # NNNNN.jpg files
    pngs: int = 0  # NNNNN.png files
    frame_bytes: int = 0  # remote: bytes of those frame files (an object store lists sizes)
    subfolders: list[str] = field(default_factory=list)  # names


@dataclass
class SourceTree:
    """Every folder under a source root, keyed by location, and what could not be read."""

    root: Path | RemotePath
    folders: dict[str, Folder]
    problems: list[str]  # one line each: links that cannot be followed, folders not listed
    remote_stamps: dict[str, Stamp] = field(default_factory=dict)  # remote files: from the listing

    @property
    def remote(self) -> bool:
        return isinstance(self.root, RemotePath)

    def join(self, folder: str, name: str) -> str:
        return posixpath.join(folder, name) if self.remote else os.path.join(folder, name)

    def file_stamp(self, location: str) -> Stamp | None:
        """(size, mtime in ns) of a local file, (size, ETag or modification time) of a remote
        one; None when it is gone. A stat, not a read: a FIFO or a huge file costs nothing."""
        if self.remote:
            return self.remote_stamps.get(location)
        try:
            stat = os.stat(location)
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns]

    def folder_stamp(self, location: str) -> Stamp | None:
        """How a frame or mask folder looks: its frame files' count, and its mtime (local: it
        changes when a file is added, removed or renamed into place) or their bytes (remote)."""
        folder = self.folders.get(location)
        if folder is None:
            return None
        count = folder.jpegs + folder.pngs
        return [count, folder.frame_bytes if self.remote else folder.stamp]

    def frame_folders(self) -> dict[str, list[Folder]]:
        """Folders holding NNNNN.jpg frames, by folder name (the video id they would hold)."""
        found: dict[str, list[Folder]] = {}
        for folder in self.folders.values():
            if folder.jpegs:
                found.setdefault(folder.name, []).append(folder)
        return found


def walk(root: Path | RemotePath) -> SourceTree:
    """The source tree under `root`, local or remote, listed once."""
    if isinstance(root, RemotePath):
        return _remote_tree(root)
    return _local_tree(root)


def _local_tree(root: Path) -> SourceTree:
    folders: dict[str, Folder] = {}
    problems: list[str] = []
    seen: set[tuple[int, int]] = set()
    queue: deque[str] = deque([str(root)])
    while queue:
        path = queue.popleft()
        try:
            stat = os.stat(path)
            entries = sorted(os.scandir(path), key=lambda entry: entry.name)
        except OSError as error:
            problems.append(f"{path}: cannot list this folder ({error.strerror or error})")
            continue
        identity = (stat.st_dev, stat.st_ino)
        if identity in seen:  # reached before through another path (a link): walked once
            continue
        seen.add(identity)
        folder = Folder(path, os.path.basename(path), stat.st_mtime_ns)
        links: list[str] = []
        for entry in entries:
            kind = _entry_kind(entry, problems)
            if kind == "folder":
                folder.subfolders.append(entry.name)
                (links if entry.is_symlink() else queue).append(entry.path)
            elif kind == "file":
                _add_file(folder, entry.name)
        queue.extend(links)  # real folders of a level before links to folders
        folders[path] = folder
    return SourceTree(root, folders, problems)


def _entry_kind(entry: os.DirEntry[str], problems: list[str]) -> str | None:
    """'folder', 'file' (anything else that is there: FIFOs too) or None (a broken link)."""
    try:
        if entry.is_dir():  # follows links
            return "folder"
        if not entry.is_symlink():
            return "file"
        os.stat(entry.path)  # a link to a file, or why it cannot be followed
        return "file"
    except OSError as error:
        problems.append(_link_problem(entry.path, error))
        return None


def _link_problem(path: str, error: OSError) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return f"{path}: cannot be read ({error.strerror or error}); what it holds is not baked"
    if isinstance(error, FileNotFoundError):
        why = "its target does not exist"
    else:
        why = error.strerror or str(error)
    return f"{path}: link to {target} cannot be followed ({why}); what it holds is not baked"


def _add_file(folder: Folder, name: str, size: int = 0) -> None:
    kind = frame_file_kind(name)
    if kind == "jpg":
        folder.jpegs += 1
        folder.frame_bytes += size
    elif kind == "png":
        folder.pngs += 1
        folder.frame_bytes += size
    elif is_source_file(name):
        folder.files.append(name)


def _remote_tree(root: RemotePath) -> SourceTree:
    entries = root.listing_entries()
    to_url = root.fs.unstrip_protocol
    folders = {
        path: Folder(str(to_url(path)), posixpath.basename(path)) for path in sorted(entries[1])
    }
    stamps: dict[str, Stamp] = {}
    for path, (size, version) in sorted(entries[0].items()):
        parent = folders.get(posixpath.dirname(path))
        if parent is None:
            continue
        name = posixpath.basename(path)
        _add_file(parent, name, size)
        if is_source_file(name):
            stamps[str(to_url(path))] = [size, version]
    for path in sorted(folders):
        parent = folders.get(posixpath.dirname(path))
        if parent is not None and path != root.path:
            parent.subfolders.append(posixpath.basename(path))
    return SourceTree(
        root, {folder.location: folder for folder in folders.values()}, [], remote_stamps=stamps
    )


def common_depth(a: str, b: str) -> int:
    """Leading path parts two locations share."""
    depth = 0
    for x, y in zip(a.split("/"), b.split("/"), strict=False):
        if x != y:
            break
        depth += 1
    return depth


def nearest(anchor: str, candidates: Iterable[Folder]) -> list[Folder]:
    """The candidates sharing the longest path with `anchor` (more than one: a tie, which the
    caller reports as the same video found twice)."""
    scored = [(common_depth(anchor, folder.location), folder) for folder in candidates]
    if not scored:
        return []
    best = max(score for score, _ in scored)
    return [folder for score, folder in scored if score == best]
