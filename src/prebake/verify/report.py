"""What `prebake verify` found: each problem with the check that found it, and what each group
of checks covered, as text (`summary`) and as JSON (`to_json`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from prebake.errors import counted

SUMMARY_PROBLEMS = 100  # problems printed by summary(); to_json() has them all
TABLE_GROUPS = ("frames", "items", "videos")
# Messages open with what they are about: "<array or table>[ row <n>]" then " (", ":" or " ".
_SUBJECT = re.compile(r"(?P<array>[a-z_]+(?:/[a-z_]+)?)(?: row (?P<row>\d+))?(?=[ :(]|$)")


@cache
def _array_names() -> frozenset[str]:
    from prebake.store.schema import array_specs

    return frozenset(array_specs()) | frozenset(TABLE_GROUPS)


@dataclass(frozen=True)
class Problem:
    check: str  # the name of the check that found it (`prebake verify --help` lists them)
    message: str  # one line naming the array, row or file

    @property
    def array(self) -> str | None:
        """The data array or table the problem is in (None: a file, the root's attributes)."""
        return self._subject()[0]

    @property
    def row(self) -> int | None:
        """The row of `array` the problem is in (None: the whole array, or no array)."""
        return self._subject()[1]

    def _subject(self) -> tuple[str | None, int | None]:
        match = _SUBJECT.match(self.message)
        if match is None or match["array"] not in _array_names():
            return None, None
        return match["array"], int(match["row"]) if match["row"] else None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "array": self.array, "row": self.row, "message": self.message}


@dataclass
class VerifyReport:
    store: str
    found: list[Problem] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)
    integrity: dict[str, Any] = field(default_factory=dict)
    semantics: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.found

    @property
    def problems(self) -> list[str]:
        """Each problem's message, in the order found."""
        return [problem.message for problem in self.found]

    def problem(self, check: str, message: str) -> None:
        self.found.append(Problem(check, message))

    @property
    def integrity_mb_per_s(self) -> float:
        seconds = self.integrity.get("seconds", 0.0)
        return self.integrity.get("bytes", 0) / seconds / 1e6 if seconds > 0 else 0.0

    def summary(self) -> str:
        problems = self.problems
        verdict = "OK" if self.ok else counted(len(problems), "problem")
        lines = [f"{self.store}: {verdict}"]
        if self.metadata:
            count = self.metadata["problems"]
            lines.append(
                f"  metadata   every zarr.json against {self.metadata['schema']} (JSON Schema): "
                + (counted(count, "problem") if count else "valid")
            )
        if self.schema:
            lines.append(
                f"  schema     {self.schema.get('arrays', 0)} arrays and {self.schema.get('tables', 0)} tables "
                f"against {self.schema.get('name')} v{self.schema.get('version')}; tables cross-checked"
            )
            if self.schema.get("lacks"):
                lines.append(
                    f"  fields     {', '.join(self.schema['fields'])}; the store lacks "
                    f"{', '.join(self.schema['lacks'])} (built with --fields)"
                )
            if self.schema.get("videos_failed"):  # recorded at build time, not a fault of the store
                lines.append(
                    f"  note       {self.schema['videos_failed']} videos failed at build time and are "
                    "not in the store (prebake info lists them)"
                )
        if self.integrity:
            lines.append(
                f"  integrity  {self.integrity['shards']} shard files, {self.integrity['chunks']} chunks, "
                f"{self.integrity['bytes'] / 1e6:.1f} MB read and checksummed in {self.integrity['seconds']:.2f} s "
                f"({self.integrity_mb_per_s:.0f} MB/s)"
            )
            if self.integrity.get("append_shards"):
                lines.append(
                    f"  note       an append is under way ({self.integrity['append_shards']} new shard "
                    "files past the store's rows, not part of it yet); prebake build finishes it"
                )
        if self.semantics:
            s = self.semantics
            sampled = " (random sample)" if s["sampled"] else ""
            frames = f"{s['frames_checked']}/{s['frames']} frames"
            if s.get("frames_unchecked"):
                frames = f"frames not checked ({s['frames_unchecked']})"
            lines.append(f"  semantics  {frames}, {s['items_checked']}/{s['items']} items{sampled}")
        if self.source is not None:
            lines.append(
                f"  source     {self.source['items_checked']} items and {self.source['frames_checked']} frames "
                f"re-derived from {self.source['src']} and compared bit for bit"
            )
            for decoder in self.source.get("decoders", []):
                lines.append(f"             frames decoded by {decoder}")
            lines.append(
                f"             resized as Pillow {self.source.get('pillow_rule')} does (the store's --match-pillow)"
            )
        elif self.semantics:
            lines.append("  source     not checked (pass --src to re-derive items bit for bit)")
        if problems:
            lines.append("problems:")
            lines.extend(f"  {problem}" for problem in problems[:SUMMARY_PROBLEMS])
            if len(problems) > SUMMARY_PROBLEMS:
                lines.append(
                    f"  ... and {len(problems) - SUMMARY_PROBLEMS} more (--json lists them all)"
                )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "problems": [problem.to_json() for problem in self.found],
            "metadata": self.metadata,
            "schema": self.schema,
            "integrity": {**self.integrity, "mb_per_s": round(self.integrity_mb_per_s, 1)},
            "semantics": self.semantics,
            "source": self.source,
        }
