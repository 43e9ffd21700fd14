"""`prebake info` and `prebake show` on built stores."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.stores import build_store
from PIL import Image
from typer.testing import CliRunner

from prebake.cli import app
from prebake.demo import SampleObject, SampleVideo, write_sample
from prebake.info import format_info, store_info
from prebake.reader import PrebakedDataset
from prebake.show import render_preview, sheet_size, tile_size
from prebake.store.layout import StoreDir


def walked_bytes(folder: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(parent, name))
        for parent, _, names in os.walk(folder)
        for name in names
    )


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
    # Sizes against the files themselves (os.walk), not against info's own sums.
    assert info["bytes_on_disk"] == walked_bytes(train_store)
    for name, entry in info["arrays"].items():
        assert entry["bytes_on_disk"] == walked_bytes(train_store / name), name
        shard_files = [p for p in (train_store / name / "c").rglob("*") if p.is_file()]
        assert entry["shard_files"] == len(shard_files), name
    arrays_bytes = sum(walked_bytes(train_store / name) for name in info["arrays"])
    assert info["bytes_tables_and_metadata"] == walked_bytes(train_store) - arrays_bytes
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


MAGENTA = np.array([255, 40, 200], dtype=np.float64)  # the mask colour the docstring names
PANEL, GAP, TILE = 1024, 16, (1024 + 16 + 896, 1024 + 84)  # item drawing: 1024 | gap | 448 x 2


def levels(pixel_values: torch.Tensor) -> np.ndarray:
    """8-bit levels (H, W, 3) of ImageNet-normalized pixel_values (the reference inverse)."""
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    values = pixel_values.numpy().astype(np.float64) * std + mean
    return np.rint(values * 255).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)


def off_grid(side: int, prompt: np.ndarray, margin: int = 3) -> np.ndarray:
    """Pixels of a `side`-square panel inside prompt cells that are off, `margin` away from
    the cell borders (where the 16 x 16 grid and the cells' outlines are drawn)."""
    cell = side // 16
    inside = np.zeros(side, dtype=bool)
    for k in range(16):
        inside[k * cell + margin : (k + 1) * cell - margin] = True
    keep = np.outer(inside, inside)
    keep &= ~np.kron(prompt, np.ones((cell, cell), dtype=bool))
    return keep


def away_from(mask: np.ndarray, value: bool, distance: int = 2) -> np.ndarray:
    """Pixels where `mask` is `value` in the whole (2 d + 1)-square around them."""
    near = mask == value
    padded = np.pad(near, distance, constant_values=True)
    result = np.ones_like(near)
    for dy in range(2 * distance + 1):
        for dx in range(2 * distance + 1):
            result &= padded[dy : dy + near.shape[0], dx : dx + near.shape[1]]
    return result


def test_show_item_png(train_store: Path, tmp_path: Path) -> None:
    """The drawing of an item against an independent composition of its tensors: the 1024
    panel is g_pixel_values, blended 45 % with magenta inside the mask; the 448 panel is
    pixel_values' levels repeated 2 x 2, wherever no prompt cell or grid line is drawn."""
    item = PrebakedDataset(train_store)[3]
    out = render_preview(train_store, tmp_path / "item.png", item=3)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == TILE
        pixels = np.asarray(image).astype(np.int64)
    g = item["g_pixel_values"].numpy().transpose(1, 2, 0).astype(np.int64)
    mask = item["masks"].numpy() == 1
    left = pixels[:PANEL, :PANEL]
    outside, inside = away_from(mask, False), away_from(mask, True)
    assert outside.sum() > 10_000 and inside.sum() > 1_000
    assert np.array_equal(left[outside], g[outside])
    blended = g[inside] * 0.55 + MAGENTA * 0.45
    assert np.abs(left[inside] - blended).max() <= 1  # rounding
    assert (left[mask] == MAGENTA).all(axis=-1).any()  # the mask's outline
    right = pixels[: 2 * 448, PANEL + GAP : PANEL + GAP + 2 * 448]
    expected = np.repeat(np.repeat(levels(item["pixel_values"]), 2, axis=0), 2, axis=1)
    keep = off_grid(2 * 448, item["prompt_masks"].numpy())
    assert keep.sum() > 100_000
    assert np.array_equal(right[keep], expected[keep].astype(np.int64))


@pytest.fixture(scope="module")
def two_item_store(module_folder: Path) -> Path:
    """A store of one video with two annotated frames and one masklet: two items."""
    disc = SampleObject("manual", "disc", (230, 60, 40), (0.4, 0.5), (0.01, 0.0), 0.2)
    root = module_folder
    src = write_sample(root / "src", "train", [SampleVideo("sav_950000", 96, 64, 5, (disc,))])
    return build_store(src, root / "store.zarr")


@pytest.mark.parametrize("seed", [0, 7])
def test_show_grid_png(two_item_store: Path, tmp_path: Path, seed: int) -> None:
    """A sheet of every item (so whatever the seed) holds them in order, at the places the
    grid arithmetic gives: a row of two half-size drawings of 968 x 554, 16 px apart and from
    the edges; the 448 panel of each is the item's pixel_values levels."""
    dataset = PrebakedDataset(two_item_store)
    assert len(dataset) == 2
    out = tmp_path / "grid.png"
    code, output = invoke(
        "show", str(two_item_store), "--grid", "2", "--seed", str(seed), "--out", str(out)
    )
    assert code == 0, output
    with Image.open(out) as image:
        assert image.size == (2 * 968 + 3 * 16, 554 + 2 * 16)
        pixels = np.asarray(image).astype(np.int64)
    for position in range(2):
        item = dataset[position]
        x, y = 16 + position * (968 + 16), 16
        right = pixels[y : y + 448, x + 512 + 8 : x + 512 + 8 + 448]
        keep = off_grid(448, item["prompt_masks"].numpy(), margin=2)
        assert keep.sum() > 50_000
        assert np.array_equal(right[keep], levels(item["pixel_values"])[keep].astype(np.int64))


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


@pytest.mark.parametrize(
    ("count", "size"),
    [  # columns ceil(sqrt(n)), rows ceil(n / columns); tiles 968 x 554, 16 px gaps
        (1, (968 + 2 * 16, 554 + 2 * 16)),
        (2, (2 * 968 + 3 * 16, 554 + 2 * 16)),
        (4, (2 * 968 + 3 * 16, 2 * 554 + 3 * 16)),
        (5, (3 * 968 + 4 * 16, 2 * 554 + 3 * 16)),
        (9, (3 * 968 + 4 * 16, 3 * 554 + 4 * 16)),
        (10, (4 * 968 + 5 * 16, 3 * 554 + 4 * 16)),
    ],
)
def test_sheet_sizes(count: int, size: tuple[int, int]) -> None:
    assert sheet_size(count) == size
    assert tile_size(0.5) == (968, 554) and tile_size(1.0) == TILE


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
