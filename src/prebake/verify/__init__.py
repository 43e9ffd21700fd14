"""`prebake verify`: prove a store is whole and right.

The checks run in order (`checks.CHECKS`, listed by `prebake verify --help`), each problem one
line naming the array, row or file:

1. `schema`: the root attributes, every array's `zarr.json` against the schema document, and the
   row tables against each other;
2. `integrity`: every shard file the tables refer to is read once, front to back, and every
   index and referenced inner chunk has its crc32c checked;
3. `semantics`, without the source: value checks that need only the store (`check_frame`,
   `check_item`);
4. `source` (with `src`): sampled items re-derived with the reference decoder and transforms and
   compared bit for bit.

`context` holds what the checks share, `report` what they found, `run` runs them
(`verify_store`). An incomplete store (state "building") raises StoreError: its tables do not
exist yet, so there is nothing to verify until the build is finished (the message says how).

Only the list of checks is imported with this package (the command line shows it); the rest
is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prebake.verify.checks import CHECKS, Check, checks_help

if TYPE_CHECKING:
    from prebake.verify.report import Problem, VerifyReport
    from prebake.verify.run import verify_store
    from prebake.verify.schema import expected_metadata
    from prebake.verify.semantics import check_frame, check_item, nearest_sources
    from prebake.verify.source import pillow_rule

__all__ = [
    "CHECKS",
    "Check",
    "Problem",
    "VerifyReport",
    "check_frame",
    "check_item",
    "checks_help",
    "expected_metadata",
    "nearest_sources",
    "pillow_rule",
    "verify_store",
]

_MODULE_OF = {
    "Problem": "report",
    "VerifyReport": "report",
    "verify_store": "run",
    "expected_metadata": "schema",
    "check_frame": "semantics",
    "check_item": "semantics",
    "nearest_sources": "semantics",
    "pillow_rule": "source",
}


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"prebake.verify.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'prebake.verify' has no attribute {name!r}")
