"""An independent reference for every stored value, written from REFERENCE.md sections 3 and 4
with OpenCV, PIL, torch and pycocotools directly (none of prebake's decoding, transforms or
sources): mp4 frames as SAM 2 and Sa2VA read them (`cv2.VideoCapture` + BGR2RGB), resized by
the Pillow the trainer runs (13, installed; or the real Pillow 12, tests/reference/pillow12.py)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from reference.pillow12 import resize_with_pillow12

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def opencv_frames(path: Path) -> list[np.ndarray]:
    """Every frame of the video, as SAM 2's `sav_utils` reads it: uint8 (H, W, 3) RGB."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def mp4_frames(path: Path, indices: list[int]) -> dict[int, Image.Image]:
    """RGB frames at the given 24 fps indices, decoded by OpenCV (REFERENCE.md section 3)."""
    frames = opencv_frames(path)
    return {index: Image.fromarray(frames[index]) for index in indices if index < len(frames)}


def jpeg_frame(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def resized(images: list[Image.Image], size: tuple[int, int], pillow: int) -> list[np.ndarray]:
    """`image.resize(size, BICUBIC)` of each image as Pillow `pillow` (13 or 12) computes it."""
    if pillow == 13:
        return [np.array(image.resize(size, Image.BICUBIC)) for image in images]
    assert pillow == 12, pillow
    return resize_with_pillow12([np.asarray(image) for image in images], [size] * len(images))


def g_pixel_values(image: Image.Image, pillow: int = 13) -> np.ndarray:
    """DirectResize: `np.array(img.resize((1024, 1024)))` (Pillow's default filter), HWC -> CHW."""
    return g_pixel_values_of(resized([image], (1024, 1024), pillow)[0])


def g_pixel_values_of(resized_1024: np.ndarray) -> np.ndarray:
    return resized_1024.transpose(2, 0, 1)


def pixel_values(image: Image.Image, pillow: int = 13) -> np.ndarray:
    """torchvision's Resize((448, 448), BICUBIC) -> ToTensor -> Normalize, spelled out in torch."""
    return pixel_values_of(resized([image], (448, 448), pillow)[0])


def pixel_levels(image: Image.Image, pillow: int = 13) -> np.ndarray:
    """The 448 resize before ToTensor, HWC -> CHW uint8 (what a v2 store holds)."""
    return resized([image], (448, 448), pillow)[0].transpose(2, 0, 1)


def normalization_table() -> np.ndarray:
    """float32 (3, 256): ToTensor -> Normalize of every level v of every channel, in torch:
    `(torch.arange(256).float().div(255) - mean) / std`."""
    levels = torch.arange(256).float().div(255)
    mean = torch.as_tensor(MEAN, dtype=torch.float32).view(-1, 1)
    std = torch.as_tensor(STD, dtype=torch.float32).view(-1, 1)
    return ((levels[None] - mean) / std).numpy()


def pixel_values_of(resized_448: np.ndarray) -> np.ndarray:
    """ToTensor -> Normalize of an already resized uint8 (448, 448, 3) image."""
    tensor = (
        torch.from_numpy(np.array(resized_448))
        .permute(2, 0, 1)
        .contiguous()
        .to(torch.float32)
        .div(255)
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
