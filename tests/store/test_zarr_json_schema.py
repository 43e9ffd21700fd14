"""The JSON Schema of each store version (`prebake-store-v<N>.zarr-json.schema.json`) agrees with
its prose schema (`prebake-store-v<N>.json`): stores built now validate, every documented node
and field is in both, and a documented value changed is refused. The JSON Schema is read here
with `jsonschema` directly, the prose with `json`: not through prebake's own code."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from prebake import PrebakedDataset
from prebake.cli import app
from prebake.errors import StoreError
from prebake.store.metadata import metadata_problems

SCHEMAS = Path(__file__).resolve().parents[2] / "src" / "prebake" / "schemas"
DATA = ("pixel_values", "g_pixel_values", "prompt_masks", "masks")
ITEMSIZE = {"bool": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "float32": 4}


def documents(version: int) -> tuple[dict[str, Any], dict[str, Any]]:
    prose = json.loads((SCHEMAS / f"prebake-store-v{version}.json").read_text())
    machine = json.loads((SCHEMAS / f"prebake-store-v{version}.zarr-json.schema.json").read_text())
    return prose, machine


def node_validator(machine: dict[str, Any], node: str) -> Draft202012Validator:
    """A validator of one node's zarr.json against its definition in the document."""
    return Draft202012Validator({"$defs": machine["$defs"], **machine["properties"][node]})


def documented_nodes(prose: dict[str, Any]) -> set[str]:
    """Every node the prose schema describes: the root, the three table groups, each array,
    and for a text column ('utf8') its group with 'offsets' and 'utf8'."""
    nodes = {"", "frames", "items", "videos"}
    for name, entry in prose["arrays"].items():
        nodes.add(name)
        if entry["dtype"] == "utf8":
            nodes |= {f"{name}/offsets", f"{name}/utf8"}
    return nodes


def prose_metadata(prose: dict[str, Any], name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The zarr.json the prose describes for an array (rows: 10, shards of 4 rows)."""
    codecs = copy.deepcopy(
        entry.get("codecs")
        or prose["string_table_codecs" if entry["dtype"] == "string" else "table_codecs"]
    )
    if ITEMSIZE.get(entry["dtype"]) == 1 and codecs[0]["name"] == "bytes":
        codecs[0] = {"name": "bytes"}  # the prose: no endian for 1-byte types
    row = entry["shape"]
    metadata: dict[str, Any] = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [10, *row],
        "data_type": entry["dtype"],
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [4 if row else 10, *row]},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": entry["fill_value"],
        "attributes": {},
    }
    if entry.get("sharded"):
        index = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
        sharding = {
            "chunk_shape": [1, *row],
            "codecs": codecs,
            "index_codecs": index,
            "index_location": "end",
        }
        metadata["codecs"] = [{"name": "sharding_indexed", "configuration": sharding}]
    else:
        metadata["codecs"] = codecs
    return metadata


@pytest.mark.parametrize("version", [1, 2])
def test_the_documents_are_json_schema_2020_12(version: int) -> None:
    _, machine = documents(version)
    assert machine["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(machine)


def test_stores_built_now_validate(train_store: Path, v1_store: Path, loop1_store: Path) -> None:
    for store in (train_store, v1_store, loop1_store):
        assert metadata_problems(store) == [], store


@pytest.mark.parametrize("version", [1, 2])
def test_every_documented_node_is_in_both(version: int) -> None:
    prose, machine = documents(version)
    assert set(machine["properties"]) == documented_nodes(prose)
    required = set(machine["required"])
    optional = {"videos/fingerprint"} if version == 1 else set(DATA)  # v2: params.fields says
    assert required == documented_nodes(prose) - optional


@pytest.mark.parametrize("version", [1, 2])
def test_every_documented_array_field_is_in_both(version: int) -> None:
    """The prose's zarr.json of each array validates; each documented value changed (data type,
    fill value, row shape, each codec and each of its settings) is refused."""
    prose, machine = documents(version)
    for name, entry in prose["arrays"].items():
        if entry["dtype"] == "utf8":
            continue  # a group: its two arrays are checked by the table codecs below
        validator = node_validator(machine, name)
        metadata = prose_metadata(prose, name, entry)
        assert list(validator.iter_errors(metadata)) == [], name
        changes = [("data_type", "float64"), ("fill_value", "x"), ("fill_value", 7)]
        if entry["shape"]:
            changes.append(("shape", [10, *entry["shape"][:-1], entry["shape"][-1] + 1]))
        for key, value in changes:
            assert not validator.is_valid({**metadata, key: value}), (name, key, value)
        codecs = metadata["codecs"]
        inner = codecs[0]["configuration"]["codecs"] if entry.get("sharded") else codecs
        for position, codec in enumerate(inner):
            variants = [{**codec, "name": "gzip"}]
            variants += [
                {**codec, "configuration": {**codec["configuration"], setting: "other"}}
                for setting in codec.get("configuration", {})
            ]
            for variant in variants:
                changed = copy.deepcopy(metadata)
                target = (
                    changed["codecs"][0]["configuration"]["codecs"]
                    if entry.get("sharded")
                    else changed["codecs"]
                )
                target[position] = variant
                assert not validator.is_valid(changed), (name, variant)


@pytest.mark.parametrize("version", [1, 2])
def test_every_documented_attribute_is_in_both(version: int) -> None:
    prose, machine = documents(version)
    root = machine["$defs"]["root"]["properties"]["attributes"]["properties"]["prebake"]
    documented = set(prose["attributes"]["required"])
    assert set(root["properties"]) - {"append"} == documented  # 'append': while_appending
    optional = {"versions", "appends"} if version == 1 else set()
    assert set(root["required"]) == documented - optional
    params = machine["$defs"]["params"]["properties"]
    described = prose["attributes"]["required"]["params"]
    for key in params:
        assert key in described, key
    # the reference preprocessing, as the prose gives it, is what the JSON Schema requires
    for key, value in (
        ("g_size", 1024),
        ("pixel_size", 448),
        ("prompt_grid", 16),
        ("mask_size", 1024),
    ):
        assert f"{key} {value}" in described and params[key] == {"const": value}
    assert (
        params["mean"] == {"const": [0.485, 0.456, 0.406]}
        and "mean [0.485, 0.456, 0.406]" in described
    )


def test_a_damaged_zarr_json_is_named_by_file_and_json_path(store_copy_any: Path) -> None:
    """The three kinds of damage the issue met: a group whose node_type is a number, a table
    whose attributes are -1, a root without zarr_format."""
    store = store_copy_any
    edits = (
        ("items/zarr.json", lambda m: m.update(node_type=5), "items/zarr.json $.node_type: is 5"),
        (
            "items/area/zarr.json",
            lambda m: m.update(attributes=-1),
            "items/area/zarr.json $.attributes: -1 is not of type 'object'",
        ),
        ("zarr.json", lambda m: m.pop("zarr_format"), "zarr.json: 'zarr_format' is missing"),
    )
    for file, edit, _ in edits:
        metadata = json.loads((store / file).read_text())
        edit(metadata)
        (store / file).write_text(json.dumps(metadata))
    found = [str(problem) for problem in metadata_problems(store)]
    for *_, expected in edits:
        assert any(line.startswith(expected) for line in found), (expected, found)
    with pytest.raises(StoreError, match=r"store.zarr/zarr.json: 'zarr_format' is missing"):
        PrebakedDataset(store)
    verify = CliRunner().invoke(app, ["verify", str(store), "--quiet"])
    assert verify.exit_code == 1 and "Traceback" not in verify.output, verify.output
    for *_, expected in edits:
        assert f"  {expected}" in verify.output, verify.output
    info = CliRunner().invoke(app, ["info", str(store)])
    assert info.exit_code == 0, info.output
    assert "metadata does not match the schema (3 problems" in info.output
    assert "run prebake verify to list them" in info.output


@pytest.fixture
def store_copy_any(train_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(train_store, tmp_path / "store.zarr"))
