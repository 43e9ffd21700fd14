"""`prebake bench`: speed and memory measured side by side in one run, reported as ratios.

Reader measurements live in `bench.reader`, the loader's (`PrebakedLoader` against a
DataLoader with workers and the floor) in `bench.loader`, build measurements (worker scaling,
bare compute, peak RSS) in `bench.build`, source measurements (discovery of a large tree, an
append against a rebuild) in `bench.sources`, the GPU check of issue 16 in `bench.gpu`, the CUDA
loader's in `bench.gpu_loader`; this module only composes and formats them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any


def run_bench(
    store: Path | None,
    *,
    src: Path | None = None,
    build_src: Path | None = None,
    items: int = 200,
    discovery_files: int | None = None,
    append: bool = False,
    schemas_src: Path | None = None,
    gpu: str | None = None,
    echo: Callable[[str], None] = lambda line: None,
    gpu_loader: bool = False,
) -> dict[str, Any]:
    """The reader and loader (on `store`), build, discovery, append, schema and GPU (on device
    `gpu`) measurements asked for; `echo` hears which part is being measured (the whole run
    takes from 40 s to several minutes) and the GPU check's progress. `gpu_loader`: only the
    CUDA loader's check on `store`."""
    results: dict[str, Any] = {}
    if store is not None and gpu_loader:  # on its own: a short check for a CUDA machine
        from prebake.bench.gpu_loader import bench_gpu_loader

        results["gpu_loader"] = bench_gpu_loader(store)
        return results
    if store is not None:
        from prebake.bench.reader import bench_reader

        echo(f"bench: the reader on {store} (about 20 s)")
        results["reader"] = bench_reader(store, src=src, items=items)
        from prebake.bench.loader import bench_loader

        echo(f"bench: the loader on {store} (about 30 s, more on a large store)")
        results["loader"] = bench_loader(store, items=items)
    if build_src is not None:
        from prebake.bench.build import bench_build

        echo(f"bench: builds of {build_src} (several minutes)")
        results["build"] = bench_build(build_src)
    if discovery_files is not None:
        from prebake.bench.sources import bench_discovery

        echo(f"bench: discovery of a tree of {discovery_files} files")
        results["discovery"] = bench_discovery(discovery_files)
    if append:
        from prebake.bench.sources import bench_append

        echo("bench: an append against a rebuild")
        results["append"] = bench_append()
    if schemas_src is not None:
        from prebake.bench.schemas import bench_schemas

        echo(f"bench: schema v1 and v2 stores of {schemas_src}")
        results["schemas"] = bench_schemas(schemas_src, items=items)
    if gpu is not None:
        from prebake.bench.gpu import bench_gpu

        results["gpu"] = bench_gpu(device=gpu, echo=echo)
    return results


# Each part of `run_bench`'s results, in print order: its key, the module (in prebake.bench)
# and the function that formats it, imported only when the part is present.
_FORMATTERS = (
    ("reader", "reader", "format_reader"),
    ("gpu_loader", "gpu_loader", "format_gpu_loader"),
    ("loader", "loader", "format_loader"),
    ("build", "build", "format_build"),
    ("discovery", "sources", "format_discovery"),
    ("append", "sources", "format_append"),
    ("schemas", "schemas", "format_schemas"),
    ("gpu", "gpu", "format_gpu"),
)


def format_bench(results: dict[str, Any]) -> str:
    """`run_bench`'s results as the lines `prebake bench` prints."""
    lines: list[str] = []
    for key, module, formatter in _FORMATTERS:
        if key in results:
            format_part = getattr(import_module(f"prebake.bench.{module}"), formatter)
            lines += format_part(results[key])
    return "\n".join(lines)
