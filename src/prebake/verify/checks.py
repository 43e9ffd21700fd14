"""The checks of `prebake verify`, in the order they run: a name, the module of `prebake.verify`
that holds it (its family), and one line saying what it proves. `prebake verify --help` shows
this list; each problem in a report names the check that found it.

A check is the function `check_<name>` of `prebake.verify.<family>`, over the shared
`VerifyContext`; it returns False when later checks cannot run (the store cannot be read
further). This module imports none of them, so the command line starts fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prebake.verify.context import VerifyContext


@dataclass(frozen=True)
class Check:
    name: str
    family: str  # metadata, schema, integrity, semantics or source: the module holding check_<name>
    description: str
    needs_source: bool = False  # runs only when a source is given (--src)

    def function(self) -> Callable[[VerifyContext], bool]:
        """`check_<name>` of its family's module (imported now)."""
        module = importlib.import_module(f"prebake.verify.{self.family}")
        function: Callable[[VerifyContext], bool] = getattr(module, f"check_{self.name}")
        return function


CHECKS = (
    Check(
        "zarr_json",
        "metadata",
        "every node's zarr.json (root, data arrays, tables, groups) against the JSON Schema of "
        "the store's version (prebake/schemas/prebake-store-v<N>.zarr-json.schema.json): each "
        "violation named by its file and JSON path",
    ),
    Check(
        "attributes",
        "schema",
        "root attributes: schema version, the reference preprocessing parameters, counts",
    ),
    Check(
        "metadata",
        "schema",
        "each array's zarr.json against the schema document (shape, data type, chunks, codecs); "
        "the arrays of params.fields and no other",
    ),
    Check(
        "tables",
        "schema",
        "the row tables, read through zarr-python, against each other and the counts",
    ),
    Check(
        "shards",
        "integrity",
        "every shard file the tables refer to, read once: index and chunk crc32c, no orphans",
    ),
    Check(
        "frames",
        "semantics",
        "pixel_values (v1's float32) are exactly ImageNet-normalized 8-bit levels; the 448 and "
        "1024 images show the same picture",
    ),
    Check(
        "items",
        "semantics",
        "masks hold 0 and 1 over the item's area; prompt_masks agree with masks",
    ),
    Check(
        "source",
        "source",
        "with --src: sampled items re-derived from the source and compared bit for bit",
        needs_source=True,
    ),
)


def checks_help() -> str:
    """The list of checks as `prebake verify --help` shows it: a paragraph each."""
    return "\n\n".join(f"{check.name}: {check.description}" for check in CHECKS)
