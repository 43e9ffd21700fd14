"""Progress bars and notes on stderr: tqdm's bars on a terminal; in a log (stderr redirected to a
file or a pipe, as under nohup, cron, Slurm), the same bars as a plain line every
LOG_INTERVAL_SECONDS, never a carriage return. stdout stays free for results (`--json`)."""

from __future__ import annotations

import sys
from typing import IO, Any

LOG_INTERVAL_SECONDS = 10.0  # between two progress lines in a log


def _to_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class _Lines:
    """A file for tqdm that writes each refresh of a bar as a line of its own: tqdm redraws
    with carriage returns and pads with spaces, which a log keeps as one ever-growing line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and line != self.last:  # tqdm draws the final state twice when it closes
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*, disable: bool = False, **options: Any) -> Any:
    """`tqdm(**options)` on stderr: a live bar on a terminal, else a line every few seconds."""
    from tqdm import tqdm

    if _to_terminal() or disable:
        return tqdm(file=sys.stderr, disable=disable, **options)
    return tqdm(
        file=_Lines(sys.stderr),
        disable=disable,
        mininterval=LOG_INTERVAL_SECONDS,
        maxinterval=LOG_INTERVAL_SECONDS,
        ascii=True,
        **options,
    )


def say(message: str) -> None:
    """One line on stderr, above the live bars on a terminal."""
    if _to_terminal():
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)
