"""An independent reference for every stored value, written from REFERENCE.md section 4 with
PIL, torch and PyAV directly (none of prebake's transforms or sources)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
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
