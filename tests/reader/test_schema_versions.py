"""The reader on both store schemas and on partial stores: a v1 store (float32 pixel_values as
stored) and a v2 store (uint8 levels through the table) of one source serve the same tensors,
bit for bit, on both read paths; a partial store serves its fields and names what it lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from prebake.errors import StoreError
from prebake.reader import FIELDS, LOOP1_FIELDS, PrebakedDataset
from prebake.reader.layout import layout_of
from prebake.reader.rows import RowReaders
from prebake.store.schema import array_specs


def assert_same_items(left: PrebakedDataset, right: PrebakedDataset, step: int = 1) -> None:
    assert len(left) == len(right) > 0
    for index in range(0, len(left), step):
        a, b = left[index], right[index]
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == b[key].dtype and value.shape == b[key].shape, key
                assert value.numpy().tobytes() == b[key].numpy().tobytes(), (index, key)
            else:
                assert value == b[key], (index, key)


@pytest.mark.parametrize("fast", [True, False])
def test_v1_and_v2_stores_serve_the_same_tensors(
    train_store: Path, v1_store: Path, fast: bool
) -> None:
    v2, v1 = PrebakedDataset(train_store, fast=fast), PrebakedDataset(v1_store, fast=fast)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.fields == v1.fields == FIELDS
    assert_same_items(v2, v1, step=1 if fast else 5)


def test_v1_and_v2_clips_are_the_same(train_store: Path, v1_store: Path) -> None:
    v2, v1 = (PrebakedDataset(store, clip_len=3) for store in (train_store, v1_store))
    assert_same_items(v2, v1, step=4)


def test_v2_levels_are_read_into_uint8_and_normalized_into_float32(train_store: Path) -> None:
    """A uint8 output gets the stored levels (for a device that normalizes them itself, with
    `transforms.pixel_table()`); a float32 output the served values."""
    dataset = PrebakedDataset(train_store, fields=("pixel_values",))
    spec = array_specs(2)["pixel_values"]
    layouts = {"pixel_values": layout_of(train_store, spec, True)}
    rows = RowReaders(train_store, layouts, 4, False, 2).rows["pixel_values"]
    frame_row = int(zarr.open_array(train_store / "items/frame_row", mode="r")[5])
    levels = np.empty((3, 448, 448), np.uint8)
    rows.read_into(frame_row, levels)
    assert np.array_equal(
        levels, zarr.open_array(train_store / "pixel_values", mode="r")[frame_row]
    )
    served = np.empty((3, 448, 448), np.float32)
    rows.read_into(frame_row, served)
    assert served.tobytes() == dataset[5]["pixel_values"].numpy().tobytes()


def test_a_partial_store_serves_its_fields_and_names_what_it_lacks(
    loop1_store: Path, train_store: Path
) -> None:
    dataset = PrebakedDataset(loop1_store)  # default: the fields the store holds
    assert dataset.fields == dataset.stored_fields == LOOP1_FIELDS
    full = PrebakedDataset(train_store, fields=LOOP1_FIELDS)
    assert_same_items(dataset, full)
    assert set(dataset[0]) == {
        *LOOP1_FIELDS,
        "video_id",
        "frame_index",
        "masklet_id",
        "masklet_type",
    }
    with pytest.raises(StoreError) as raised:
        PrebakedDataset(loop1_store, fields=("pixel_values", "masks"))
    message = str(raised.value)
    assert "\n" not in message and str(loop1_store) in message
    assert "holds no masks" in message and "g_pixel_values" not in message.split(";")[0]
    with pytest.raises(ValueError, match="unknown fields"):  # a typo stays a ValueError
        PrebakedDataset(loop1_store, fields=("pixel_value",))
    # Loop 1's items filter on prompt cells even without masks: the table holds them.
    filtered = PrebakedDataset(loop1_store, min_prompt_cells=8)
    assert 0 < len(filtered) < len(dataset)
    assert all(int(item["prompt_masks"].sum()) >= 8 for item in filtered)


def test_schema_bench_runs_on_a_small_source(sample_sources: dict[str, Path]) -> None:
    from prebake.bench.schemas import bench_schemas, format_schemas

    results = bench_schemas(sample_sources["train"], items=20, workers=1)
    sizes = results["sizes"]
    assert sizes["v1"]["items"] == sizes["v2"]["items"] == sizes["v2_loop1"]["items"] > 0
    assert sizes["v2_loop1"]["bytes"] < sizes["v2"]["bytes"] < sizes["v1"]["bytes"]
    assert set(results["items_per_s"]) == {"v1_all", "v2_all", "v1_loop1", "v2_loop1"}
    assert all(rate > 0 for rate in results["items_per_s"].values())
    text = "\n".join(format_schemas(results))
    assert "v2 / v1" in text and "cv2.LUT" in text
