"""What a build is asked to do (`BuildOptions`), what it did (`BuildReport`), and the settings
that decide a store's bytes (a store is resumed or grown only with equal settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prebake import decoding, transforms
from prebake.build.resizing import DEFAULT_DEVICE, DEFAULT_RESIZE, Resizing
from prebake.errors import PrebakeError, StoreError
from prebake.sources.annotations import FRAME_STRIDE
from prebake.storage import RemotePath, StorageOptions, as_path, location_text
from prebake.store.schema import DATA_ARRAYS, SCHEMA_VERSION
from prebake.versions import library_versions

# The defaults of `BuildOptions`, which `prebake build`'s options take too (one source of truth).
DEFAULT_MASKLETS = "manual"  # as SAM 2 trains
DEFAULT_LAYOUT = "auto"
DEFAULT_FRAMES_PER_SHARD = 64
DEFAULT_ITEMS_PER_SHARD = 1024
MASKLET_CHOICES = ("manual", "auto", "all")
LAYOUT_CHOICES = ("auto", "train", "frames", "png")


def default_workers() -> int:
    """Worker processes when none are asked for: the machine's cores (a build runs no more
    than it has videos to bake)."""
    return os.cpu_count() or 1


class BuildInterrupted(PrebakeError):
    """Ctrl-C: everything committed so far is kept; the same command resumes."""


@dataclass
class BuildOptions:
    src: str | Path  # a folder, or an fsspec URL (s3://bucket/sav)
    out: str | Path  # likewise
    workers: int = field(default_factory=default_workers)
    masklets: str = DEFAULT_MASKLETS  # one of MASKLET_CHOICES
    layout: str = DEFAULT_LAYOUT  # one of LAYOUT_CHOICES
    limit: int | None = None
    video_ids: list[str] | None = None
    frames_per_shard: int = DEFAULT_FRAMES_PER_SHARD
    items_per_shard: int = DEFAULT_ITEMS_PER_SHARD
    overwrite: bool = False
    progress: bool = True
    storage_options: StorageOptions | None = None  # for fsspec URLs (endpoint, credentials)
    dask: str | None = None  # run units on Dask: "tcp://host:8786" or "local:N"
    pillow_rule: int = transforms.DEFAULT_PILLOW_RULE  # the trainer's Pillow: 13, or 12 and older
    # How decoded mp4 frames become RGB (prebake.decoding.CONVERSIONS). Not a command option:
    # "opencv" is the reference; "legacy" bakes stores as prebake did before, for tests only.
    decoder_conversion: str = "opencv"
    retry_failed: bool = False  # bake the videos recorded as failed again (as new units)
    # The training arrays to store (--fields), any order; None: all four.
    fields: tuple[str, ...] | list[str] | None = None
    # Not a command option: 1 bakes a store of schema v1 (float32 pixel_values, zarr-python
    # string tables, all fields), as prebake did before, for tests of v1 stores only.
    schema_version: int = SCHEMA_VERSION
    # Where the two image resizes run: "pillow", or "torch" on `device` ("cpu", "cuda",
    # "cuda:N"). Not a setting: both give the same bytes, so a store built one way may be
    # resumed or grown the other way; the store records which baked what.
    resize: str = DEFAULT_RESIZE
    device: str = DEFAULT_DEVICE

    @property
    def resizing(self) -> Resizing:
        return Resizing(self.resize, self.device)


@dataclass
class BuildReport:
    store: Path | RemotePath
    videos: int
    videos_failed: int
    frames: int
    items: int
    bytes: int
    seconds: float
    resumed: int = 0  # units found already baked by an earlier run (of a build or an append)
    already_complete: bool = False  # nothing was baked: the store already held the selection
    failures: list[dict[str, str]] = field(default_factory=list)
    frames_baked: int = 0  # frames this run baked
    videos_baked: int = 0  # videos this run baked (failed ones not included)
    built: bool = False  # this run committed a fresh build
    added: int = 0  # videos this run added to a complete store
    retried: int = 0  # failed videos this run baked again
    retried_ok: int = 0  # of those, baked now
    source_problems: list[str] = field(default_factory=list)  # unreadable links and folders
    source_changes: list[str] = field(default_factory=list)  # baked videos changed or gone
    source_notes: list[str] = field(default_factory=list)  # files that pair with nothing

    @property
    def problems(self) -> bool:
        """Anything that makes `prebake build` exit 1."""
        return bool(self.failures or self.source_problems or self.source_changes)

    @property
    def frames_per_second(self) -> float:
        """Frames baked by this run per second of it."""
        return self.frames_baked / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON object (`prebake build --json`): the store's counts, what
        this run did, the failed videos with their reasons, bytes and seconds."""
        data = {entry.name: getattr(self, entry.name) for entry in fields(self)}
        data["store"] = str(self.store)
        data["ok"] = not self.problems
        data["frames_per_second"] = round(self.frames_per_second, 2)
        data["seconds"] = round(self.seconds, 3)
        return data


def check_fields(fields: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """The training arrays asked for, in store order; PrebakeError (one line) for an unknown
    name or none at all."""
    if fields is None:
        return DATA_ARRAYS
    unknown = [name for name in fields if name not in DATA_ARRAYS]
    if unknown or not fields:
        raise PrebakeError(
            f"fields must be one or more of {', '.join(DATA_ARRAYS)}"
            + (f", not {', '.join(map(repr, unknown))}" if unknown else "")
        )
    return tuple(name for name in DATA_ARRAYS if name in fields)


def settings_of(options: BuildOptions) -> dict[str, Any]:
    """Everything that decides a store's bytes: a store is only resumed with equal settings."""
    params = dict(transforms.PARAMS)
    params.update(
        frame_stride=FRAME_STRIDE,
        masklets=options.masklets,
        layout=options.layout,
        frames_per_shard=options.frames_per_shard,
        items_per_shard=options.items_per_shard,
    )
    if options.schema_version >= 2:
        params["fields"] = list(check_fields(options.fields))
    elif options.fields is not None:
        raise PrebakeError("a store of schema v1 holds every field")
    params.update(
        pillow_rule=options.pillow_rule,
        decoding=decoding.decoding_settings(options.decoder_conversion),
    )
    # The source root, not the selection (--videos, --limit): a selection says what to add.
    source = {"root": location_text(as_path(options.src, options.storage_options))}
    return {"params": params, "source": source, "pillow": library_versions()["pillow"]}


def selection_of(options: BuildOptions) -> dict[str, Any]:
    """What one run asked to bake (recorded with the build or append it made)."""
    return {
        "videos_filter": sorted(options.video_ids) if options.video_ids is not None else None,
        "limit": options.limit,
        "retry_failed": options.retry_failed,
    }


def check_settings(path: Path | RemotePath, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse to resume or reuse a store made with other settings, naming what differs."""
    differences = _differences(stored, wanted)
    if differences:
        shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        raise StoreError(
            f"{path}: store was built with other settings ({shown}); "
            "use --overwrite to start over, or rerun with the store's settings"
        )


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    stored_flat, wanted_flat = _flatten(stored), _flatten(wanted)
    return [
        f"{_setting_label(key)}: store {stored_flat.get(key)!r}, this command {wanted_flat.get(key)!r}"
        for key in sorted(set(stored_flat) | set(wanted_flat))
        if stored_flat.get(key) != wanted_flat.get(key)
    ]


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _setting_label(key: str) -> str:
    """`params.masklets` -> `masklets` (as the option is named), `source.root` -> `source root`."""
    group, _, name = key.partition(".")
    return {"params": name, "source": f"source {name}"}.get(group, key)


def read_video_ids(path: Path) -> list[str]:
    """The video ids of a `--videos` file: one per line; blank lines and `#` comments (a whole
    line, or the end of one) are skipped. PrebakeError (one line) when it cannot be read."""
    try:
        text = path.read_text()
    except OSError as error:
        raise PrebakeError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise PrebakeError(f"{path}: not a text file of video ids") from None
    ids = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [video_id for video_id in ids if video_id]
