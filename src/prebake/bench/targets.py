"""The targets `prebake bench` checks, each printed PASS or FAIL (and `prebake bench` exits 1
when one fails); every other figure it prints is a measurement, with no verdict. Imports nothing
heavy: `prebake bench --help` lists these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    key: str  # the measured value's name in the results
    label: str
    sense: str  # ">=" or "<="
    limit: float
    unit: str  # "x" (a ratio) or "MiB"

    def check(self, value: float) -> dict[str, Any]:
        """The verdict on `value`, as the results hold it (JSON)."""
        passed = value >= self.limit if self.sense == ">=" else value <= self.limit
        return {
            "target": self.label,
            "value": round(float(value), 3),
            "sense": self.sense,
            "limit": self.limit,
            "unit": self.unit,
            "passed": bool(passed),
        }


# The reader's (issue 2): ratios of items/s measured side by side on one random item order.
READER_TARGETS = (
    Target("all_vs_floor", "all fields / memmap floor", ">=", 0.8, "x"),
    Target("all_vs_zarr", "all fields / zarr-python", ">=", 5.0, "x"),
    Target("all_vs_on_the_fly", "all fields / on the fly", ">=", 30.0, "x"),  # with --src
    Target("loop1_vs_all", "Loop-1 fields / all fields", ">=", 2.0, "x"),
)

# The build's (--build-src): scaling and overhead as frames/s ratios, memory of 720p builds.
BUILD_TARGETS = (
    Target("scaling", "2 workers / 1 worker", ">=", 1.6, "x"),
    Target("overhead", "1 worker / bare compute", ">=", 0.7, "x"),
    Target("rss_mib", "peak RSS, 720p, 2 workers", "<=", 1536.0, "MiB"),  # summed over processes
    Target("length_growth", "peak RSS long / short", "<=", 1.15, "x"),  # videos 4x longer
)


# The loader's (issue 13): PrebakedLoader's items/s, all four fields, against
# DataLoader(PrebakedDataset, num_workers=2) and the floor with as many threads, side by side.
LOADER_TARGETS = (
    Target("all_vs_dataloader", "loader / 2-worker DataLoader", ">=", 4.0, "x"),
    Target("all_vs_floor", "loader / floor, same threads", ">=", 0.8, "x"),
)


def format_verdict(verdict: dict[str, Any]) -> str:
    return (
        f"  {'PASS' if verdict['passed'] else 'FAIL'}  {verdict['target']:28s} "
        f"{verdict['value']:8.2f} {verdict['unit']:3s} "
        f"(target {verdict['sense']} {verdict['limit']:g} {verdict['unit']})"
    )


def failed(results: dict[str, Any]) -> list[str]:
    """The targets missed in `results` (as `run_bench` returns them), by label."""
    return [
        verdict["target"]
        for part in results.values()
        for verdict in part.get("verdicts", [])
        if not verdict["passed"]
    ]


def targets_help() -> str:
    """The targets as paragraphs of `prebake bench --help`."""

    def listed(targets: tuple[Target, ...]) -> str:
        return "; ".join(f"{t.label} {t.sense} {t.limit:g} {t.unit}" for t in targets)

    return (
        f"reader (STORE): {listed(READER_TARGETS)}.\n\n"
        f"loader (STORE, all four fields): {listed(LOADER_TARGETS)}.\n\n"
        f"build (--build-src): {listed(BUILD_TARGETS)}."
    )
