"""Check: every node's zarr.json against the JSON Schema of the store's version
(`prebake.store.metadata`), before anything is read through it."""

from __future__ import annotations

from prebake.store.metadata import (
    metadata_problems,
    metadata_version,
    read_nodes,
    zarr_json_schema_path,
)
from prebake.verify.context import VerifyContext


def check_zarr_json(context: VerifyContext) -> bool:
    """Each violation is a problem naming the file and the JSON path inside it. The later
    checks still run (they name what a violation means for the rows), each on what it can read."""
    problems = metadata_problems(context.store.path)
    for problem in problems:
        context.problem(str(problem))
    root, _ = read_nodes(context.store.path, [""])
    schema = zarr_json_schema_path(metadata_version(root.get("")))
    context.report.metadata.update(schema=schema.name, problems=len(problems))
    return True
