"""`prebake info` and `prebake show` on built stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from prebake.cli import app
from prebake.info import format_info, store_info
from prebake.show import render_preview, sheet_size, tile_size
from prebake.store.layout import StoreDir


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


# -- info -------------------------------------------------------------------------------------


def test_info_reports_counts_arrays_and_build(train_store: Path) -> None:
    info = store_info(train_store)
    attrs = StoreDir(train_store).attrs()
    assert attrs is not None
    assert info["state"] == "complete"
    assert info["counts"] == attrs["counts"]
    assert set(info["arrays"]) == {"pixel_values", "g_pixel_values", "prompt_masks", "masks"}
    masks = info["arrays"]["masks"]
    assert (
        masks["dtype"] == "uint8"
        and masks["chunks"] == [1, 1024, 1024]
        and masks["shards"] == [8, 1024, 1024]
    )
    assert masks["rows_written"] == attrs["counts"]["items"]
    assert masks["compression_ratio"] > 10  # zstd on 0/1 masks
    pixel = info["arrays"]["pixel_values"]
    assert pixel["rows_written"] == attrs["counts"]["frames"]
    assert pixel["shape"] == [attrs["frame_rows"], 3, 448, 448]
    assert 0.95 < pixel["compression_ratio"] <= 1.0  # uncompressed: only the crc32c and index
    assert (
        info["bytes_on_disk"]
        == sum(a["bytes_on_disk"] for a in info["arrays"].values())
        + info["bytes_tables_and_metadata"]
    )
    assert info["versions"]["pillow"] and info["build"]["seconds"] > 0
    text = format_info(info)
    for expected in (
        "videos 3 (0 failed)",
        "g_pixel_values",
        "bytes+zstd+crc32c",
        "versions:",
        "build:",
    ):
        assert expected in text


def test_info_cli_text_and_json(train_store: Path) -> None:
    code, output = invoke("info", str(train_store))
    assert code == 0 and "arrays:" in output
    code, output = invoke("info", str(train_store), "--json")
    assert code == 0 and json.loads(output)["counts"]["items"] > 0


def test_info_lists_failures_and_incomplete_stores(train_store: Path, tmp_path: Path) -> None:
    store = Path(shutil.copytree(train_store, tmp_path / "store.zarr"))
    metadata = json.loads((store / "zarr.json").read_text())
    attrs = metadata["attributes"]["prebake"]
    attrs["failures"] = [
        {"video_id": "sav_999999", "path": "x.mp4", "reason": "x.mp4: cannot decode video"}
    ]
    attrs["state"] = "building"
    (store / "zarr.json").write_text(json.dumps(metadata))
    text = format_info(store_info(store))
    assert "building" in text and "sav_999999: x.mp4: cannot decode video" in text


def test_info_cannot_run(tmp_path: Path) -> None:
    code, output = invoke("info", str(tmp_path / "missing"))
    assert code == 2 and "no such store" in output


# -- show -------------------------------------------------------------------------------------


def test_show_item_png(train_store: Path, tmp_path: Path) -> None:
    out = render_preview(train_store, tmp_path / "item.png", item=3)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == tile_size(1.0) == (1024 + 16 + 896, 1024 + 84)
        pixels = np.asarray(image)
    assert pixels[:1024, :1024].std() > 10  # an image was drawn, not an empty canvas
    assert (pixels[:1024, :1024] == (255, 40, 200)).all(axis=-1).any()  # the mask outline


def test_show_grid_png(train_store: Path, tmp_path: Path) -> None:
    code, output = invoke(
        "show", str(train_store), "--grid", "5", "--out", str(tmp_path / "grid.png")
    )
    assert code == 0, output
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == sheet_size(5)
    width, height = tile_size(0.5)
    assert sheet_size(5) == (3 * width + 4 * 16, 2 * height + 3 * 16)


def test_show_same_seed_same_sheet(train_store: Path, tmp_path: Path) -> None:
    first = render_preview(train_store, tmp_path / "a.png", grid=3, seed=7).read_bytes()
    second = render_preview(train_store, tmp_path / "b.png", grid=3, seed=7).read_bytes()
    assert first == second


def test_show_errors_are_one_line(train_store: Path, tmp_path: Path) -> None:
    code, output = invoke(
        "show", str(train_store), "--item", "100000", "--out", str(tmp_path / "x.png")
    )
    assert code == 2 and "does not exist" in output and "Traceback" not in output
    code, output = invoke("show", str(train_store), "--item", "1", "--grid", "2")
    assert code == 2
    code, output = invoke(
        "show", str(train_store), "--out", str(tmp_path / "no" / "such" / "dir.png")
    )
    assert code == 2 and "cannot write" in output


def test_show_names_a_damaged_row(train_store: Path, tmp_path: Path) -> None:
    store = Path(shutil.copytree(train_store, tmp_path / "store.zarr"))
    shutil.rmtree(store / "g_pixel_values" / "c")
    code, output = invoke("show", str(store), "--item", "0", "--out", str(tmp_path / "x.png"))
    assert code == 2 and "g_pixel_values" in output and "missing" in output


@pytest.mark.parametrize("count", [1, 2, 4, 9, 10])
def test_sheet_sizes(count: int) -> None:
    width, height = sheet_size(count)
    tile_width, tile_height = tile_size(0.5)
    assert width >= tile_width and height >= tile_height


# -- both schemas, partial stores ----------------------------------------------------------------


def test_info_on_a_v1_and_a_partial_store(v1_store: Path, loop1_store: Path) -> None:
    v1 = store_info(v1_store)
    assert v1["schema"] == "prebake-store v1" and v1["lacks"] == []
    assert v1["arrays"]["pixel_values"]["dtype"] == "float32"
    partial = store_info(loop1_store)
    assert partial["fields"] == ["pixel_values", "prompt_masks"]
    assert partial["lacks"] == ["g_pixel_values", "masks"]
    assert set(partial["arrays"]) == {"pixel_values", "prompt_masks"}
    text = format_info(partial)
    assert (
        "the store lacks g_pixel_values, masks (built with --fields pixel_values,prompt_masks)"
        in text
    )
    assert "pixel_values is stored as its uint8 levels, served float32" in text


def test_show_draws_v1_and_v2_alike_and_partial_stores(
    train_store: Path, v1_store: Path, loop1_store: Path, tmp_path: Path
) -> None:
    drawn = {
        name: np.asarray(Image.open(render_preview(store, tmp_path / f"{name}.png", item=4)))
        for name, store in (("v2", train_store), ("v1", v1_store), ("loop1", loop1_store))
    }
    assert np.array_equal(drawn["v1"], drawn["v2"])  # the same levels, stored two ways
    assert drawn["loop1"].shape == drawn["v2"].shape
    width = tile_size(1.0)[0]
    right = slice(width - 896, width)  # the 448 panel, x2: the same in the partial store
    assert np.array_equal(drawn["loop1"][:896, right], drawn["v2"][:896, right])
