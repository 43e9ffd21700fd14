"""`prebake build`: plan the units (videos), bake each into the shards it owns, then commit.

Commit order makes a crash harmless: a unit's shards are written (atomically, one file at a
time), then its record; only when every unit has a record are the tables written and the store
marked complete. Re-running the same build skips units that have a record and redoes the rest,
which gives a store bitwise identical to an uninterrupted build, whenever the first run was
killed (kill -9 included) or interrupted (Ctrl-C).

The rooms, in the order a build runs:

- `options`: what a build is asked (`BuildOptions`), what it did (`BuildReport`), the settings
  that decide a store's bytes;
- `builder`: `build()` and the `Builder` of one run (fresh build, resume, append);
- `planning`: each video opened and given its rows;
- `unit`: the worker side, baking one unit (video), knowing nothing of who runs it;
- `pool` and `dask`: the executors running the units (worker processes of this machine, or
  Dask tasks on a cluster, imported only with `--dask`), both as `executor.Executor`;
- `baking`: units baked through an executor, each record committed as it comes back;
- `commit`: records, tables and the attributes that mark a store complete.

Either way this process alone holds the lock, writes the records and commits. The store and
the source may be local paths or fsspec URLs (`prebake.storage`).
"""

from prebake.build.builder import build
from prebake.build.commit import store_bytes
from prebake.build.options import (
    DEFAULT_FRAMES_PER_SHARD,
    DEFAULT_ITEMS_PER_SHARD,
    BuildInterrupted,
    BuildOptions,
    BuildReport,
    selection_of,
    settings_of,
)
from prebake.build.unit import bake_unit, plan_unit, plan_units, tune_memory

__all__ = [
    "DEFAULT_FRAMES_PER_SHARD",
    "DEFAULT_ITEMS_PER_SHARD",
    "BuildInterrupted",
    "BuildOptions",
    "BuildReport",
    "bake_unit",
    "build",
    "plan_unit",
    "plan_units",
    "selection_of",
    "settings_of",
    "store_bytes",
    "tune_memory",
]
