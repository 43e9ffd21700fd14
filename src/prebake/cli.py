"""The `prebake` command: a thin typer shell over functions usable from Python.

Exit codes: 0 done, 1 done but problems found (videos that failed to bake, source links that
cannot be followed, baked videos whose source changed or vanished, a store that fails
verification, a benchmark target missed), 2 could not run (bad arguments, no store, store locked
or built otherwise, an object store that cannot be reached or used), 130 interrupted. Errors are
one line on stderr, never a traceback; `--json` results are one document on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from prebake.bench.targets import targets_help
from prebake.build.options import (
    DEFAULT_FRAMES_PER_SHARD,
    DEFAULT_ITEMS_PER_SHARD,
    DEFAULT_LAYOUT,
    DEFAULT_MASKLETS,
    LAYOUT_CHOICES,
    MASKLET_CHOICES,
)
from prebake.errors import PrebakeError, counted
from prebake.transforms import DEFAULT_PILLOW_RULE, PILLOW_RULES
from prebake.verify.checks import checks_help

if TYPE_CHECKING:
    from prebake.build import BuildReport

app = typer.Typer(
    help="Bake SA-V frames and masklets once into sharded Zarr v3 stores for Sa2VA-style training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Store = Annotated[Path, typer.Argument(help="Path of the prebake store (a Zarr v3 folder).")]
StoreUrl = Annotated[
    str,
    typer.Argument(help="The prebake store: a Zarr v3 folder, or an fsspec URL (s3://bucket/x)."),
]
StorageOptionsJson = Annotated[
    str | None,
    typer.Option(
        "--storage-options",
        help='JSON object passed to fsspec for URLs, e.g. \'{"client_kwargs": {"endpoint_url": "http://host:9000"}}\'.',
    ),
]


def _version(show: bool) -> None:
    if show:
        from prebake import __version__

        typer.echo(f"prebake {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Bake SA-V frames and masklets once into sharded Zarr v3 stores for Sa2VA-style training."""


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"prebake: {message}", err=True)
    raise typer.Exit(code)


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    return f"{count:.1f} TB"


def _storage_options(text: str | None) -> dict[str, object]:
    from prebake.storage import parse_storage_options

    try:
        return parse_storage_options(text)
    except PrebakeError as error:
        _fail(str(error))


@app.command()
def build(
    src: Annotated[
        str,
        typer.Option(
            "--src",
            help="SA-V source: a folder or an fsspec URL (searched recursively, links to folders followed; any mix of layouts).",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="Store to create, resume if it is incomplete, or add the source's new videos to if it is complete: a folder or an fsspec URL.",
        ),
    ],
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes (default: the machine's cores; never more than the videos to bake).",
            min=1,
        ),
    ] = None,
    masklets: Annotated[
        str, typer.Option(help="Masklets to bake: manual (as SAM 2 trains), auto or all.")
    ] = DEFAULT_MASKLETS,
    layout: Annotated[
        str, typer.Option(help="Source layout: auto (detect), train, frames or png.")
    ] = DEFAULT_LAYOUT,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Bake only the first N videos (by id); a larger N later adds the next ones.",
            min=1,
        ),
    ] = None,
    videos: Annotated[
        Path | None,
        typer.Option(
            help="File listing the video ids to bake (or to add), one per line; blank lines and # comments are skipped."
        ),
    ] = None,
    frames_per_shard: Annotated[
        int, typer.Option(help="Frames per shard file of the image arrays.", min=1)
    ] = DEFAULT_FRAMES_PER_SHARD,
    items_per_shard: Annotated[
        int, typer.Option(help="Items per shard file of the mask arrays.", min=1)
    ] = DEFAULT_ITEMS_PER_SHARD,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start the store over, discarding what it holds.")
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option("--retry-failed", help="Bake the videos the store records as failed again."),
    ] = False,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            help="Run the videos as Dask tasks: a scheduler address (tcp://host:8786), or local:N for a cluster of N processes on this machine.",
        ),
    ] = None,
    fields: Annotated[
        str | None,
        typer.Option(
            "--fields",
            help="Training arrays to store, comma-separated (default: all four): pixel_values, "
            "g_pixel_values, prompt_masks, masks; e.g. pixel_values,prompt_masks for Loop 1. "
            "The tables always list every item.",
        ),
    ] = None,
    match_pillow: Annotated[
        int,
        typer.Option(
            "--match-pillow",
            help='Resize as this Pillow does, the one your trainer runs (python -c "import PIL; '
            'print(PIL.__version__)"): 13 for Pillow 13 or later, 12 for 12 and earlier. The '
            "two run the BICUBIC passes in another order for portrait frames.",
        ),
    ] = DEFAULT_PILLOW_RULE,
    resize: Annotated[
        str,
        typer.Option(
            "--resize",
            help="What runs the two BICUBIC image resizes: pillow (on the workers' CPU cores) or "
            "torch (Pillow's arithmetic redone in torch, on --device, in batches of a video's "
            "frames). The store's bytes are the same either way.",
        ),
    ] = "pillow",
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="Where --resize torch runs: cpu, cuda or cuda:N (each worker process uses it).",
        ),
    ] = "cpu",
    storage_options: StorageOptionsJson = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the report as one JSON document on stdout (counts, videos added, failed videos with reasons, bytes, seconds); progress stays on stderr.",
        ),
    ] = False,
) -> None:
    """Bake every annotated frame and (frame, masklet) item under --src into the store --out."""
    from prebake.build import BuildInterrupted, BuildOptions
    from prebake.build import build as run_build
    from prebake.build.options import default_workers, read_video_ids

    if dask is not None and workers is not None:
        _fail("--workers and --dask exclude each other (size a local cluster with --dask local:N)")
    options_of_fsspec = _storage_options(storage_options)
    if masklets not in MASKLET_CHOICES:
        _fail(f"--masklets must be {_choices(MASKLET_CHOICES)}, not {masklets!r}")
    if layout not in LAYOUT_CHOICES:
        _fail(f"--layout must be {_choices(LAYOUT_CHOICES)}, not {layout!r}")
    if match_pillow not in PILLOW_RULES:
        _fail(f"--match-pillow must be {_choices(PILLOW_RULES)}, not {match_pillow!r}")
    field_names = None
    if fields is not None:
        field_names = [name.strip() for name in fields.split(",") if name.strip()]
    video_ids = None
    if videos is not None:
        try:
            video_ids = read_video_ids(videos)
        except PrebakeError as error:
            _fail(str(error))
    options = BuildOptions(
        src=src,
        out=out,
        workers=workers or default_workers(),
        masklets=masklets,
        layout=layout,
        limit=limit,
        video_ids=video_ids,
        frames_per_shard=frames_per_shard,
        items_per_shard=items_per_shard,
        overwrite=overwrite,
        retry_failed=retry_failed,
        progress=not quiet,
        storage_options=options_of_fsspec,
        dask=dask,
        pillow_rule=match_pillow,
        fields=field_names,
        resize=resize,
        device=device,
    )
    try:
        report = run_build(options)
    except BuildInterrupted as error:
        _fail(str(error), 130)
    except PrebakeError as error:
        _fail(str(error))
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        raise typer.Exit(1 if report.problems else 0)
    _print_build(report, out)


def _choices(values: tuple[object, ...]) -> str:
    return ", ".join(map(str, values[:-1])) + f" or {values[-1]}"


def _print_build(report: BuildReport, out: str) -> None:
    """The summary on stdout; what went wrong on stderr, one line each (then exit 1)."""
    for note in report.source_notes:
        typer.echo(f"note: {note}", err=True)
    per_frame = report.bytes / report.frames if report.frames else 0
    held = (
        f"{report.videos} videos, {report.frames} frames, {report.items} items, "
        f"{_human_bytes(report.bytes)} ({_human_bytes(per_frame)} per frame)"
    )
    speed = f"in {report.seconds:.1f} s, {report.frames_per_second:.1f} frames/s"
    if report.built and report.resumed:  # this run's work only; the store's totals after
        typer.echo(
            f"resumed {out}: baked {counted(report.videos_baked, 'more video')}, "
            f"{counted(report.frames_baked, 'frame')} {speed} "
            f"({counted(report.resumed, 'video')} {'was' if report.resumed == 1 else 'were'} "
            f"already baked); the store holds {held}"
        )
    elif report.built:
        typer.echo(
            f"baked {report.videos - report.videos_failed}/{report.videos} videos, {report.frames} frames, "
            f"{report.items} items into {out}: {_human_bytes(report.bytes)} ({_human_bytes(per_frame)} per frame) "
            f"{speed}"
        )
    if report.added or report.retried:
        retried = (
            f", {report.retried} failed videos retried ({report.retried_ok} baked now)"
            if report.retried
            else ""
        )
        typer.echo(
            f"{report.added} videos added to {out}{retried} in {report.seconds:.1f} s, "
            f"{report.frames_baked} frames baked; the store holds {held}"
        )
    if report.already_complete:
        typer.echo(f"{out}: already complete ({held}); nothing to add")
    for problem in report.source_problems:
        typer.echo(f"prebake: {problem}", err=True)
    for change in report.source_changes:
        typer.echo(f"prebake: {change}", err=True)
    if report.failures:
        typer.echo(f"{len(report.failures)} videos failed and were skipped:", err=True)
        for failure in report.failures:
            typer.echo(f"  {failure['video_id']}: {failure['reason']}", err=True)
        typer.echo("(once they are fixed, --retry-failed bakes them again)", err=True)
    if report.problems:
        raise typer.Exit(1)


VERIFY_HELP = (
    "Check a store: metadata (JSON Schema), schema, checksums, value semantics and (with --src) "
    "bit-exactness.\n\n"
    "The checks, in the order they run (each problem names the array, row or file):\n\n"
    + checks_help()
)


@app.command(help=VERIFY_HELP)
def verify(
    store: StoreUrl,
    src: Annotated[
        str | None,
        typer.Option(
            "--src",
            help="Source (folder or URL) to re-derive sampled items from, bit for bit: mp4 frames "
            "decoded by OpenCV (the trainers' decoder), resized by the store's Pillow rule.",
        ),
    ] = None,
    samples: Annotated[
        str, typer.Option(help="Items to re-derive with --src: a number, or 'all'.")
    ] = "16",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    storage_options: StorageOptionsJson = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    from prebake.verify import verify_store

    if samples != "all" and not samples.isdigit():
        _fail(f"--samples must be a number or 'all', not {samples!r}")
    options_of_fsspec = _storage_options(storage_options)
    try:
        report = verify_store(
            store,
            src=src,
            samples=None if samples == "all" else int(samples),
            progress=not (quiet or as_json),
            storage_options=options_of_fsspec,
        )
    except PrebakeError as error:
        _fail(str(error))
    except KeyboardInterrupt:  # here: click would print an empty line and "Aborted!"
        _fail(f"{store}: verify interrupted; the store was not changed", 130)
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else report.summary())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def info(
    store: StoreUrl,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    videos: Annotated[
        bool,
        typer.Option(
            "--videos",
            help="Also list every video: its id, annotated frames, items and status (a failed "
            'one with its reason); in --json as "videos".',
        ),
    ] = False,
    storage_options: StorageOptionsJson = None,
) -> None:
    """Describe a store: counts, failures, arrays, sizes, build parameters and versions."""
    from prebake.info import format_info, store_info

    options_of_fsspec = _storage_options(storage_options)
    try:
        details = store_info(store, options_of_fsspec, videos=videos)
    except PrebakeError as error:
        _fail(str(error))
    typer.echo(json.dumps(details, indent=2) if as_json else format_info(details))


@app.command()
def show(
    store: Store,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Image to write; its extension picks the format: .png, .jpg/.jpeg or .webp.",
        ),
    ] = Path("preview.png"),
    item: Annotated[
        int | None, typer.Option("--item", help="Item to draw (its index in the store).", min=0)
    ] = None,
    grid: Annotated[
        int | None,
        typer.Option(
            "--grid",
            help="Contact sheet of N random items (of those picked), half size; at most what "
            "fits a readable image (156 items).",
            min=1,
        ),
    ] = None,
    video: Annotated[
        str | None, typer.Option("--video", help="Pick the items of this video id.")
    ] = None,
    frame: Annotated[
        int | None,
        typer.Option("--frame", help="Pick the items at this frame (its 24 fps index).", min=0),
    ] = None,
    masklet: Annotated[
        int | None, typer.Option("--masklet", help="Pick the items of this masklet id.", min=0)
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed for --grid.")] = 0,
) -> None:
    """Draw items: the 1024 image with its mask, the 448 image and the 16 x 16 prompt grid.

    One item (the first picked, or --item) or a contact sheet (--grid); --video, --frame and
    --masklet pick items and combine. A non-square frame's 1024 panel is stretched, as SAM 2
    sees it: the caption says so, with the original size."""
    from prebake.show import render_preview

    if item is not None and grid is not None:
        _fail("give --item or --grid, not both")
    try:
        path = render_preview(
            store,
            out,
            item=item,
            grid=grid,
            seed=seed,
            video=video,
            frame=frame,
            masklet=masklet,
        )
    except PrebakeError as error:
        _fail(str(error))
    typer.echo(f"wrote {path}")


BENCH_HELP = (
    "Measure reader speed against the memmap floor, zarr-python and on-the-fly (ratios, one "
    "run); build scaling, discovery and appends on request.\n\n"
    "Each of these targets is printed PASS or FAIL, and a FAIL exits 1; every other figure is "
    "a measurement:\n\n" + targets_help()
)


@app.command(help=BENCH_HELP)
def bench(
    store: Annotated[
        Path | None, typer.Argument(help="Store to measure the reader on (optional).")
    ] = None,
    src: Annotated[
        Path | None, typer.Option("--src", help="Also time the on-the-fly pipeline on this source.")
    ] = None,
    build_src: Annotated[
        Path | None,
        typer.Option("--build-src", help="Also measure build scaling and memory on this source."),
    ] = None,
    items: Annotated[int, typer.Option(help="Items per reader measurement.", min=1)] = 200,
    discovery: Annotated[
        int | None,
        typer.Option(
            "--discovery",
            help="Also time finding the videos of a generated tree of N empty SA-V-named files.",
            min=1,
        ),
    ] = None,
    append: Annotated[
        bool,
        typer.Option("--append", help="Also time adding a video to a store against a rebuild."),
    ] = False,
    schemas: Annotated[
        Path | None,
        typer.Option(
            "--schemas",
            help="Also build a schema v1 and a v2 store of this source and compare their sizes "
            "and reader speed side by side.",
        ),
    ] = None,
    gpu: Annotated[
        bool,
        typer.Option(
            "--gpu",
            help="Also run the GPU check (scripts/gpu_check.sh): resize ms per frame on the GPU "
            "against Pillow on one core, whole builds with every core (--resize torch --device "
            "cuda against Pillow), the two stores compared byte for byte. Exit 1 if any byte "
            "differs.",
        ),
    ] = False,
    gpu_device: Annotated[
        str, typer.Option("--gpu-device", help="The CUDA device of --gpu: cuda or cuda:N.")
    ] = "cuda",
    gpu_loader: Annotated[
        bool,
        typer.Option(
            "--gpu-loader",
            help="Only measure PrebakedLoader(device='cuda') on STORE against DataLoader("
            "num_workers=8, pin_memory=True) and check its batches equal the CPU path's on the "
            "device (needs CUDA; scripts/gpu_loader_check.sh).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Measure reader speed against the memmap floor, zarr-python and on-the-fly, and
    PrebakedLoader against DataLoader(num_workers=2) and the floor (ratios, one run); build
    scaling, discovery, appends, store schemas and the GPU checks on request."""
    from prebake.bench import format_bench, run_bench
    from prebake.bench.targets import failed

    asked = (store, build_src, discovery, schemas)
    if all(value is None for value in asked) and not append and not gpu:
        _fail("give a store (reader), --build-src, --discovery N, --append, --schemas SRC or --gpu")
    if gpu and not gpu_device.startswith("cuda"):
        _fail(f"--gpu-device must be cuda or cuda:N, not {gpu_device!r}")
    if store is None and src is not None:
        _fail("--src times the reader's on-the-fly comparison: give a store too")
    if gpu_loader and store is None:
        _fail("--gpu-loader measures the loader on a store: give one")
    try:
        results = run_bench(
            store,
            src=src,
            build_src=build_src,
            items=items,
            discovery_files=discovery,
            append=append,
            schemas_src=schemas,
            gpu=gpu_device if gpu else None,
            echo=lambda line: typer.echo(line, err=True),
            gpu_loader=gpu_loader,
        )
    except PrebakeError as error:
        _fail(str(error))
    typer.echo(json.dumps(results, indent=2) if as_json else format_bench(results))
    missed = failed(results)
    if "gpu" in results:
        from prebake.bench.gpu import passed

        if not passed(results["gpu"]):
            missed.append("GPU check: the torch store differs from the Pillow store")
    if missed:
        typer.echo(
            f"prebake: {counted(len(missed), 'target')} missed: {'; '.join(missed)}", err=True
        )
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the sample and its store.")] = Path(
        "demo-out"
    ),
) -> None:
    """Make the built-in SA-V sample, build it, verify it and read a batch back."""
    from prebake.demo import run_demo

    try:
        code = run_demo(out, echo=typer.echo)
    except PrebakeError as error:
        _fail(str(error))
    raise typer.Exit(code)


def main() -> None:
    from prebake.storage import storage_problem

    try:
        app()
    except KeyboardInterrupt:
        typer.echo("prebake: interrupted", err=True)
        sys.exit(130)
    except Exception as error:  # the last resort for an object store that cannot be used
        reason = storage_problem(error)
        if reason is None:
            raise
        typer.echo(f"prebake: {reason}", err=True)
        sys.exit(2)
