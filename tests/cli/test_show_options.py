"""`prebake show`: the format follows --out, --grid stays readable, --video/--frame/--masklet
pick items, and a stretched 1024 panel says so (issue 14, item 8).

Expected values come from the sample's definition, Pillow, zarr-python and the sheet arithmetic
written out here, not from `prebake.show`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers.stores import video_ids
from PIL import Image, ImageFont
from typer.testing import CliRunner

from prebake.cli import app
from prebake.show import max_grid

TILE = (1024 + 16 + 2 * 448, 1024 + 84)  # one item: 1024 panel | 16 gap | 448 x 2; caption 84
BACKGROUND = (24, 24, 24)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def item_index(store: Path, video_id: str, frame_index: int, masklet_id: int) -> int:
    """The store's item of (video, frame, masklet), found in the tables with zarr-python."""
    root = zarr.open_group(store, mode="r", zarr_format=3)
    video = video_ids(root).index(video_id)
    found = np.flatnonzero(
        (root["items/video"][:] == video)  # type: ignore[index, operator]
        & (root["items/frame_index"][:] == frame_index)  # type: ignore[index, operator]
        & (root["items/masklet_id"][:] == masklet_id)  # type: ignore[index, operator]
    )
    assert len(found) == 1
    return int(found[0])


# -- the format follows --out -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.JPEG", "JPEG"), ("a.webp", "WEBP")],
)
def test_format_follows_the_extension(
    split_store: Path, tmp_path: Path, name: str, expected: str
) -> None:
    out = tmp_path / name
    code, output = invoke("show", str(split_store), "--out", str(out))
    assert code == 0, output
    with Image.open(out) as image:
        assert image.format == expected and image.size == TILE
        drawn = np.asarray(image.convert("RGB")).astype(np.int64)
    reference = tmp_path / "reference.png"
    assert invoke("show", str(split_store), "--out", str(reference))[0] == 0
    lossless = np.asarray(Image.open(reference)).astype(np.int64)
    assert np.abs(drawn - lossless).mean() < 3  # the same drawing (lossy formats: close)


@pytest.mark.parametrize("name", ["a.gif", "a.txt", "preview"])
def test_other_extensions_are_refused(split_store: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    code, output = invoke("show", str(split_store), "--out", str(out))
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "cannot tell the image format" in output and ".png, .jpg, .jpeg or .webp" in output
    assert not out.exists()


# -- --grid stays readable ------------------------------------------------------------------------


def largest_readable_grid(max_side: int) -> int:
    """The largest N whose contact sheets of 1..N half-size tiles (968 x 554, 16 px apart and
    from the edges, ceil(sqrt(n)) columns) stay under Pillow's decompression-bomb limit
    (89,478,485 pixels) and within `max_side` a side."""
    n = 0
    while True:
        count = n + 1
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        width, height = columns * 968 + (columns + 1) * 16, rows * 554 + (rows + 1) * 16
        if width * height > 89_478_485 or max(width, height) > max_side:
            return n
        n = count


def test_grid_limit(split_store: Path, tmp_path: Path) -> None:
    limit = largest_readable_grid(16_383)  # WebP's largest side: the smallest of the three
    assert limit == largest_readable_grid(65_535) == 156  # the pixel limit binds first
    assert {max_grid(name) for name in ("PNG", "JPEG", "WEBP")} == {limit}
    out = tmp_path / "sheet.png"
    code, output = invoke("show", str(split_store), "--grid", str(limit + 1), "--out", str(out))
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert f"at most {limit} items" in output and not out.exists()
    assert f"({limit} items)" in " ".join(invoke("show", "--help")[1].split())


# -- picking items ----------------------------------------------------------------------------


def test_pick_draws_the_item_it_names(split_store: Path, tmp_path: Path) -> None:
    index = item_index(split_store, "sav_950002", 8, 0)  # annotated frame t=2: 24 fps index 8
    picked, named = tmp_path / "picked.png", tmp_path / "named.png"
    code, output = invoke(
        "show", str(split_store), "--video", "sav_950002", "--frame", "8", "--masklet", "0",
        "--out", str(picked),
    )  # fmt: skip
    assert code == 0, output
    assert invoke("show", str(split_store), "--item", str(index), "--out", str(named))[0] == 0
    assert np.array_equal(np.asarray(Image.open(picked)), np.asarray(Image.open(named)))


def test_pick_with_grid_draws_only_the_picked(split_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    code, output = invoke(
        "show", str(split_store), "--video", "sav_950002", "--grid", "9", "--out", str(out)
    )
    assert code == 0, output
    with Image.open(out) as image:  # sav_950002's 4 items: 2 columns, 2 rows of 968 x 554
        assert image.size == (2 * 968 + 3 * 16, 2 * 554 + 3 * 16)


@pytest.mark.parametrize(
    ("pick", "message"),
    [
        (
            ["--video", "sav_999"],
            "no video 'sav_999' in the store (it holds sav_950001, sav_950002, sav_950003;",
        ),
        (["--video", "sav_950003"], "video sav_950003 has no items (it failed: "),
        (
            ["--video", "sav_950001", "--frame", "5"],
            "no item at frame 5 of video sav_950001 (its annotated frames: 0, 4, 8)",
        ),
        (["--frame", "12", "--masklet", "3"], "no masklet 3 at frame 12 (masklets there: 0)"),
        (["--frame", "13"], "no item at frame 13 (its annotated frames: 0, 4, 8, 12)"),
        (["--item", "0", "--video", "sav_950001"], "give --item alone"),
    ],
)
def test_an_empty_pick_is_one_line(
    split_store: Path, tmp_path: Path, pick: list[str], message: str
) -> None:
    out = tmp_path / "x.png"
    code, output = invoke("show", str(split_store), *pick, "--out", str(out))
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert message in output and not out.exists()


# -- a stretched 1024 panel says so ---------------------------------------------------------------


def caption_ink_end(path: Path) -> int:
    """The rightmost drawn column of the caption's first line under the 1024 panel."""
    pixels = np.asarray(Image.open(path))[1024 + 4 : 1024 + 4 + 28, :1024]
    ink = (pixels != BACKGROUND).any(axis=-1).any(axis=0)
    return int(np.flatnonzero(ink).max())


@pytest.mark.parametrize(
    ("video_id", "note"),
    [
        ("sav_950001", ", stretched from 96x64 as SAM 2 sees it"),  # the sample's 96 x 64
        ("sav_950002", ""),  # 64 x 64: square, nothing stretched
    ],
)
def test_a_stretched_panel_says_so(
    split_store: Path, tmp_path: Path, video_id: str, note: str
) -> None:
    out = tmp_path / f"{video_id}.png"
    code, output = invoke("show", str(split_store), "--video", video_id, "--out", str(out))
    assert code == 0, output
    expected = f"g_pixel_values 1024 + masks (magenta){note}"
    width = ImageFont.load_default(size=20).getlength(expected)
    assert abs(caption_ink_end(out) - (6 + width)) <= 3


def test_a_partial_store_names_only_the_fields_it_draws(loop1_store: Path, tmp_path: Path) -> None:
    """A Loop-1 store holds no 1024 field: the 1024 panel's caption says so (no stretch note,
    no masks named)."""
    out = tmp_path / "loop1.png"
    code, output = invoke("show", str(loop1_store), "--video", "sav_900001", "--out", str(out))
    assert code == 0, output
    width = ImageFont.load_default(size=20).getlength("no 1024 fields in this store")
    assert abs(caption_ink_end(out) - (6 + width)) <= 3
