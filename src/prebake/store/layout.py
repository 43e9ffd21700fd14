"""A store: the Zarr v3 group (arrays, tables, attributes) and, while it is being built, the build
folder inside it (lock, plan, one record per committed unit, temporary shards).

A store is a local folder or an fsspec URL (`prebake.storage`). Local commits are a temporary
file, fsync and `os.replace`; remote ones are one object PUT each (atomic too). Temporary shards
of a remote store are local files of the worker that writes them, not objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prebake.errors import StoreError
from prebake.storage import RemotePath, as_path, missing, zarr_store
from prebake.store.columns import read_column, write_column
from prebake.store.schema import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    ArraySpec,
    array_specs,
    fields_of,
    store_version,
)

BUILD_DIR = ".prebake-build"  # removed once the store is complete


def atomic_write_json(path: Path | RemotePath, data: object) -> None:
    if isinstance(path, RemotePath):  # one PUT: the object appears whole or not at all
        path.write_bytes(json.dumps(data, separators=(",", ":")).encode())
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w") as handle:
        json.dump(data, handle, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class StoreDir:
    def __init__(
        self, path: str | Path | RemotePath, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.path = as_path(path, storage_options)
        self.build_dir = self.path / BUILD_DIR
        self.lock_path = self.build_dir / "lock"
        self.plan_path = self.build_dir / "plan.json"
        self.units_dir = self.build_dir / "units"
        self.tmp_dir = self.build_dir / "tmp"
        self.staged_dir = self.build_dir / "tables"  # an append's new tables, before publishing

    # -- reading ------------------------------------------------------------------------------
    def attrs(self) -> dict[str, Any] | None:
        """The root's `prebake` attributes, or None when this is not a prebake store."""
        try:
            with (self.path / "zarr.json").open() as handle:
                metadata = json.load(handle)
        except (OSError, ValueError):
            return None
        attributes = metadata.get("attributes") if isinstance(metadata, dict) else None
        attrs = attributes.get("prebake") if isinstance(attributes, dict) else None
        return attrs if isinstance(attrs, dict) and attrs.get("schema") == SCHEMA_NAME else None

    def not_a_store(self) -> StoreError:
        """The one-line error for a path that holds no prebake store, saying what it holds."""
        if (self.path / "zarr.json").exists():
            what = "no prebake attributes in zarr.json"
        elif isinstance(self.path, Path) and self.path.is_file():
            what = "a file, not a store's folder"
        else:
            what = "no zarr.json: not a Zarr store"
        return StoreError(f"{self.path}: not a prebake store ({what})")

    def require_complete(self) -> dict[str, Any]:
        """The attributes of a complete store; StoreError (one line) for anything else."""
        if not self.path.exists():
            raise StoreError(f"{self.path}: {missing(self.path, 'store')}")
        attrs = self.attrs()
        if attrs is None and not self.build_dir.is_dir():
            raise self.not_a_store()
        if attrs is None or attrs.get("state") != "complete":
            from prebake.store.lock import holder_text, live_build

            holder = live_build(self.lock_path)
            if holder is not None:
                raise StoreError(
                    f"{self.path}: store is being built right now ({holder_text(holder)}); "
                    "wait for that build to finish"
                )
            stopped = "while planning" if attrs is None else f"state {attrs.get('state')!r}"
            raise StoreError(
                f"{self.path}: store is incomplete (its build stopped, {stopped}); "
                "rerun the same prebake build to finish it"
            )
        return attrs

    def read_plan(self) -> dict[str, Any] | None:
        try:
            with self.plan_path.open() as handle:
                plan: dict[str, Any] = json.load(handle)
                return plan
        except (OSError, ValueError):
            return None

    @property
    def remote(self) -> bool:
        return isinstance(self.path, RemotePath)

    def record_path(self, index: int) -> Path | RemotePath:
        return self.units_dir / f"{index:07d}.json"

    def read_record(self, index: int) -> dict[str, Any] | None:
        try:
            with self.record_path(index).open() as handle:
                record: dict[str, Any] = json.load(handle)
                return record
        except (OSError, ValueError):
            return None  # missing, or torn by a crash: the unit is redone

    def read_records(self, indices: Iterable[int]) -> dict[int, dict[str, Any] | None]:
        """`read_record` of many units; a remote store fetches them concurrently (one GET each
        would take minutes at SA-V's 50 k videos)."""
        wanted = list(indices)
        if not isinstance(self.path, RemotePath):
            return {index: self.read_record(index) for index in wanted}
        paths = {self.record_path(index).path: index for index in wanted}  # type: ignore[union-attr]
        fetched = self.path.fs.cat(list(paths), on_error="return") if paths else {}
        records: dict[int, dict[str, Any] | None] = dict.fromkeys(wanted)
        for key, data in fetched.items():
            if isinstance(data, bytes):
                with contextlib.suppress(ValueError):  # torn: the unit is redone
                    records[paths[key]] = json.loads(data)
        return records

    def shard_path(self, spec: ArraySpec, shard: int) -> Path | RemotePath:
        from prebake.store.shard import shard_key

        return self.path / shard_key(spec.name, 1 + len(spec.row_shape), shard)

    # -- writing ------------------------------------------------------------------------------
    def prepare_build_dir(self) -> None:
        if self.remote:  # objects need no folders; temporary shards are local to each worker
            return
        for folder in (self.units_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.iterdir():  # temporary shards of a build that died
            stale.unlink()

    def write_plan(self, plan: dict[str, Any]) -> None:
        atomic_write_json(self.plan_path, plan)

    def write_record(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.record_path(record["index"]), record)

    def clear_build_dir(self) -> None:
        """Empty the build folder but for the lock: a new plan starts with no records or staged
        tables of an earlier one (an append committed just before a crash leaves them)."""
        if self.build_dir.exists():
            for child in self.build_dir.iterdir():
                if child.name != self.lock_path.name:
                    _remove(child)

    def clear(self) -> None:
        """Remove everything but the lock: --overwrite, or a start over.

        The root metadata and the build's plan and records go first: a run killed in the middle
        of this leaves no store to resume (only data no record vouches for), so it starts over.
        """
        (self.path / "zarr.json").unlink(missing_ok=True)
        for child in self.build_dir.iterdir():
            if child.name != self.lock_path.name:
                _remove(child)
        for child in self.path.iterdir():
            if child.name != BUILD_DIR:
                _remove(child)

    def create(
        self, attrs: dict[str, Any], params: dict[str, Any], version: int = SCHEMA_VERSION
    ) -> None:
        """Create the group and the data arrays of `params`' fields (metadata only: no chunk
        is written), in the layout of schema `version`."""
        import zarr  # here, not at the top: workers never need it and start faster without it

        root = zarr.open_group(zarr_store(self.path, read_only=False), mode="a", zarr_format=3)
        capacity = {"frame_rows": attrs["frame_rows"], "item_rows": attrs["item_rows"]}
        for name in fields_of(params):
            spec = array_specs(version)[name]
            rows = capacity[spec.rows]
            assert spec.rows_per_shard is not None
            per_shard = params[spec.rows_per_shard]
            root.create_array(
                name,
                shape=(rows, *spec.row_shape),
                dtype=spec.numpy_dtype,
                chunks=(1, *spec.row_shape),
                shards=(per_shard, *spec.row_shape),
                serializer=spec.codecs[0],
                compressors=list(spec.codecs[1:]),
                fill_value=spec.fill_value,
                overwrite=True,
            )
        root.attrs.put({"prebake": attrs})

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        import zarr

        root = zarr.open_group(zarr_store(self.path, read_only=False), mode="r+", zarr_format=3)
        root.attrs.put({"prebake": attrs})

    def write_tables(
        self, tables: Iterable[tuple[str, np.ndarray]], version: int | None = None
    ) -> None:
        """Write the row tables (1-D, given one at a time as `make_tables` makes them) through
        zarr-python, in the layout of schema `version` (default: the store's)."""
        import zarr

        specs = array_specs(self.schema_version() if version is None else version)
        root = zarr.open_group(zarr_store(self.path, read_only=False), mode="r+", zarr_format=3)
        for name, values in tables:
            write_column(root, specs[name], values)

    def grow_arrays(self, capacity: dict[str, int], fields: tuple[str, ...]) -> None:
        """Grow the data arrays of `fields` to `capacity` rows (by "frame_rows" / "item_rows"):
        metadata only, so no shard file is read or written (zarr deletes chunks only when
        shrinking)."""
        import zarr

        for name in fields:
            spec = array_specs()[name]
            array = zarr.open_array(
                zarr_store(self.path / name, read_only=False), mode="r+", zarr_format=3
            )
            rows = capacity[spec.rows]
            if rows < array.shape[0]:
                raise StoreError(f"{self.path}: {name} cannot shrink to {rows} rows")
            if rows > array.shape[0]:
                array.resize((rows, *spec.row_shape))

    def schema_version(self) -> int:
        """The store's schema version (of its root attributes; a store without any: the
        version a build writes now)."""
        attrs = self.attrs()
        return SCHEMA_VERSION if attrs is None else store_version(attrs)

    def read_table(self, name: str) -> np.ndarray:
        """A row table's values (text and coded columns: object arrays of str)."""
        import zarr

        root = zarr.open_group(zarr_store(self.path), mode="r", zarr_format=3)
        return read_column(root, array_specs(self.schema_version())[name])

    def stage_tables(self, tables: Iterable[tuple[str, np.ndarray]]) -> None:
        """Save an append's new tables in the build folder, then mark them complete: the
        store's own tables are replaced only from there, so a crash while they are replaced
        is finished by the next run from the same staged values."""
        names = []
        for name, values in tables:
            if values.dtype == object:
                values = np.array([str(value) for value in values], dtype=str)
            with self._staged(name).open("wb") as handle:
                np.save(handle, values, allow_pickle=False)
            names.append(name)
        atomic_write_json(self.staged_dir / "staged.json", names)

    def staged_tables(self) -> Iterator[tuple[str, np.ndarray]] | None:
        """The staged tables, one at a time, or None when staging did not finish."""
        try:
            with (self.staged_dir / "staged.json").open() as handle:
                names = json.load(handle)
        except (OSError, ValueError):
            return None

        def load() -> Iterator[tuple[str, np.ndarray]]:
            for name in names:
                with self._staged(name).open("rb") as handle:
                    yield name, np.load(handle, allow_pickle=False)

        return load()

    def _staged(self, name: str) -> Path | RemotePath:
        if isinstance(self.staged_dir, Path):
            self.staged_dir.mkdir(parents=True, exist_ok=True)
        return self.staged_dir / f"{name.replace('/', '.')}.npy"

    def remove_build_dir(self) -> None:
        if isinstance(self.build_dir, RemotePath):  # the lock object goes last, on release
            for child in self.build_dir.iterdir():
                if child.name != self.lock_path.name:
                    _remove(child)
            return
        shutil.rmtree(self.build_dir, ignore_errors=True)


def _remove(path: Path | RemotePath) -> None:
    if isinstance(path, RemotePath):
        path.rmtree()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
