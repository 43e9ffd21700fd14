"""`prebake verify` on both store schemas and on partial stores: v1 stores verify as before (also
those made before appends and source fingerprints were recorded), v2's own structures (text
columns, codes, fields) are checked and their damage named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers.damage import problems, run_verify

from prebake.errors import StoreError
from prebake.reader import PrebakedDataset


def test_a_v1_store_verifies_against_the_source(
    v1_store: Path, sample_sources: dict[str, Path]
) -> None:
    code, output = run_verify(v1_store, "--src", str(sample_sources["train"]), "--samples", "all")
    assert code == 0, output
    assert "against prebake-store v1" in output


def test_a_v1_store_from_before_appends_and_fingerprints_verifies(
    v1_store_copy: Path, sample_sources: dict[str, Path]
) -> None:
    store = v1_store_copy
    shutil.rmtree(store / "videos" / "fingerprint")
    metadata = json.loads((store / "zarr.json").read_text())
    del metadata["attributes"]["prebake"]["appends"]
    (store / "zarr.json").write_text(json.dumps(metadata))
    code, output = run_verify(store, "--src", str(sample_sources["train"]))
    assert code == 0, output
    assert len(PrebakedDataset(store)) > 0


def test_a_partial_store_verifies_against_the_source(
    loop1_store: Path, sample_sources: dict[str, Path]
) -> None:
    code, output = run_verify(
        loop1_store, "--src", str(sample_sources["train"]), "--samples", "all"
    )
    assert code == 0, output
    assert "2 arrays and" in output
    assert "fields     pixel_values, prompt_masks; the store lacks g_pixel_values, masks" in output
    assert (
        "semantics  frames not checked (a uint8 frame is checked against both images, the store "
        "holds pixel_values), " in output
    )
    assert "random sample" not in output  # --samples all: every item


def test_an_array_the_fields_do_not_list_is_a_problem(
    loop1_store: Path, train_store: Path, tmp_path: Path
) -> None:
    store = Path(shutil.copytree(loop1_store, tmp_path / "store.zarr"))
    shutil.copytree(train_store / "masks", store / "masks")
    code, output = run_verify(store)
    assert code == 1
    assert any(
        line.startswith("masks: the store holds this array, but params.fields")
        for line in problems(output)
    ), output


@pytest.mark.parametrize("column", ["video_id", "source"])
def test_damaged_text_columns_are_named(column: str, store_copy: Path) -> None:
    """Offsets that do not describe the bytes (valid checksums: written through zarr-python)."""
    offsets = zarr.open_array(store_copy / "videos" / column / "offsets", mode="r+")
    values = np.asarray(offsets[:])
    values[1] += 1000
    offsets[:] = values
    code, output = run_verify(store_copy)
    assert code == 1 and "Traceback" not in output
    assert any(f"videos/{column}" in line and "offsets" in line for line in problems(output)), (
        output
    )
    if column == "video_id":  # the reader needs the ids: one line naming the store
        with pytest.raises(StoreError, match="offsets do not describe"):
            PrebakedDataset(store_copy)


def test_wrong_codes_and_fields_are_named(store_copy: Path) -> None:
    status = zarr.open_array(store_copy / "videos" / "status", mode="r+")
    status[0] = 7
    metadata = json.loads((store_copy / "zarr.json").read_text())
    metadata["attributes"]["prebake"]["layouts"] = ["train", "png"]
    (store_copy / "zarr.json").write_text(json.dumps(metadata))
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert any("layouts is ['train', 'png']" in line for line in found), found
    assert any(
        line.startswith("videos/status: table unreadable") and "codes outside 0..1" in line
        for line in found
    ), found
    metadata["attributes"]["prebake"]["params"]["fields"] = ["masks", "pixel_values"]
    (store_copy / "zarr.json").write_text(json.dumps(metadata))
    code, output = run_verify(store_copy)
    assert code == 1 and "params.fields is ['masks', 'pixel_values']" in output
