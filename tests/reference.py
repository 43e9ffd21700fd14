"""An independent reference for every stored value, written from REFERENCE.md section 4 with
PIL, torch and PyAV directly (none of prebake's transforms or sources)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
import zarr
from PIL import Image
from pycocotools import mask as mask_utils

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def mp4_frames(path: Path, indices: list[int]) -> dict[int, Image.Image]:
    """Decoded RGB frames at the given 24 fps indices (PyAV, as REFERENCE.md section 3)."""
    wanted, frames = set(indices), {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames[index] = Image.fromarray(frame.to_ndarray(format="rgb24"))
    return frames


def jpeg_frame(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def g_pixel_values(image: Image.Image) -> np.ndarray:
    """DirectResize: `np.array(img.resize((1024, 1024)))` (Pillow's default filter), HWC -> CHW."""
    return np.array(image.resize((1024, 1024))).transpose(2, 0, 1)


def pixel_values(image: Image.Image) -> np.ndarray:
    """torchvision's Resize((448, 448), BICUBIC) -> ToTensor -> Normalize, spelled out in torch."""
    resized = image.resize((448, 448), Image.BICUBIC)
    tensor = (
        torch.from_numpy(np.array(resized)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    )
    mean = torch.as_tensor(MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(STD, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std).numpy()


def prompt_masks(mask: np.ndarray) -> np.ndarray:
    """Osprey: F.interpolate(mask.float(), size=(16, 16), mode='nearest'), cell on if nonzero."""
    resized = F.interpolate(
        torch.from_numpy(mask)[None, None].float(), size=(16, 16), mode="nearest"
    )
    return (resized[0, 0] > 0).numpy()


def masks(mask: np.ndarray) -> np.ndarray:
    """The seed's ground truth: Pillow NEAREST to 1024 x 1024, exactly 0 and 1."""
    return np.array(
        Image.fromarray((mask > 0).astype(np.uint8)).resize((1024, 1024), Image.NEAREST)
    )


def json_masks(path: Path) -> tuple[list[int], list[list[np.ndarray]]]:
    """(masklet ids, decoded masks[t][k]) of an SA-V annotation file, via pycocotools."""
    with path.open() as handle:
        data = json.load(handle)
    decoded = [[mask_utils.decode(rle) for rle in frame] for frame in data["masklet"]]
    return data["masklet_id"], decoded


def png_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if not path.is_file():
        return np.zeros(shape, dtype=np.uint8)
    return (np.array(Image.open(path)) > 0).astype(np.uint8)


# -- a store against the reference, item by item ---------------------------------------------

Expected = dict[tuple[str, int, str, int], tuple[object, np.ndarray]]


def expected_items(
    src: Path, layout: str, kinds: tuple[str, ...]
) -> tuple[dict[tuple[str, int], object], Expected]:
    """From the source alone: each annotated frame's image and each non-empty item's mask."""
    frames: dict[tuple[str, int], object] = {}
    items: Expected = {}
    if layout == "png":
        for video_dir in sorted((src / "Annotations_6fps").iterdir()):
            objects = sorted(video_dir.iterdir(), key=lambda p: int(p.name))
            indices = sorted({int(p.stem) for obj in objects for p in obj.glob("*.png")})
            for index in indices:
                image = jpeg_frame(src / "JPEGImages_24fps" / video_dir.name / f"{index:05d}.jpg")
                frames[video_dir.name, index] = image
                for obj in objects:
                    mask = png_mask(obj / f"{index:05d}.png", (image.height, image.width))
                    if mask.any():
                        items[video_dir.name, index, "manual", int(obj.name)] = (image, mask)
        return frames, items
    for manual in sorted(src.rglob("*_manual.json")):
        video_id = manual.name.removesuffix("_manual.json")
        per_kind = {kind: manual.with_name(f"{video_id}_{kind}.json") for kind in kinds}
        decoded = {kind: json_masks(path) for kind, path in per_kind.items() if path.is_file()}
        if not decoded:
            continue
        count = len(next(iter(decoded.values()))[1])
        indices = [4 * t for t in range(count)]
        if layout == "train":
            images = mp4_frames(manual.with_name(f"{video_id}.mp4"), indices)
        else:
            folder = next(src.rglob(f"{video_id}/00000.jpg")).parent
            images = {i: jpeg_frame(folder / f"{i:05d}.jpg") for i in indices}
        for t, index in enumerate(indices):
            frames[video_id, index] = images[index]
            for kind, (ids, masks) in decoded.items():
                for k, masklet_id in enumerate(ids):
                    if masks[t][k].any():
                        items[video_id, index, kind, masklet_id] = (images[index], masks[t][k])
    return frames, items


def assert_store_matches(
    store: Path, frames: dict[tuple[str, int], object], items: Expected, *, sample_every: int = 1
) -> None:
    root = zarr.open_group(store, mode="r")
    video_ids = root["videos/video_id"][:]
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
    for position, key in enumerate(keys):
        assert table["frame_row"][position] == stored_frames[key[:2]]
        if position % sample_every:
            continue
        image, mask = items[key]
        row, mask_row = int(table["frame_row"][position]), int(table["mask_row"][position])
        np.testing.assert_array_equal(root["g_pixel_values"][row], g_pixel_values(image))
        np.testing.assert_array_equal(root["pixel_values"][row], pixel_values(image))
        np.testing.assert_array_equal(root["masks"][mask_row], masks(mask))
        np.testing.assert_array_equal(root["prompt_masks"][mask_row], prompt_masks(mask))
        assert table["area"][position] == int(mask.sum())
        assert table["prompt_cells"][position] == int(prompt_masks(mask).sum())
        assert set(np.unique(root["masks"][mask_row])) <= {0, 1}
