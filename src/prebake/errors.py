"""Errors whose message is one line a user can act on (the CLI prints it without a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prebake.storage import RemotePath


class PrebakeError(Exception):
    """Base class: the message is complete and fit to print as it is."""


class SourceError(PrebakeError):
    """A source file (video, frame, annotation) is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path | RemotePath, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class StoreError(PrebakeError):
    """A store is missing, not a prebake store, incomplete, locked or built with other parameters."""
