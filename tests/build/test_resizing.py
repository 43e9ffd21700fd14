"""The torch resizer of a unit (`prebake.build.resizing.DeviceFrames`) against the independent
reference (Pillow 13 and the real Pillow 12, normalization in torch), in batches; its one-line
failures; the normalization table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import reference
import torch
from PIL import Image

from prebake import transforms
from prebake.build import resizing
from prebake.build.resizing import (
    BATCH_FRAMES,
    DeviceError,
    DeviceFrames,
    ImageFields,
    Resizing,
    frame_resizer,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]  # fmt: skip


def noise_frames(width: int, height: int, count: int) -> list[Image.Image]:
    rng = np.random.default_rng([width, height, count])
    return [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for _ in range(count)
    ]


def copied(row: tuple[np.ndarray | None, np.ndarray | None]) -> tuple[Any, Any]:
    return tuple(None if image is None else image.copy() for image in row)  # type: ignore[return-value]


def rows_of(resizer: resizing.FrameResizer, frames: list[Image.Image]) -> list[tuple[Any, Any]]:
    """Every row, copied as it comes (the resizer reuses its buffers batch after batch)."""
    rows = []
    for frame in frames:
        rows += [copied(row) for row in resizer.push(frame)]
    rows += [copied(row) for row in resizer.flush()]
    resizer.close()
    return rows


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rule", [13, 12])
@pytest.mark.parametrize("levels", [True, False], ids=["v2-levels", "v1-float32"])
def test_every_batch_equals_the_reference(device: str, rule: int, levels: bool) -> None:
    """Portrait (the rules differ), tiny and SA-V's average size; a full batch and a partial one;
    pixel_values as schema v2 stores it (uint8 levels) and as v1 does (normalized float32)."""
    images = ImageFields(levels=levels)
    for (width, height), count in [((456, 560), BATCH_FRAMES + 3), ((17, 9), 3), ((1401, 1037), 2)]:
        frames = noise_frames(width, height, count)
        resizer = frame_resizer(
            Resizing("torch", device), "video.mp4", (width, height), rule, images
        )
        assert isinstance(resizer, DeviceFrames)
        rows = rows_of(resizer, frames)
        assert len(rows) == count
        small = reference.resized(frames, (448, 448), rule)
        big = reference.resized(frames, (1024, 1024), rule)
        for i, (pixel, g_pixel) in enumerate(rows):
            assert g_pixel.dtype == np.uint8 and g_pixel.shape == (3, 1024, 1024)
            if levels:
                assert pixel.dtype == np.uint8 and pixel.shape == (3, 448, 448)
                assert np.array_equal(pixel, np.asarray(small[i]).transpose(2, 0, 1))
            else:
                assert pixel.dtype == np.float32 and pixel.shape == (3, 448, 448)
                want = reference.pixel_values_of(small[i])
                assert np.array_equal(pixel.view(np.uint32), want.view(np.uint32))
            assert np.array_equal(g_pixel, reference.g_pixel_values_of(big[i])), (width, i)


def test_only_the_images_a_store_holds_are_made() -> None:
    frames = noise_frames(40, 30, 3)
    for resize in ("pillow", "torch"):
        only_big = ImageFields(pixel_values=False)
        rows = rows_of(frame_resizer(Resizing(resize), "v.mp4", (40, 30), 13, only_big), frames)
        assert [pixel for pixel, _ in rows] == [None] * 3
        none = ImageFields(pixel_values=False, g_pixel_values=False)
        rows = rows_of(frame_resizer(Resizing(resize), "v.mp4", (40, 30), 13, none), frames)
        assert rows == [(None, None)] * 3


def test_the_pillow_path_is_transforms() -> None:
    frames = noise_frames(64, 48, 2)
    rows = rows_of(frame_resizer(Resizing(), "video.mp4", (64, 48), 13), frames)
    for frame, (pixel, g_pixel) in zip(frames, rows, strict=True):
        assert np.array_equal(pixel, transforms.pixel_levels(frame))
        assert np.array_equal(g_pixel, transforms.g_pixel_values(frame))


def test_the_table_holds_the_reference_normalization_of_every_level() -> None:
    levels = np.arange(256, dtype=np.uint8)
    image = np.stack([levels, levels[::-1], np.roll(levels, 7)], axis=-1)[None]  # (1, 256, 3)
    want = reference.pixel_values_of(image)[:, 0, :]  # (3, 256), in torch
    table = transforms.pixel_table()
    got = np.stack([table[c][image[0, :, c]] for c in range(3)])
    assert table.dtype == np.float32 and table.shape == (3, 256)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_a_batch_is_bounded_in_frames_and_bytes() -> None:
    for (width, height), capacity in [
        ((17, 9), BATCH_FRAMES),
        ((1401, 1037), 15),  # 4.4 MB a frame: 64 MiB hold 15
        ((3840, 2160), 2),
        ((8192, 8192), 1),  # past the byte bound: one frame at a time
    ]:
        resizer = DeviceFrames("cpu", "video.mp4", (width, height), 13)
        assert resizer.capacity == capacity
        assert resizer.batch.shape == (capacity, height, width, 3)
        resizer.close()


def test_out_of_memory_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(self: DeviceFrames, n: int) -> None:
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity\nof 80 GiB"
        )

    monkeypatch.setattr(DeviceFrames, "_resize_batch", out_of_memory)
    resizer = DeviceFrames("cpu", "sav_1.mp4", (32, 24), 13)
    assert resizer.push(noise_frames(32, 24, 1)[0]) == []
    with pytest.raises(DeviceError) as raised:
        resizer.flush()
    assert str(raised.value) == (
        "sav_1.mp4: cpu failed resizing 1 frames of 32x24 (out of memory: tried to allocate "
        "1.50 GiB); --retry-failed bakes it again"
    )
    assert resizing._unusable is None  # memory comes back: the worker goes on


def test_a_broken_context_fails_the_video_then_the_worker_exits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def illegal_address(self: DeviceFrames, n: int) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with ...")

    exits: list[int] = []
    monkeypatch.setattr(DeviceFrames, "_resize_batch", illegal_address)
    monkeypatch.setattr(resizing, "context_usable", lambda device: False)
    monkeypatch.setattr(resizing.os, "_exit", exits.append)
    monkeypatch.setattr(resizing, "_unusable", None)
    resizer = DeviceFrames("cpu", "sav_2.mp4", (32, 24), 13)
    resizer.push(noise_frames(32, 24, 1)[0])
    with pytest.raises(DeviceError, match=r"^sav_2\.mp4: cpu failed resizing 1 frames of 32x24 "):
        resizer.flush()
    resizer.close()
    assert resizing._unusable == (
        "cpu: RuntimeError: CUDA error: an illegal memory access was encountered Compile with ..."
    )
    resizing.exit_if_unusable()  # at the start of the worker's next video
    assert exits == [resizing.UNUSABLE_EXIT]


def test_the_resizer_restores_torchs_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        resizer = DeviceFrames("cpu", "video.mp4", (8, 8), 13)
        assert torch.get_num_threads() == 1  # one worker process per core
        resizer.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
