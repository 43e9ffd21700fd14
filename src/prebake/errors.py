"""Errors whose message is one line a user can act on (the CLI prints it without a traceback).

Imports nothing of the package: every room may raise these.
"""

from __future__ import annotations

MAX_REASON_CHARS = 300  # a failure reason is one line of a report, not a dump


class PrebakeError(Exception):
    """Base class: the message is complete and fit to print as it is."""


class SourceError(PrebakeError):
    """A source file (video, frame, annotation) is missing, unreadable or inconsistent.

    `path` is a local path or a URL (`prebake.storage.RemotePath`): anything whose `str` names it.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class StoreError(PrebakeError):
    """A store is missing, not a prebake store, incomplete, locked or built with other parameters."""


def counted(count: int, noun: str) -> str:
    """'1 video', '2 videos': a count and its noun, plural with an s unless the count is one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def one_line(text: str) -> str:
    """A failure reason as one short line (some library messages span several)."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."
