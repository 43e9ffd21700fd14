"""What a store must hold, computed from the source alone (tests/reference: OpenCV, PIL,
torch, pycocotools), and the check of a built store against it, item by item: each stored row
(read with zarr-python) and each served item (`PrebakedDataset`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from helpers.stores import video_ids as read_video_ids

import reference
from prebake.reader import PrebakedDataset

Expected = dict[tuple[str, int, str, int], tuple[object, np.ndarray]]


def expected_items(
    src: Path, layout: str, kinds: tuple[str, ...], exclude: frozenset[str] = frozenset()
) -> tuple[dict[tuple[str, int], object], Expected]:
    """From the source alone: each annotated frame's image and each non-empty item's mask
    (videos in `exclude`, refused by the build, left out)."""
    frames: dict[tuple[str, int], object] = {}
    items: Expected = {}
    if layout == "png":
        for video_dir in sorted((src / "Annotations_6fps").iterdir()):
            objects = sorted(video_dir.iterdir(), key=lambda p: int(p.name))
            indices = sorted({int(p.stem) for obj in objects for p in obj.glob("*.png")})
            for index in indices:
                image = reference.jpeg_frame(
                    src / "JPEGImages_24fps" / video_dir.name / f"{index:05d}.jpg"
                )
                frames[video_dir.name, index] = image
                for obj in objects:
                    mask = reference.png_mask(obj / f"{index:05d}.png", (image.height, image.width))
                    if mask.any():
                        items[video_dir.name, index, "manual", int(obj.name)] = (image, mask)
        return frames, items
    for manual in sorted(src.rglob("*_manual.json")):
        video_id = manual.name.removesuffix("_manual.json")
        if video_id in exclude:
            continue
        per_kind = {kind: manual.with_name(f"{video_id}_{kind}.json") for kind in kinds}
        decoded = {
            kind: reference.json_masks(path) for kind, path in per_kind.items() if path.is_file()
        }
        if not decoded:
            continue
        count = len(next(iter(decoded.values()))[1])
        indices = [4 * t for t in range(count)]
        if layout == "train":
            images = reference.mp4_frames(manual.with_name(f"{video_id}.mp4"), indices)
        else:
            folder = next(src.rglob(f"{video_id}/00000.jpg")).parent
            images = {i: reference.jpeg_frame(folder / f"{i:05d}.jpg") for i in indices}
        for t, index in enumerate(indices):
            frames[video_id, index] = images[index]
            for kind, (ids, masks) in decoded.items():
                for k, masklet_id in enumerate(ids):
                    if masks[t][k].any():
                        items[video_id, index, kind, masklet_id] = (images[index], masks[t][k])
    return frames, items


def assert_store_matches(
    store: Path,
    frames: dict[tuple[str, int], object],
    items: Expected,
    *,
    sample_every: int = 1,
    pillow: int = 13,
) -> None:
    """Every item of `store` equals the reference (resized as Pillow `pillow`), every
    `sample_every`th: the rows as stored (a v2 store's pixel_values: the uint8 448 resize) and
    the tensors `PrebakedDataset` serves (pixel_values: the float32 normalized image)."""
    root = zarr.open_group(store, mode="r")
    video_ids = read_video_ids(root)
    version = root.attrs["prebake"]["schema_version"]
    served = PrebakedDataset(store)
    frame_video, frame_index = root["frames/video"][:], root["frames/frame_index"][:]
    stored_frames = {
        (str(video_ids[v]), int(i)): row
        for row, (v, i) in enumerate(zip(frame_video, frame_index, strict=True))
        if v >= 0
    }
    assert sorted(stored_frames) == sorted(frames)
    kinds = root.attrs["prebake"]["masklet_types"]
    table = {
        name: root[f"items/{name}"][:]
        for name in (
            "video",
            "frame_index",
            "masklet_type",
            "masklet_id",
            "frame_row",
            "mask_row",
            "area",
            "prompt_cells",
        )
    }
    keys = [
        (str(video_ids[v]), int(i), kinds[int(kind)], int(m))
        for v, i, kind, m in zip(
            table["video"],
            table["frame_index"],
            table["masklet_type"],
            table["masklet_id"],
            strict=True,
        )
    ]
    assert sorted(keys) == sorted(items)
    assert len(set(keys)) == len(keys)
    images: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for position, key in enumerate(keys):
        assert table["frame_row"][position] == stored_frames[key[:2]]
        if position % sample_every:
            continue
        image, mask = items[key]
        row, mask_row = int(table["frame_row"][position]), int(table["mask_row"][position])
        if row not in images:  # each frame's reference resizes once, for all its items
            images[row] = (
                reference.g_pixel_values(image, pillow),
                reference.pixel_levels(image, pillow),
                reference.pixel_values(image, pillow),
            )
        g, levels, pixel = images[row]
        np.testing.assert_array_equal(root["g_pixel_values"][row], g)
        stored_pixel = levels if version >= 2 else pixel
        assert_bits_equal(np.asarray(root["pixel_values"][row]), stored_pixel, "pixel_values")
        np.testing.assert_array_equal(root["masks"][mask_row], reference.masks(mask))
        np.testing.assert_array_equal(root["prompt_masks"][mask_row], reference.prompt_masks(mask))
        assert table["area"][position] == int(mask.sum())
        assert table["prompt_cells"][position] == int(reference.prompt_masks(mask).sum())
        assert set(np.unique(root["masks"][mask_row])) <= {0, 1}
        item = served[position]  # the dataset serves the items in the table's order
        assert (item["video_id"], item["frame_index"]) == key[:2]
        assert_bits_equal(item["pixel_values"].numpy(), pixel, "served pixel_values")
        assert_bits_equal(item["g_pixel_values"].numpy(), g, "served g_pixel_values")
        expected_mask = reference.masks(mask).astype(np.float32)
        assert_bits_equal(item["masks"].numpy(), expected_mask, "served masks")
        prompt = reference.prompt_masks(mask)
        assert_bits_equal(item["prompt_masks"].numpy(), prompt, "served prompt_masks")


def assert_bits_equal(found: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Same dtype, shape and bytes (a float's bits, not only its value)."""
    assert found.dtype == expected.dtype and found.shape == expected.shape, (
        what,
        found.dtype,
        found.shape,
        expected.dtype,
        expected.shape,
    )
    assert found.tobytes() == expected.tobytes(), what
