"""`prebake show`: a PNG a person can trust at a glance.

Each item is drawn as two panels side by side: the 1024 SAM 2 input (`g_pixel_values`) with its
ground-truth mask (`masks`) overlaid, and the 448 InternVL input (`pixel_values`, un-normalized
to 8-bit levels, enlarged 2x by pixel repetition so nothing is resampled) with the 16 x 16
prompt grid (`prompt_masks`) drawn over it; a caption names the video, frame and masklet.
`grid=N` draws N random items at half size on a contact sheet. Pillow only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image, ImageDraw, ImageFont

from prebake import transforms
from prebake.errors import PrebakeError, StoreError
from prebake.store.columns import read_column
from prebake.store.layout import StoreDir
from prebake.store.rows import RowReader
from prebake.store.schema import DATA_ARRAYS, array_specs, fields_of, store_version, table_columns

G_SIDE = transforms.G_SIZE  # left panel side at full scale
PIXEL_ZOOM = 2  # the 448 image is repeated 2x: both panels about the same height
PIXEL_SIDE = transforms.PIXEL_SIZE * PIXEL_ZOOM
GAP = 16
CAPTION = 84  # three lines of text under the panels, at full scale
MASK_COLOR = (255, 40, 200)  # magenta: rare in natural scenes
MASK_ALPHA = 0.45
PROMPT_COLOR = (255, 210, 0)
BACKGROUND = (24, 24, 24)
VIDEO_COLUMNS = ("video_id", "width", "height", "frame_row")


def tile_size(scale: float) -> tuple[int, int]:
    """(width, height) of one item's drawing at `scale` (1 for --item, 0.5 on a contact sheet)."""
    return round((G_SIDE + GAP + PIXEL_SIDE) * scale), round((G_SIDE + CAPTION) * scale)


def sheet_size(count: int) -> tuple[int, int]:
    """(width, height) of a contact sheet of `count` items."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    width, height = tile_size(0.5)
    return columns * width + (columns + 1) * GAP, rows * height + (rows + 1) * GAP


@dataclass
class _Store:
    path: Path
    attrs: dict[str, Any]
    items: dict[str, np.ndarray]
    videos: dict[str, np.ndarray]
    readers: dict[str, RowReader]  # of the arrays the store holds


def _open(path: Path) -> _Store:
    store = StoreDir(path)
    attrs = store.require_complete()
    version = store_version(attrs)
    try:
        specs = array_specs(version)
        root = zarr.open_group(path, mode="r")
        items = {
            name: read_column(root, specs[f"items/{name}"])
            for name in table_columns("items", version)
        }
        videos = {name: read_column(root, specs[f"videos/{name}"]) for name in VIDEO_COLUMNS}
    except Exception as error:  # zarr raises many types for a damaged table
        raise StoreError(
            f"{path}: cannot read the tables ({type(error).__name__}); run prebake verify"
        ) from None
    readers = {}
    for name in fields_of(attrs["params"]):
        key = specs[name].rows_per_shard
        assert key is not None
        readers[name] = RowReader(store, specs[name], int(attrs["params"][key]))
    return _Store(path, attrs, items, videos, readers)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _overlay_mask(g: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The 1024 image with the mask filled translucently and its outline opaque."""
    image = g.transpose(1, 2, 0).astype(np.float32)
    on = mask != 0
    color = np.asarray(MASK_COLOR, dtype=np.float32)
    image[on] = image[on] * (1 - MASK_ALPHA) + color * MASK_ALPHA
    edge = np.zeros_like(on)
    edge[:, 1:] |= on[:, 1:] != on[:, :-1]
    edge[1:, :] |= on[1:, :] != on[:-1, :]
    edge &= on
    image[edge] = color
    return Image.fromarray(image.round().astype(np.uint8))


def _levels(pixel: np.ndarray) -> np.ndarray:
    """The 448 image's 8-bit levels: as stored (v2), or un-normalized (v1's float32)."""
    if pixel.dtype == np.uint8:
        return pixel
    mean = np.asarray(transforms.IMAGENET_MEAN, dtype=np.float64)[:, None, None]
    std = np.asarray(transforms.IMAGENET_STD, dtype=np.float64)[:, None, None]
    return np.rint((pixel.astype(np.float64) * std + mean) * 255).clip(0, 255).astype(np.uint8)


def _absent(side: int, name: str) -> Image.Image:
    """A panel for an image the store does not hold (built with --fields)."""
    image = Image.new("RGB", (side, side), BACKGROUND)
    ImageDraw.Draw(image).text(
        (side // 16, side // 2),
        f"{name}: not in this store",
        fill=(160, 160, 160),
        font=_font(max(10, side // 24)),
    )
    return image


def _pixel_panel(pixel: np.ndarray | None, prompt: np.ndarray | None, side: int) -> Image.Image:
    """The 448 image's levels enlarged by repetition, with the prompt grid drawn over it."""
    if pixel is None:
        image = _absent(side, "pixel_values")
    else:
        image = Image.fromarray(np.ascontiguousarray(_levels(pixel).transpose(1, 2, 0)))
        if side != transforms.PIXEL_SIZE:
            image = image.resize((side, side), Image.Resampling.NEAREST)
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    grid = transforms.PROMPT_GRID
    cell = side / grid
    for i in range(grid):
        for j in range(grid):
            if prompt is not None and prompt[i, j]:
                box = (
                    round(j * cell),
                    round(i * cell),
                    round((j + 1) * cell) - 1,
                    round((i + 1) * cell) - 1,
                )
                draw.rectangle(box, fill=(*PROMPT_COLOR, 90), outline=(*PROMPT_COLOR, 255), width=2)
    for k in range(1, grid):
        at = round(k * cell)
        draw.line([(at, 0), (at, side)], fill=(255, 255, 255, 70), width=1)
        draw.line([(0, at), (side, at)], fill=(255, 255, 255, 70), width=1)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def _render_item(store: _Store, item: int, scale: float) -> Image.Image:
    items, videos = store.items, store.videos
    frame_row, mask_row = int(items["frame_row"][item]), int(items["mask_row"][item])
    video = int(items["video"][item])
    readers = store.readers
    pixel, g = (readers[n].read(frame_row) if n in readers else None for n in DATA_ARRAYS[:2])
    prompt, mask = (readers[n].read(mask_row) if n in readers else None for n in DATA_ARRAYS[2:])
    width, height = tile_size(scale)
    tile = Image.new("RGB", (width, height), BACKGROUND)
    g_side, pixel_side, gap = round(G_SIDE * scale), round(PIXEL_SIDE * scale), round(GAP * scale)
    if g is None:
        g = np.asarray(_absent(G_SIDE, "g_pixel_values")).transpose(2, 0, 1)
    left = _overlay_mask(g, np.zeros((G_SIDE, G_SIDE), np.uint8) if mask is None else mask)
    if g_side != G_SIDE:
        left = left.resize((g_side, g_side), Image.Resampling.BOX)
    tile.paste(left, (0, 0))
    tile.paste(_pixel_panel(pixel, prompt, pixel_side), (g_side + gap, 0))
    kind = store.attrs["masklet_types"][int(items["masklet_type"][item])]
    frame_index = int(items["frame_index"][item])
    annotated = frame_row - int(videos["frame_row"][video])
    lines = [
        (
            "g_pixel_values 1024 + masks (magenta)",
            f"pixel_values 448 un-normalized, x{PIXEL_ZOOM} + prompt_masks 16x16 (yellow)",
        ),
        (
            f"{videos['video_id'][video]}  frame {frame_index} (annotated t={annotated})  masklet {kind} {int(items['masklet_id'][item])}  item {item}",
            "",
        ),
        (
            f"area {int(items['area'][item])} px of {int(videos['width'][video])}x{int(videos['height'][video])}; "
            + (
                "no masks in this store"
                if mask is None
                else f"mask {int(np.count_nonzero(mask))} px of 1024x1024"
            )
            + f"; prompt {int(items['prompt_cells'][item])}/256 cells"
            + ("" if prompt is not None else " (no prompt_masks in this store)"),
            f"rows: frame {frame_row}, mask {mask_row}",
        ),
    ]
    font = _font(max(10, round(20 * scale)))
    draw = ImageDraw.Draw(tile)
    line_height = round(CAPTION * scale / 3)
    for number, (left_text, right_text) in enumerate(lines):
        y = g_side + round(4 * scale) + number * line_height
        draw.text((round(6 * scale), y), left_text, fill=(235, 235, 235), font=font)
        if right_text:
            draw.text((g_side + gap, y), right_text, fill=(235, 235, 235), font=font)
    return tile


def render_preview(
    path: str | Path,
    out: str | Path,
    *,
    item: int | None = None,
    grid: int | None = None,
    seed: int = 0,
) -> Path:
    """Draw one item (default item 0) or a contact sheet of `grid` random items; return the PNG path."""
    if item is not None and grid is not None:
        raise PrebakeError("give item or grid, not both")
    store = _open(Path(path))
    count = len(store.items["mask_row"])
    if count == 0:
        raise StoreError(f"{path}: the store has no items to show")
    if grid is None:
        chosen = 0 if item is None else item
        if not 0 <= chosen < count:
            raise StoreError(
                f"{path}: item {chosen} does not exist (the store has items 0..{count - 1})"
            )
        image = _render_item(store, chosen, 1.0)
    else:
        if grid < 1:
            raise PrebakeError(f"grid must be at least 1, not {grid}")
        picks = np.sort(
            np.random.default_rng(seed).choice(count, size=min(grid, count), replace=False)
        )
        image = Image.new("RGB", sheet_size(len(picks)), BACKGROUND)
        columns = math.ceil(math.sqrt(len(picks)))
        width, height = tile_size(0.5)
        for position, chosen in enumerate(picks.tolist()):
            row, column = divmod(position, columns)
            image.paste(
                _render_item(store, chosen, 0.5),
                (GAP + column * (width + GAP), GAP + row * (height + GAP)),
            )
    out = Path(out)
    try:
        image.save(out, format="PNG")
    except OSError as error:
        raise PrebakeError(f"{out}: cannot write the PNG ({error.strerror or error})") from None
    return out
