"""`prebake show`: an image a person can trust at a glance.

Each item is drawn as two panels side by side: the 1024 SAM 2 input (`g_pixel_values`) with its
ground-truth mask (`masks`) overlaid, and the 448 InternVL input (`pixel_values`, un-normalized
to 8-bit levels, enlarged 2x by pixel repetition so nothing is resampled) with the 16 x 16
prompt grid (`prompt_masks`) drawn over it; a caption names the video, frame and masklet, and
says when the 1024 panel is a non-square frame stretched to a square (as SAM 2 sees it).
`grid=N` draws N random items at half size on a contact sheet; `video`, `frame` and `masklet`
pick the items drawn. The file's format follows its extension (`OUTPUT_FORMATS`). Pillow only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image, ImageDraw, ImageFont, features

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
# The formats written, by extension (Pillow's names), with the options each is saved with.
OUTPUT_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 92}),
    ".jpeg": ("JPEG", {"quality": 92}),
    ".webp": ("WEBP", {"quality": 90}),
}
# A readable image: at most Pillow's default decompression-bomb limit in pixels (past it Pillow
# warns on opening, and at twice it refuses), and within the format's largest side.
MAX_SHEET_PIXELS = 89_478_485
MAX_SIDE = {"PNG": 2**31 - 1, "JPEG": 65_535, "WEBP": 16_383}


def tile_size(scale: float) -> tuple[int, int]:
    """(width, height) of one item's drawing at `scale` (1 for --item, 0.5 on a contact sheet)."""
    return round((G_SIDE + GAP + PIXEL_SIDE) * scale), round((G_SIDE + CAPTION) * scale)


def sheet_size(count: int) -> tuple[int, int]:
    """(width, height) of a contact sheet of `count` items."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    width, height = tile_size(0.5)
    return columns * width + (columns + 1) * GAP, rows * height + (rows + 1) * GAP


def output_format(out: Path) -> tuple[str, dict[str, Any]]:
    """(Pillow format, save options) for `out`'s extension; PrebakeError for any other."""
    suffix = out.suffix.lower()
    written = {ext: entry for ext, entry in OUTPUT_FORMATS.items() if _can_write(entry[0])}
    if suffix not in written:
        named = f"extension {out.suffix!r}" if out.suffix else "no extension"
        raise PrebakeError(
            f"{out}: cannot tell the image format ({named}); end the name in "
            f"{', '.join(list(written)[:-1])} or {list(written)[-1]}"
        )
    return written[suffix]


def _can_write(image_format: str) -> bool:
    return image_format != "WEBP" or bool(features.check("webp"))  # Pillow built without libwebp


def sheet_fits(count: int, image_format: str) -> bool:
    """Whether a contact sheet of `count` items is a readable image in `image_format`."""
    width, height = sheet_size(count)
    return width * height <= MAX_SHEET_PIXELS and max(width, height) <= MAX_SIDE[image_format]


def max_grid(image_format: str) -> int:
    """The largest N for which every contact sheet of 1..N items is a readable image."""
    count = 1
    while sheet_fits(count + 1, image_format):
        count += 1
    return count


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
    items = store.items
    frame_row, mask_row = int(items["frame_row"][item]), int(items["mask_row"][item])
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
    lines = caption_lines(store, item, mask, prompt)
    font = _font(max(10, round(20 * scale)))
    draw = ImageDraw.Draw(tile)
    line_height = round(CAPTION * scale / 3)
    for number, (left_text, right_text) in enumerate(lines):
        y = g_side + round(4 * scale) + number * line_height
        draw.text((round(6 * scale), y), left_text, fill=(235, 235, 235), font=font)
        if right_text:
            draw.text((g_side + gap, y), right_text, fill=(235, 235, 235), font=font)
    return tile


def caption_lines(
    store: _Store, item: int, mask: np.ndarray | None, prompt: np.ndarray | None
) -> list[tuple[str, str]]:
    """The caption of an item's drawing: three lines, each (under the 1024 panel, under the
    448 panel). A non-square frame is noted as stretched, with its original size."""
    items, videos = store.items, store.videos
    frame_row, mask_row = int(items["frame_row"][item]), int(items["mask_row"][item])
    video = int(items["video"][item])
    kind = store.attrs["masklet_types"][int(items["masklet_type"][item])]
    frame_index = int(items["frame_index"][item])
    annotated = frame_row - int(videos["frame_row"][video])
    width, height = int(videos["width"][video]), int(videos["height"][video])
    stretched = f", stretched from {width}x{height} as SAM 2 sees it" if width != height else ""

    def held(*fields: tuple[str, str]) -> str:
        """The labels of the fields (name, label) the store holds, joined."""
        return " + ".join(label for name, label in fields if name in store.readers)

    drawn = held(("g_pixel_values", "g_pixel_values 1024"), ("masks", "masks (magenta)"))
    pixel = held(
        ("pixel_values", f"pixel_values 448 un-normalized, x{PIXEL_ZOOM}"),
        ("prompt_masks", "prompt_masks 16x16 (yellow)"),
    )
    return [
        (
            drawn + stretched if drawn else "no 1024 fields in this store",
            pixel or "no 448 fields in this store",
        ),
        (
            f"{videos['video_id'][video]}  frame {frame_index} (annotated t={annotated})  masklet {kind} {int(items['masklet_id'][item])}  item {item}",
            "",
        ),
        (
            f"area {int(items['area'][item])} px of {width}x{height}; "
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


def pick_items(
    store: _Store, video: str | None = None, frame: int | None = None, masklet: int | None = None
) -> np.ndarray:
    """The items (int64, store order) of `video` (id), at `frame` (24 fps frame index) and of
    masklet id `masklet`, each None for any. PrebakeError naming the first that matched nothing
    and what there is instead."""
    items, videos = store.items, store.videos
    chosen = np.arange(len(items["mask_row"]), dtype=np.int64)
    where = ""
    if video is not None:
        ids = videos["video_id"].tolist()
        if video not in ids:
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            raise StoreError(
                f"{store.path}: no video {video!r} in the store (it holds {shown}; "
                "prebake info --videos lists them)"
            )
        row = ids.index(video)
        chosen = chosen[items["video"][chosen] == row]
        if not len(chosen):
            failures = {f.get("video_id"): f.get("reason") for f in store.attrs.get("failures", [])}
            why = f"it failed: {failures[video]}" if video in failures else "no masklets baked"
            raise StoreError(f"{store.path}: video {video} has no items ({why})")
        where = f" of video {video}"
    if frame is not None:
        at = chosen[items["frame_index"][chosen] == frame]
        if not len(at):
            there = _few(np.unique(items["frame_index"][chosen]))
            raise StoreError(
                f"{store.path}: no item at frame {frame}{where} (its annotated frames: {there})"
            )
        chosen, where = at, f" at frame {frame}{where}"
    if masklet is not None:
        of = chosen[items["masklet_id"][chosen] == masklet]
        if not len(of):
            there = _few(np.unique(items["masklet_id"][chosen]))
            raise StoreError(
                f"{store.path}: no masklet {masklet}{where or ' in the store'} (masklets there: {there})"
            )
        chosen = of
    return chosen


def _few(values: np.ndarray, shown: int = 10) -> str:
    listed = ", ".join(str(int(value)) for value in values[:shown])
    return listed + (f" and {len(values) - shown} more" if len(values) > shown else "")


def render_preview(
    path: str | Path,
    out: str | Path,
    *,
    item: int | None = None,
    grid: int | None = None,
    seed: int = 0,
    video: str | None = None,
    frame: int | None = None,
    masklet: int | None = None,
) -> Path:
    """Draw one item or a contact sheet of `grid` random items into `out`; return its path.

    The items are those `video`, `frame` (24 fps index) and `masklet` (id) pick (default: all);
    one item is the first picked, or `item` (an index into the store, not combined with picks).
    The format follows `out`'s extension (`OUTPUT_FORMATS`). Raises PrebakeError (one line) for
    an unknown extension, a grid past `max_grid`, a pick that matches nothing, a missing item,
    an unreadable store or an unwritable file."""
    out = Path(out)
    image_format, save_options = output_format(out)
    picking = any(value is not None for value in (video, frame, masklet))
    if item is not None and (grid is not None or picking):
        raise PrebakeError("give --item alone: not with --grid, --video, --frame or --masklet")
    if grid is not None:
        if grid < 1:
            raise PrebakeError(f"grid must be at least 1, not {grid}")
        limit = max_grid(image_format)
        if grid > limit:
            width, height = sheet_size(grid)
            raise PrebakeError(
                f"--grid {grid} would draw a {width} x {height} px sheet; a readable "
                f"{image_format} image holds at most {limit} items (under {MAX_SHEET_PIXELS} "
                f"pixels, Pillow's decompression-bomb limit, and {MAX_SIDE[image_format]} px "
                "a side)"
            )
    store = _open(Path(path))
    count = len(store.items["mask_row"])
    if count == 0:
        raise StoreError(f"{path}: the store has no items to show")
    picks = pick_items(store, video, frame, masklet)
    if grid is None:
        chosen = int(picks[0]) if item is None else item
        if not 0 <= chosen < count:
            raise StoreError(
                f"{path}: item {chosen} does not exist (the store has items 0..{count - 1})"
            )
        image = _render_item(store, chosen, 1.0)
    else:
        drawn = np.sort(
            np.random.default_rng(seed).choice(picks, size=min(grid, len(picks)), replace=False)
        )
        image = Image.new("RGB", sheet_size(len(drawn)), BACKGROUND)
        columns = math.ceil(math.sqrt(len(drawn)))
        width, height = tile_size(0.5)
        for position, chosen in enumerate(drawn.tolist()):
            row, column = divmod(position, columns)
            image.paste(
                _render_item(store, chosen, 0.5),
                (GAP + column * (width + GAP), GAP + row * (height + GAP)),
            )
    try:
        image.save(out, format=image_format, **save_options)
    except OSError as error:
        raise PrebakeError(
            f"{out}: cannot write the {image_format} ({error.strerror or error})"
        ) from None
    return out
