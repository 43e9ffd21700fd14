"""Schema checks: the root attributes, every array's `zarr.json` against the schema document,
and the row tables against each other."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import zarr

from prebake import transforms
from prebake.decoding import CONVERSIONS, LEGACY_DECODING
from prebake.storage import zarr_store
from prebake.store.columns import TEXT_ATTRIBUTES, read_column
from prebake.store.schema import (
    CODES,
    DATA_ARRAYS,
    SCHEMA_VERSIONS,
    ArraySpec,
    schema_document,
    store_version,
    text_part_spec,
)
from prebake.verify.context import VerifyContext

# Row counts past this are damage (SA-V has 35 M items): the tables check allocates per row.
MAX_ROWS = 2**40

# Added to v1 by issue 10 (appends, source fingerprints): a v1 store made before may lack them.
V1_OPTIONAL = ("appends", "videos/fingerprint")


def _optional(context: VerifyContext, name: str) -> bool:
    return context.version == 1 and name in V1_OPTIONAL


def check_attributes(context: VerifyContext) -> bool:
    """Root attributes; sets the schema version, the build params and the fields the store
    holds (False when the store cannot be read further)."""
    attrs = context.attrs
    version = store_version(attrs)
    if version not in SCHEMA_VERSIONS:
        context.problem(
            f"zarr.json: schema_version is {attrs.get('schema_version')!r}, this prebake reads "
            f"{', '.join(map(str, SCHEMA_VERSIONS))}"
        )
        return False
    context.version = version
    required = schema_document(version)["attributes"]["required"]
    missing = [
        key for key in required if key not in attrs and not (version == 1 and key in V1_OPTIONAL)
    ]
    if missing:
        context.problem(f"zarr.json: root attributes lack {', '.join(missing)}")
    params = attrs.get("params")
    if not isinstance(params, dict):
        context.problem("zarr.json: root attribute params is missing; cannot locate shards")
        return False
    if version >= 2 and not _fields_ok(context, params):
        return False
    context.set_store(version, params)
    for key, reference in transforms.PARAMS.items():
        if params.get(key) != reference:
            context.problem(
                f"zarr.json: params.{key} is {params.get(key)!r}, the reference preprocessing is {reference!r}"
            )
    for key in ("frames_per_shard", "items_per_shard", "frame_rows", "item_rows"):
        value = params.get(key) if key.endswith("shard") else attrs.get(key)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not (1 if key.endswith("shard") else 0) <= value <= MAX_ROWS
        ):
            context.problem(
                f"zarr.json: {key} is {value!r}, expected a whole number of rows (at most "
                f"2**{MAX_ROWS.bit_length() - 1}); cannot locate rows"
            )
            return False
    rule = params.get("pillow_rule", transforms.DEFAULT_PILLOW_RULE)
    if rule not in transforms.PILLOW_RULES:
        context.problem(
            f"zarr.json: params.pillow_rule is {rule!r}, expected one of {list(transforms.PILLOW_RULES)}"
        )
    decoding = params.get("decoding") or LEGACY_DECODING
    conversion = decoding.get("conversion") if isinstance(decoding, dict) else decoding
    if conversion not in CONVERSIONS:
        context.problem(
            f"zarr.json: params.decoding.conversion is {conversion!r}, expected one of {sorted(CONVERSIONS)}"
        )
    for key, names in CODES.items():  # v1 has masklet_types only
        if (version >= 2 or key == "masklet_types") and attrs.get(key) != list(names):
            context.problem(f"zarr.json: {key} is {attrs.get(key)!r}, expected {list(names)}")
    counts = attrs.get("counts")
    if not isinstance(counts, dict) or not all(
        isinstance(counts.get(k), int) for k in ("videos", "videos_failed", "frames", "items")
    ):
        context.problem(
            f"zarr.json: counts is {counts!r}, expected videos, videos_failed, frames and items"
        )
        return False
    context.report.schema.update(
        name=attrs.get("schema"),
        version=attrs.get("schema_version"),
        videos_failed=counts["videos_failed"],
    )
    return True


def _fields_ok(context: VerifyContext, params: dict[str, Any]) -> bool:
    """params.fields (v2): a non-empty list of training arrays, in store order."""
    fields = params.get("fields")
    if (
        not isinstance(fields, list)
        or not fields
        or fields != [name for name in DATA_ARRAYS if name in fields]
    ):
        context.problem(
            f"zarr.json: params.fields is {fields!r}, expected one or more of {list(DATA_ARRAYS)} "
            "in that order; cannot tell which arrays the store holds"
        )
        return False
    return True


_SHARD_INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


def expected_metadata(spec: ArraySpec, rows: int, rows_per_chunk: int) -> dict[str, Any]:
    """The zarr.json fields an array of the schema must have (`rows_per_chunk`: shard rows or table chunk)."""
    metadata: dict[str, Any] = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [rows, *spec.row_shape],
        "data_type": spec.dtype,
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [rows_per_chunk, *spec.row_shape]},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": spec.fill_value,
    }
    if spec.sharded:
        sharding = {
            "chunk_shape": [1, *spec.row_shape],
            "codecs": list(spec.codecs),
            "index_codecs": _SHARD_INDEX_CODECS,
            "index_location": "end",
        }
        metadata["codecs"] = [{"name": "sharding_indexed", "configuration": sharding}]
    else:
        metadata["codecs"] = list(spec.codecs)
    return metadata


def _table_rows(attrs: dict[str, Any], spec: ArraySpec) -> int:
    return (
        int(attrs[spec.rows])
        if spec.rows in ("frame_rows", "item_rows")
        else int(attrs["counts"][spec.rows])
    )


def check_metadata(context: VerifyContext) -> bool:
    """Every array's zarr.json against the schema document (shape, dtype, chunks, codecs); the
    data arrays of params.fields, and no other."""
    store, attrs, params = context.store, context.attrs, context.params
    chunk = schema_document(context.version)["table_rows_per_chunk"]
    arrays = tables = 0
    for name, spec in context.specs.items():
        rows = _table_rows(attrs, spec)
        if spec.sharded:
            if name not in context.fields:
                if (store.path / name / "zarr.json").exists():
                    context.problem(
                        f"{name}: the store holds this array, but params.fields "
                        f"{list(context.fields)} does not list it"
                    )
                continue
            assert spec.rows_per_shard is not None
            _compare(context, name, expected_metadata(spec, rows, int(params[spec.rows_per_shard])))
            arrays += 1
        elif spec.dtype == "utf8":
            _check_text_column(context, spec, rows, chunk)
            tables += 1
        elif _optional(context, name) and not (store.path / name / "zarr.json").exists():
            continue
        else:
            _compare(context, name, expected_metadata(spec, rows, max(1, min(rows, chunk))))
            tables += 1
    lacks = [name for name in DATA_ARRAYS if name not in context.fields]
    context.report.schema.update(
        arrays=arrays, tables=tables, fields=list(context.fields), lacks=lacks
    )
    return True


def _check_text_column(context: VerifyContext, spec: ArraySpec, rows: int, chunk: int) -> None:
    """A v2 text column: its group, `offsets` (rows + 1) and `utf8` (as long as it is: the
    tables check compares it with the offsets)."""
    group = {"zarr_format": 3, "node_type": "group", "attributes": TEXT_ATTRIBUTES}
    found = _compare(context, spec.name, group)
    if found is None:
        return
    offsets = text_part_spec(spec, "offsets")
    _compare(
        context, offsets.name, expected_metadata(offsets, rows + 1, max(1, min(rows + 1, chunk)))
    )
    utf8 = text_part_spec(spec, "utf8")
    metadata = _read_metadata(context, utf8.name)
    shape = metadata.get("shape") if metadata else None
    length = (
        shape[0] if isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) else 0
    )
    _compare(
        context, utf8.name, expected_metadata(utf8, length, max(1, min(length, chunk))), metadata
    )


def _read_metadata(context: VerifyContext, name: str) -> dict[str, Any] | None:
    """A node's zarr.json, or None (the problem filed)."""
    path = context.store.path / name / "zarr.json"
    try:
        with path.open() as handle:
            found = json.load(handle)
    except FileNotFoundError:
        context.problem(f"{name}: {name}/zarr.json is missing")
        return None
    except (OSError, ValueError) as error:
        context.problem(f"{name}: {name}/zarr.json is unreadable ({error})")
        return None
    if not isinstance(found, dict):
        context.problem(f"{name}: {name}/zarr.json is not a JSON object")
        return None
    return found


def _compare(
    context: VerifyContext,
    name: str,
    expected: dict[str, Any],
    found: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """File a problem for each key of `expected` the node's zarr.json disagrees with."""
    found = found if found is not None else _read_metadata(context, name)
    if found is None:
        return None
    for key, value in expected.items():
        if found.get(key) != value:
            context.problem(
                f"{name}: zarr.json {key} is {_short(found.get(key))}, the schema says {_short(value)}"
            )
    return found


def _short(value: object, limit: int = 160) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_tables(context: VerifyContext) -> dict[str, np.ndarray] | None:
    """The row tables through zarr-python (its crc32c codec checks their chunks)."""
    tables: dict[str, np.ndarray] = {}
    try:
        root = zarr.open_group(zarr_store(context.store.path), mode="r", zarr_format=3)
    except Exception as error:  # zarr raises many types for a broken root
        context.problem(
            f"zarr.json: zarr-python cannot open the store ({type(error).__name__}: {error})"
        )
        return None
    wanted = 0
    for name, spec in context.specs.items():
        if spec.sharded:
            continue
        if _optional(context, name) and not (context.store.path / name / "zarr.json").exists():
            continue
        wanted += 1
        try:
            tables[name] = read_column(root, spec)
        except Exception as error:  # zarr raises many types for a broken array or chunk
            context.problem(f"{name}: table unreadable ({type(error).__name__}: {error})")
    if len(tables) != wanted:
        context.problem("tables: rows cannot be checked without every table")
        return None
    return tables


def check_tables(context: VerifyContext) -> bool:
    """The row tables (through zarr-python, whose crc32c codec checks their chunks) against each
    other and the root attributes; False when rows cannot be trusted."""
    tables = _read_tables(context)
    if tables is None:
        return False
    context.tables = tables
    t, attrs = context.tables, context.attrs
    counts = attrs["counts"]
    before = context.problems()
    lengths = {
        "frame_rows": attrs["frame_rows"],
        "items": counts["items"],
        "videos": counts["videos"],
    }
    for name, values in t.items():
        spec = context.specs[name]
        if len(values) != lengths[spec.rows]:
            context.problem(
                f"{name}: {len(t[name])} rows, expected {lengths[spec.rows]} ({spec.rows})"
            )
    if context.problems() > before:
        return False
    fps, ips = context.rows_per_shard("pixel_values"), context.rows_per_shard("masks")
    status = t["videos/status"]
    failed = [context.video_ids[v] for v in range(len(status)) if status[v] != "ok"]
    failures = attrs.get("failures")  # a list of objects: else the zarr_json check named it
    recorded = (
        [f.get("video_id") for f in failures if isinstance(f, dict)]
        if isinstance(failures, list)
        else []
    )
    if sorted(failed) != sorted(map(str, recorded)):
        context.problem(
            f"videos/status: failed videos {failed[:5]} disagree with the failures attribute"
        )
    if len(failed) != counts["videos_failed"]:
        context.problem(
            f"videos/status: {len(failed)} failed videos, counts.videos_failed says {counts['videos_failed']}"
        )
    if any(value not in ("ok", "failed") for value in status):
        context.problem("videos/status: values other than 'ok' and 'failed'")
    frame_owner = np.full(attrs["frame_rows"], -1, dtype=np.int64)
    item_owner = np.full(attrs["item_rows"], -1, dtype=np.int64)
    items_of_video = (
        np.bincount(t["items/video"].clip(0), minlength=len(status))
        if len(t["items/video"])
        else np.zeros(len(status), int)
    )
    for v, video_id in enumerate(context.video_ids):
        frame_row, frames = int(t["videos/frame_row"][v]), int(t["videos/frames"][v])
        item_row, items = int(t["videos/item_row"][v]), int(t["videos/items"][v])
        if status[v] != "ok":
            if (frame_row, frames, item_row, items) != (-1, 0, -1, 0):
                context.problem(f"videos row {v} ({video_id}): failed video still owns rows")
            continue
        if frame_row < 0 or frame_row % fps or frame_row + frames > attrs["frame_rows"]:
            context.problem(
                f"videos/frame_row row {v} ({video_id}): {frame_row} is not a shard-aligned row range of {frames} within {attrs['frame_rows']}"
            )
            continue
        if item_row < 0 or item_row % ips or item_row + items > attrs["item_rows"]:
            context.problem(
                f"videos/item_row row {v} ({video_id}): {item_row} is not a shard-aligned row range of {items} within {attrs['item_rows']}"
            )
            continue
        for owner, first, count, table in (
            (frame_owner, frame_row, frames, "frame"),
            (item_owner, item_row, items, "item"),
        ):
            if (owner[first : first + count] >= 0).any():
                context.problem(
                    f"videos row {v} ({video_id}): its {table} rows overlap another video's"
                )
            owner[first : first + count] = v
        if items != items_of_video[v]:
            context.problem(
                f"videos/items row {v} ({video_id}): {items}, but items/video lists {items_of_video[v]}"
            )
        indices = t["frames/frame_index"][frame_row : frame_row + frames]
        if frames and (
            (np.diff(indices) <= 0).any()
            or indices[0] < 0
            or indices[-1] >= t["videos/frame_count"][v]
        ):
            context.problem(
                f"frames/frame_index rows {frame_row}..{frame_row + frames - 1} ({video_id}): not increasing frame indices of the video"
            )
    if not np.array_equal(t["frames/video"], frame_owner):
        rows = np.flatnonzero(t["frames/video"] != frame_owner)
        context.problem(
            f"frames/video: {len(rows)} rows disagree with the videos table, first row {rows[0]}"
        )
    if int((frame_owner >= 0).sum()) != counts["frames"]:
        context.problem(
            f"frames/video: {int((frame_owner >= 0).sum())} frame rows used, counts.frames says {counts['frames']}"
        )
    if context.problems() > before:
        return False
    _check_item_table(context, item_owner)
    return context.problems() == before


def _check_item_table(context: VerifyContext, item_owner: np.ndarray) -> None:
    t = context.tables
    if not len(t["items/video"]):
        return
    video, mask_row, frame_row = t["items/video"], t["items/mask_row"], t["items/frame_row"]
    checks = []
    bad_video = (video < 0) | (video >= len(context.video_ids))
    checks.append(("items/video", bad_video, "not a row of the videos table"))
    inside = (mask_row >= 0) & (mask_row < len(item_owner))
    owner = np.where(inside, item_owner[mask_row.clip(0, len(item_owner) - 1)], -2)
    checks.append(("items/mask_row", owner != video, "outside the item rows of the item's video"))
    checks.append(("items/mask_row", _duplicates(mask_row), "used by another item too"))
    inside = (frame_row >= 0) & (frame_row < len(t["frames/video"]))
    frame_video = np.where(
        inside, t["frames/video"][frame_row.clip(0, len(t["frames/video"]) - 1)], -2
    )
    checks.append(("items/frame_row", frame_video != video, "not a frame row of the item's video"))
    frame_index = np.where(
        inside, t["frames/frame_index"][frame_row.clip(0, len(t["frames/video"]) - 1)], -2
    )
    checks.append(
        (
            "items/frame_index",
            frame_index != t["items/frame_index"],
            "disagrees with frames/frame_index",
        )
    )
    checks.append(
        (
            "items/masklet_type",
            t["items/masklet_type"] >= len(CODES["masklet_types"]),
            "not a masklet type code",
        )
    )
    checks.append(("items/area", t["items/area"] <= 0, "an item must have a positive area"))
    cells = t["items/prompt_cells"]
    checks.append(
        (
            "items/prompt_cells",
            (cells < 0) | (cells > transforms.PROMPT_GRID**2),
            "not a count of 16 x 16 cells",
        )
    )
    for name, wrong, what in checks:
        rows = np.flatnonzero(wrong)
        if len(rows):
            context.problem(f"{name}: {len(rows)} items {what}, first item {rows[0]}")


def _duplicates(values: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return np.asarray(counts[inverse] > 1)
