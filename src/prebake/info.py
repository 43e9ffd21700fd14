"""`prebake info`: what a store holds, how it was built, and what it costs on disk.

Reads only metadata and shard indexes (never a chunk), so it is instant on any local store; a
remote store costs one ranged read per shard file. An incomplete store is described too (state
"building"), since that is when people ask.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from prebake import decoding
from prebake.errors import StoreError, counted
from prebake.storage import RemotePath, StorageOptions, list_names, missing, tree_bytes
from prebake.store.layout import BUILD_DIR, StoreDir
from prebake.store.metadata import metadata_problems, zarr_json_schema_path
from prebake.store.schema import (
    DATA_ARRAYS,
    ITEM_ARRAYS,
    SCHEMA_VERSIONS,
    array_specs,
    fields_of,
    store_version,
)
from prebake.store.shard import NO_CHUNK, read_index
from prebake.transforms import DEFAULT_PILLOW_RULE


def _folder_bytes(folder: Path | RemotePath) -> tuple[int, int]:
    """(bytes, files) under `folder`."""
    return tree_bytes(folder, BUILD_DIR)


def _array_info(store: StoreDir, name: str, params: dict[str, Any], version: int) -> dict[str, Any]:
    spec = array_specs(version)[name]
    try:
        metadata = json.loads((store.path / name / "zarr.json").read_text())
    except (OSError, ValueError):
        metadata = None  # the metadata line of `format_info` says so, `prebake verify` names it
    metadata = _as(metadata, dict)
    key = spec.rows_per_shard
    assert key is not None
    per = params.get(key)
    per = per if isinstance(per, int) and not isinstance(per, bool) and per > 0 else None
    disk, files = _folder_bytes(store.path / name)
    rows = 0  # chunks written, counted from the shard indexes (no chunk is read)
    folder = store.path / name / "c"
    if per is not None and folder.is_dir():
        for entry in list_names(folder):
            path = store.shard_path(spec, int(entry)) if entry.isdigit() else None
            if path is not None and path.is_file():
                with contextlib.suppress(ValueError):  # a damaged shard: `prebake verify` names it
                    rows += int((read_index(path, per)[:, 0] != NO_CHUNK).sum())
    raw = rows * spec.row_nbytes
    sharding = _as(_as(metadata.get("codecs"), list)[:1] or [{}], list)[0]
    codecs = _as(_as(_as(sharding, dict).get("configuration"), dict).get("codecs"), list)
    return {
        "shape": metadata.get("shape"),
        "dtype": metadata.get("data_type"),
        "chunks": [1, *spec.row_shape],
        "shards": [per, *spec.row_shape],
        "codecs": [str(_as(codec, dict).get("name")) for codec in codecs],
        "rows_written": rows,
        "shard_files": max(files - 1, 0),  # less zarr.json
        "bytes_on_disk": disk,
        "bytes_raw": raw,
        "compression_ratio": round(raw / disk, 2) if disk else None,
    }


def _as(value: Any, kind: type) -> Any:
    """`value` when it is a `kind` (dict or list), else an empty one: a damaged store is
    described as far as it goes (its metadata line says the rest)."""
    return value if isinstance(value, kind) else kind()


def store_info(
    path: str | Path, storage_options: StorageOptions | None = None, *, videos: bool = False
) -> dict[str, Any]:
    """Counts, failures, per-array layout and sizes, build parameters, versions and timing;
    with `videos`, also "videos": every video of the videos table (see `video_list`).

    `path` may be an fsspec URL; `storage_options` go to fsspec. Raises StoreError (one line
    naming the store) for a missing, foreign, unreadable or newer store. A store whose metadata
    does not match its schema is described as far as it can be; `metadata_problems` counts the
    problems (`prebake verify` lists them), None while the store is being built (the schema
    describes finished stores)."""
    store = StoreDir(path, storage_options)
    if not store.path.exists():
        raise StoreError(f"{store.path}: {missing(store.path, 'store')}")
    attrs = store.attrs()
    if attrs is None:
        store.require_complete()  # raises: not a store, or one whose build is still planning
        raise store.not_a_store()
    params = _as(attrs.get("params"), dict)
    version = store_version(attrs)
    if version not in SCHEMA_VERSIONS:
        raise StoreError(
            f"{store.path}: store has schema version {attrs.get('schema_version')!r}; this "
            f"prebake reads versions {', '.join(map(str, SCHEMA_VERSIONS))}"
        )
    problems = None if attrs.get("state") == "building" else metadata_problems(store.path)
    fields = _stored_fields(params)
    arrays = {name: _array_info(store, name, params, version) for name in fields}
    if version >= 2 and "pixel_values" in arrays:
        arrays["pixel_values"]["served"] = "float32 (ImageNet-normalized through a 3 x 256 table)"
    total, _ = _folder_bytes(store.path)
    tables = total - sum(entry["bytes_on_disk"] for entry in arrays.values())
    details = {
        "store": str(store.path),
        "schema": f"{attrs.get('schema')} v{attrs.get('schema_version')}",
        "schema_version": version,
        "metadata_schema": zarr_json_schema_path(version).name,
        "metadata_problems": None if problems is None else len(problems),
        "fields": list(fields),
        "lacks": [name for name in DATA_ARRAYS if name not in fields],
        "state": attrs.get("state"),
        "counts": _as(attrs.get("counts"), dict),
        "failures": [_as(failure, dict) for failure in _as(attrs.get("failures"), list)],
        "capacity": {"frame_rows": attrs.get("frame_rows"), "item_rows": attrs.get("item_rows")},
        "arrays": arrays,
        "bytes_on_disk": total,
        "bytes_tables_and_metadata": tables,
        "params": params,
        "versions": _as(attrs.get("versions"), dict),
        "source": _as(attrs.get("source"), dict),
        "build": _as(attrs.get("build"), dict),
        "appends": [_as(entry, dict) for entry in _as(attrs.get("appends"), list)],
        "progress": _progress(store) if attrs.get("state") != "complete" else None,
    }
    if videos:
        details["videos"] = video_list(store, attrs, version)
    return details


def video_list(store: StoreDir, attrs: dict[str, Any], version: int) -> list[dict[str, Any]] | None:
    """Every video of the store's videos table, in row order: {video_id, frames (annotated
    frames baked), items, status ("ok" or "failed"), and reason (failed ones: the one-line
    reason the build recorded)}. None while the store is incomplete (the table is written when
    the build commits)."""
    import zarr

    from prebake.storage import zarr_store
    from prebake.store.columns import read_column

    if attrs.get("state") != "complete":
        return None
    specs = array_specs(version)
    try:
        root = zarr.open_group(zarr_store(store.path), mode="r", zarr_format=3)
        columns = {
            name: read_column(root, specs[f"videos/{name}"]).tolist()
            for name in ("video_id", "frames", "items", "status")
        }
    except Exception as error:  # zarr raises many types for a damaged table
        raise StoreError(
            f"{store.path}: cannot read the videos table ({type(error).__name__}); "
            "run prebake verify"
        ) from None
    failures = [_as(failure, dict) for failure in _as(attrs.get("failures"), list)]
    reasons = {failure.get("video_id"): failure.get("reason") for failure in failures}
    listed = []
    for video_id, frames, items, status in zip(*columns.values(), strict=True):
        entry = {"video_id": video_id, "frames": frames, "items": items, "status": status}
        if status != "ok":
            entry["reason"] = reasons.get(video_id, "(no reason recorded)")
        listed.append(entry)
    return listed


def _progress(store: StoreDir) -> dict[str, Any]:
    """How far the build of an incomplete store got: videos planned, and committed (a record
    each), and the build running now ({host, pid, since}; None: it stopped, rerun it)."""
    from prebake.store.lock import live_build

    plan = store.read_plan() or {}
    committed = 0
    if store.units_dir.is_dir():
        committed = sum(name.endswith(".json") for name in list_names(store.units_dir))
    return {
        "videos_planned": len(plan.get("units", [])),
        "videos_committed": committed,
        "running": live_build(store.lock_path),
    }


def _stored_fields(params: dict[str, Any]) -> tuple[str, ...]:
    """The fields the store says it holds; those of the arrays it has when it says nothing
    readable (v2 params.fields damaged)."""
    fields = params.get("fields")
    if fields is not None and not (
        isinstance(fields, list) and all(isinstance(f, str) for f in fields)
    ):
        return ()
    return fields_of(params)


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{int(count)} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def format_info(info: dict[str, Any]) -> str:
    """The `store_info` dictionary as text for a terminal."""
    counts = info["counts"]
    lines = [f"{info['store']}  ({info['schema']}, {info['state']})"]
    if info["metadata_problems"]:
        count = info["metadata_problems"]
        lines.append(
            f"  metadata does not match the schema ({counted(count, 'problem')} against "
            f"{info['metadata_schema']}): run prebake verify to list them"
        )
    if counts:
        lines.append(
            f"  videos {counts.get('videos')} ({counts.get('videos_failed')} failed), "
            f"frames {counts.get('frames')}, items {counts.get('items')}"
        )
    else:
        lines.append("  counts: not yet known (the build has not finished)")
    progress = info.get("progress")
    if progress:
        running = progress["running"]
        lines.append(
            f"  build: {progress['videos_committed']} of {progress['videos_planned']} videos "
            "committed; "
            + (
                f"running now (host {running.get('host')}, pid {running.get('pid')})"
                if running
                else "no build is running (rerun the same prebake build to finish it)"
            )
        )
    capacity = info["capacity"]
    lines.append(
        f"  rows: {capacity['frame_rows']} frame rows, {capacity['item_rows']} item rows (shard-aligned per video)"
    )
    lines.append("arrays:")
    lines.append(
        f"  {'name':15s} {'shape':22s} {'dtype':8s} {'chunk':16s} {'shard':18s} {'on disk':>10s} {'ratio':>6s} {'per row':>10s}  codecs"
    )
    for name, entry in info["arrays"].items():
        ratio = f"{entry['compression_ratio']:.2f}" if entry["compression_ratio"] else "-"
        per_row = (
            _size(entry["bytes_on_disk"] / entry["rows_written"]) if entry["rows_written"] else "-"
        )
        lines.append(
            f"  {name:15s} {_shape(entry['shape']):22s} {entry['dtype']!s:8s} {_shape(entry['chunks']):16s} "
            f"{_shape(entry['shards']):18s} {_size(entry['bytes_on_disk']):>10s} {ratio:>6s} {per_row:>10s}  "
            f"{'+'.join(entry['codecs'])} ({entry['shard_files']} files, {entry['rows_written']} {'items' if name in ITEM_ARRAYS else 'frames'})"
        )
    if "served" in info["arrays"].get("pixel_values", {}):
        lines.append(
            f"  pixel_values is stored as its uint8 levels, served {info['arrays']['pixel_values']['served']}"
        )
    if info["lacks"]:
        lines.append(
            f"  the store lacks {', '.join(info['lacks'])} (built with --fields {','.join(info['fields'])})"
        )
    lines.append(
        f"  tables and metadata {_size(info['bytes_tables_and_metadata'])}; store total {_size(info['bytes_on_disk'])}"
    )
    frames = counts.get("frames") if counts else None
    if isinstance(frames, int) and frames > 0:
        lines.append(f"  per frame: {_size(info['bytes_on_disk'] / frames)}")
    params = info["params"]
    lines.append("build parameters:")
    lines.append(
        f"  g {params.get('g_size')} {params.get('g_filter')}, pixel {params.get('pixel_size')} {params.get('pixel_filter')} "
        f"mean {params.get('mean')} std {params.get('std')}, masks {params.get('mask_size')} {params.get('mask_filter')}, "
        f"prompt {params.get('prompt_grid')}x{params.get('prompt_grid')} {params.get('prompt_sampling')}"
    )
    lines.append(
        f"  masklets {params.get('masklets')}, layout {params.get('layout')}, frame stride {params.get('frame_stride')}, "
        f"{params.get('frames_per_shard')} frames / {params.get('items_per_shard')} items per shard"
    )
    rule = params.get("pillow_rule", DEFAULT_PILLOW_RULE)
    if isinstance(rule, int):
        lines.append(
            f"  pillow rule {rule} (BICUBIC passes in the order Pillow {rule} "
            f"{'and later runs' if rule >= 13 else 'and earlier run'}: --match-pillow)"
        )
    else:
        lines.append(f"  pillow rule {rule!r} (not a Pillow version)")
    recorded = params.get("decoding")
    lines.append(
        f"  decoder {decoding.describe(recorded) if isinstance(recorded, dict) or recorded is None else repr(recorded)}"
    )
    source, build = info["source"], info["build"]
    lines.append(
        f"  source {source.get('root')} (first build: videos filter {build.get('videos_filter')}, "
        f"limit {build.get('limit')})"
    )
    versions = info["versions"]
    lines.append("versions: " + ", ".join(f"{key} {value}" for key, value in versions.items()))
    if build.get("finished"):
        lines.append(
            f"build: {build.get('started')} to {build.get('finished')}, {build.get('seconds')} s, {counted(build.get('workers') or 0, 'worker')}"
            + _resized_by(build)
        )
    else:
        lines.append(f"build: started {build.get('started')}, not finished")
    for grown in info["appends"]:
        lines.append(
            f"append: {grown.get('started')}, {grown.get('videos_added')} videos added, "
            f"{grown.get('videos_retried')} retried, {grown.get('seconds')} s "
            f"(videos filter {grown.get('videos_filter')}, limit {grown.get('limit')})"
            + _resized_by(grown)
        )
    if "videos" in info:
        lines.extend(_video_lines(info["videos"]))
    failures = info["failures"]
    if failures and "videos" not in info:  # the video list names them with their reasons
        lines.append(f"failures ({len(failures)}):")
        lines.extend(
            f"  {failure.get('video_id')}: {failure.get('reason')}" for failure in failures[:20]
        )
        if len(failures) > 20:
            lines.append(f"  ... and {len(failures) - 20} more (--json lists them all)")
    return "\n".join(lines)


def _video_lines(videos: list[dict[str, Any]] | None) -> list[str]:
    if videos is None:
        return ["videos: listed once the build has finished"]
    width = max([len("video"), *(len(entry["video_id"]) for entry in videos)])
    lines = [
        f"videos ({len(videos)}):",
        f"  {'video':{width}s} {'annotated frames':>16s} {'items':>8s}  status",
    ]
    for entry in videos:
        status = entry["status"] + (f": {entry['reason']}" if "reason" in entry else "")
        lines.append(
            f"  {entry['video_id']:{width}s} {entry['frames']:>16d} {entry['items']:>8d}  {status}"
        )
    return lines


def _shape(values: object) -> str:
    return "x".join(str(v) for v in values) if isinstance(values, list) and values else "?"


def _resized_by(run: dict[str, Any]) -> str:
    """What resized a run's images (recorded since --resize exists; the bytes are the same)."""
    resize = run.get("resize")
    return f"; images resized by {', '.join(map(str, resize))}" if isinstance(resize, list) else ""
