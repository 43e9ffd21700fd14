"""`prebake verify`'s value checks: wrong values with valid checksums (rows re-encoded with
`encode_chunk` and rewritten with `ShardWriter`) are caught without the source, or with it;
honest rows of every scale and of real footage pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.damage import (
    MEAN,
    STD,
    as_stored,
    first_item_rows,
    levels_of,
    normalize,
    problems,
    read_row,
    replace_row,
    run_verify,
)

from prebake import transforms
from prebake.verify import check_frame, check_item, nearest_sources

# -- semantic faults (valid checksums) --------------------------------------------------------


def test_g_pixel_values_made_the_seeds_way(store_copy: Path) -> None:
    """Normalized 448 -> bilinear 1024 -> x255 -> clamp -> uint8: the bug this project was born from."""
    frame_row, _ = first_item_rows(store_copy)
    levels = levels_of(read_row(store_copy, "pixel_values", frame_row))
    pixel = torch.from_numpy(normalize(levels))  # the normalized tensor InternVL is handed
    upsampled = F.interpolate(pixel[None], size=(1024, 1024), mode="bilinear")[0]
    seed_row = (upsampled * 255.0).clamp(0, 255).to(torch.uint8).numpy()
    replace_row(store_copy, "g_pixel_values", frame_row, seed_row)
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1, found
    assert found[0].startswith(f"g_pixel_values row {frame_row} (")
    assert "disagrees with pixel_values" in found[0] and "crc32c" not in found[0]


def test_channels_swapped_between_the_two_image_arrays(store_copy: Path) -> None:
    frame_row, _ = first_item_rows(store_copy)
    g = read_row(store_copy, "g_pixel_values", frame_row)
    replace_row(store_copy, "g_pixel_values", frame_row, np.ascontiguousarray(g[::-1]))
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1 and found[0].startswith(f"g_pixel_values row {frame_row} (")
    assert "swapped" in found[0]


def test_channels_swapped_in_both_image_arrays_caught_with_source(
    store_copy: Path, sample_sources: dict[str, Path]
) -> None:
    """A frame baked as BGR (both arrays from the same swapped frame) is self-consistent: only
    the source can tell. Made exactly as baking the BGR frame would: levels swapped, then the
    reference normalization (the resizes work per channel, so this equals resizing BGR)."""
    frame_row, _ = first_item_rows(store_copy)
    pixel = read_row(store_copy, "pixel_values", frame_row)
    g = read_row(store_copy, "g_pixel_values", frame_row)
    swapped = np.ascontiguousarray(levels_of(pixel)[::-1])
    replace_row(store_copy, "pixel_values", frame_row, as_stored(store_copy, swapped))
    replace_row(store_copy, "g_pixel_values", frame_row, np.ascontiguousarray(g[::-1]))
    code, output = run_verify(store_copy)
    assert code == 0, "without the source a consistent BGR frame is invisible: " + output
    code, output = run_verify(store_copy, "--src", str(sample_sources["train"]), "--samples", "all")
    assert code == 1
    found = problems(output)
    assert len(found) == 2, found
    assert (
        found[0].startswith(f"pixel_values row {frame_row} (")
        and "re-derivation from the source" in found[0]
    )
    assert (
        found[1].startswith(f"g_pixel_values row {frame_row} (")
        and "re-derivation from the source" in found[1]
    )


def test_raw_channel_reversal_of_pixel_values_caught_without_source(v1_store_copy: Path) -> None:
    """Reversing the stored floats (not the frame) leaves values no ImageNet normalization
    makes (schema v1: a v2 store holds levels, which any uint8 is)."""
    frame_row, _ = first_item_rows(v1_store_copy)
    pixel = read_row(v1_store_copy, "pixel_values", frame_row)
    replace_row(v1_store_copy, "pixel_values", frame_row, np.ascontiguousarray(pixel[::-1]))
    code, output = run_verify(v1_store_copy)
    assert code == 1
    assert any(line.startswith(f"pixel_values row {frame_row} (") for line in problems(output))


def test_pixel_values_with_wrong_mean_and_std(v1_store_copy: Path) -> None:
    frame_row, _ = first_item_rows(v1_store_copy)
    levels = levels_of(read_row(v1_store_copy, "pixel_values", frame_row))
    wrong = ((levels.astype(np.float32) / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)
    replace_row(v1_store_copy, "pixel_values", frame_row, wrong.astype(np.float32))
    code, output = run_verify(v1_store_copy)
    assert code == 1
    found = problems(output)
    assert found and all(line.startswith(f"pixel_values row {frame_row} (") for line in found), (
        found
    )
    assert any("not ImageNet-normalized 8-bit levels" in line for line in found)


def test_pixel_values_not_divided_by_255_is_out_of_range(v1_store_copy: Path) -> None:
    frame_row, _ = first_item_rows(v1_store_copy)
    levels = levels_of(read_row(v1_store_copy, "pixel_values", frame_row))
    replace_row(
        v1_store_copy,
        "pixel_values",
        frame_row,
        ((levels.astype(np.float32) - MEAN) / STD).astype(np.float32),
    )
    code, output = run_verify(v1_store_copy)
    assert code == 1
    assert any("outside" in line and line.startswith("pixel_values") for line in problems(output))


def test_masks_scaled_to_0_and_255(store_copy: Path) -> None:
    """The seed's mask slip, `ToPILImage(mode='L')` of a 0/1 mask then `ToTensor()`, gives 0 and
    1/255; brought back to uint8 by x255 it is {0, 255} (this test)..."""
    _, mask_row = first_item_rows(store_copy)
    mask = read_row(store_copy, "masks", mask_row)
    replace_row(store_copy, "masks", mask_row, (mask * 255).astype(np.uint8))
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1 and found[0].startswith(f"masks row {mask_row} (item ")
    assert "values other than 0 and 1 (0, 255)" in found[0]


def test_masks_scaled_to_1_over_255_stored_as_uint8(store_copy: Path) -> None:
    """...and stored as uint8 directly, 1/255 truncates to 0: the mask is empty (this test)."""
    _, mask_row = first_item_rows(store_copy)
    mask = read_row(store_copy, "masks", mask_row)
    slipped = (mask.astype(np.float32) / 255).astype(np.uint8)
    assert not slipped.any()
    replace_row(store_copy, "masks", mask_row, slipped)
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert found and all(line.startswith(f"masks row {mask_row} (item ") for line in found), found
    assert "the mask is empty" in found[0]


def test_prompt_mask_of_another_item(store_copy: Path) -> None:
    _, mask_row = first_item_rows(store_copy)
    prompt = read_row(store_copy, "prompt_masks", mask_row)
    replace_row(
        store_copy, "prompt_masks", mask_row, np.ascontiguousarray(np.roll(prompt, 3, axis=1))
    )
    code, output = run_verify(store_copy)
    assert code == 1
    assert any(
        line.startswith(f"prompt_masks row {mask_row} (item ") and "disagree" in line
        for line in problems(output)
    )


# -- the relations the semantic checks rely on ------------------------------------------------


@pytest.mark.parametrize("size", [5, 192, 240, 344, 480, 848, 1024, 1037, 1401, 2160, 3840])
def test_pillow_nearest_samples_pixel_centres(size: int) -> None:
    """The prompt/mask relation assumes NEAREST takes source floor((x + 0.5) * size / 1024)."""
    expected = np.floor((np.arange(1024) + 0.5) * size / 1024).astype(np.int64)
    assert np.array_equal(nearest_sources(size), expected)


@pytest.mark.parametrize(("height", "width"), [(240, 320), (480, 848), (1080, 1920), (2160, 3840)])
def test_honest_items_pass_at_every_scale(height: int, width: int) -> None:
    """Discs and boxes at sizes SA-V has, upscaled and downscaled to 1024: no false alarm."""
    ys, xs = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(height)
    for _ in range(20):
        cy, cx, r = (
            rng.uniform(0, height),
            rng.uniform(0, width),
            rng.uniform(1, min(height, width) / 3),
        )
        mask = (((ys - cy) ** 2 + (xs - cx) ** 2) <= r * r).astype(np.uint8)
        if rng.random() < 0.5:
            mask = ((np.abs(ys - cy) <= r) & (np.abs(xs - cx) <= r / 2)).astype(np.uint8)
        area = int(mask.sum())
        if area == 0:
            continue
        prompt = transforms.prompt_masks(mask)
        found = check_item(transforms.masks(mask), prompt, area, int(prompt.sum()), height, width)
        assert found == [], found


def test_honest_frame_of_real_footage_passes(real_sav: Path) -> None:
    import av
    from PIL import Image

    with av.open(str(real_sav / "sav_000" / "sav_000001.mp4")) as container:
        frame = next(iter(container.decode(video=0))).to_ndarray(format="rgb24")
    for image in (
        Image.fromarray(frame),
        Image.fromarray(frame).resize((426, 240)),
        Image.fromarray(np.tile(frame, (4, 4, 1))),
    ):
        assert check_frame(transforms.pixel_values(image), transforms.g_pixel_values(image)) == []
