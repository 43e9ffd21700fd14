"""`prebake bench`: speed and memory measured side by side in one run, reported as ratios.

Reader measurements live in `bench.reader`, build measurements (worker scaling, bare compute,
peak RSS) in `bench.build`; this module only composes and formats them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_bench(
    store: Path, *, src: Path | None = None, build_src: Path | None = None, items: int = 200
) -> dict[str, Any]:
    from prebake.bench.reader import bench_reader

    results: dict[str, Any] = {"reader": bench_reader(store, src=src, items=items)}
    if build_src is not None:
        from prebake.bench.build import bench_build

        results["build"] = bench_build(build_src)
    return results


def format_bench(results: dict[str, Any]) -> str:
    from prebake.bench.reader import format_reader

    lines = format_reader(results["reader"])
    if "build" in results:
        from prebake.bench.build import format_build

        lines += format_build(results["build"])
    return "\n".join(lines)
