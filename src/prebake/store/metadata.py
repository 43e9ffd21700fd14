"""Every node's `zarr.json` of a store against the JSON Schema (draft 2020-12) of its version.

The schema documents are package data beside the prose schemas
(`prebake/schemas/prebake-store-v<N>.zarr-json.schema.json`); they are validated with the
`jsonschema` library. A document's instance is the whole store's metadata as one object: node
path ('' for the root group, 'items/area' for `items/area/zarr.json`) -> that node's zarr.json.
So the document itself says which nodes a store has, and each problem found names the file and
the JSON path inside it. `verify` lists them all, the reader refuses a store with any in the
nodes it reads, `info` says in one line that there are some.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prebake.storage import RemotePath
from prebake.store.schema import (
    SCHEMA_DIR,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SCHEMA_VERSIONS,
    load_document,
    store_version,
)

ROOT = ""  # the root group's node path


@dataclass(frozen=True)
class MetadataProblem:
    """One place where a node's zarr.json departs from the JSON Schema."""

    file: str  # store-relative: "zarr.json", "items/area/zarr.json"
    path: str  # JSON path inside the file: "$", "$.codecs[0].configuration.level"
    message: str

    def __str__(self) -> str:
        where = self.file if self.path == "$" else f"{self.file} {self.path}"
        return f"{where}: {self.message}"


def zarr_json_schema_path(version: int = SCHEMA_VERSION) -> Path:
    return SCHEMA_DIR / f"{SCHEMA_NAME}-v{version}.zarr-json.schema.json"


@cache
def zarr_json_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema document of store version `version`."""
    return load_document(zarr_json_schema_path(version))


@cache
def _validator(version: int, definition: str | None = None) -> Any:
    """A validator of the whole store's metadata, or (`definition`) of the object
    {node: zarr.json} against that one definition of `$defs`."""
    from jsonschema import Draft202012Validator  # imported here: `prebake --help` stays fast

    document = zarr_json_schema(version)
    if definition is None:
        Draft202012Validator.check_schema(document)
        return Draft202012Validator(document)
    node = definition.removesuffix("_array")
    return Draft202012Validator(
        {
            "$schema": document["$schema"],
            "$defs": document["$defs"],
            "properties": {node: {"$ref": f"#/$defs/{definition}"}},
        }
    )


def node_paths(version: int = SCHEMA_VERSION) -> tuple[str, ...]:
    """Every node a store of `version` may have, as the JSON Schema lists them ('' the root)."""
    return tuple(zarr_json_schema(version)["properties"])


def file_of(node: str) -> str:
    """The store-relative file holding a node's metadata."""
    return f"{node}/zarr.json" if node else "zarr.json"


def read_nodes(
    store: Path | RemotePath, nodes: Iterable[str]
) -> tuple[dict[str, Any], list[MetadataProblem]]:
    """The zarr.json of each of `nodes` that exists, parsed (a missing file is left out: the
    schema's `required` names it), and a problem for each file that is not JSON."""
    found: dict[str, Any] = {}
    problems: list[MetadataProblem] = []
    for node in nodes:
        path = store / file_of(node)
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as error:
            problems.append(MetadataProblem(file_of(node), "$", f"unreadable ({error})"))
            continue
        try:
            found[node] = json.loads(text)
        except ValueError as error:
            problems.append(MetadataProblem(file_of(node), "$", f"not JSON ({error})"))
    return found, problems


def metadata_version(root: object) -> int:
    """The schema version a root zarr.json claims, or the newest when it claims none this
    prebake knows (the schema then names `schema_version` as a problem)."""
    attrs = root.get("attributes") if isinstance(root, dict) else None
    prebake = attrs.get("prebake") if isinstance(attrs, dict) else None
    version = store_version(prebake) if isinstance(prebake, dict) else -1
    return version if version in SCHEMA_VERSIONS else SCHEMA_VERSION


def metadata_problems(
    store: Path | RemotePath, nodes: Iterable[str] | None = None, any_codecs: Iterable[str] = ()
) -> list[MetadataProblem]:
    """Every problem of the store's metadata against the JSON Schema of its version, in file
    order; `nodes` limits them to those nodes (default: every node the schema lists).

    A data array named in `any_codecs` is held to the array as Zarr reads it (`$defs/<name>_array`:
    data type, shape, chunk grid, fill value; any codecs) instead of the codecs prebake writes:
    the reader reads such arrays through zarr-python when it cannot read their rows as byte ranges."""
    root, unreadable = read_nodes(store, [ROOT])
    version = metadata_version(root.get(ROOT))
    every = node_paths(version)
    wanted = set(every if nodes is None else nodes)
    loose = set(any_codecs) & wanted
    found, problems = read_nodes(store, [node for node in every if node and node in wanted])
    found.update(root)
    problems = [*unreadable, *problems]
    broken = {problem.file for problem in problems}
    for error in _validator(version).iter_errors(found):
        for node, problem in _explain(error, found):
            if node in wanted and problem.file not in broken and node not in loose:
                problems.append(problem)
    for node in sorted(loose & set(found)):
        for error in _validator(version, f"{node}_array").iter_errors({node: found[node]}):
            problems.extend(problem for _, problem in _explain(error, found))
    order = {file_of(node): position for position, node in enumerate(every)}
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda problem: order.get(problem.file, len(order)))


def _explain(error: Any, found: dict[str, Any]) -> list[tuple[str, MetadataProblem]]:
    """(node, problem) for one jsonschema error: a missing or unexpected node at the top, else
    a value inside one node's zarr.json."""
    path = list(error.absolute_path)
    if not path:
        if error.validator == "required":
            return [
                (node, MetadataProblem(file_of(node), "$", "missing"))
                for node in error.validator_value
                if node not in found
            ]
        if error.validator == "not":
            return [
                (
                    node,
                    MetadataProblem(
                        file_of(node), "$", "present, but params.fields does not list this array"
                    ),
                )
                for node in error.validator_value.get("required", [])
            ]
        return [(ROOT, MetadataProblem("(store)", "$", _message(error)))]
    node, inside = str(path[0]), path[1:]
    return [(node, MetadataProblem(file_of(node), _json_path(inside), _message(error)))]


def _json_path(parts: list[Any]) -> str:
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).isidentifier():
            text += f".{part}"
        else:
            text += f"[{json.dumps(str(part))}]"
    return text


def _message(error: Any) -> str:
    """jsonschema's message, with the value found for a `const` (its message omits it)."""
    if error.validator == "const":
        return f"is {_short(error.instance)}, the schema says {_short(error.validator_value)}"
    if error.validator == "required":
        return error.message.replace("is a required property", "is missing")
    message = str(error.message)
    if message.startswith(repr(error.instance)):  # jsonschema repeats the value, maybe at length
        message = f"{_short(error.instance)}{message[len(repr(error.instance)) :]}"
    return message if len(message) <= 200 else message[:197] + "..."


def _short(value: object, limit: int = 80) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."
