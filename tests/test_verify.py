"""`prebake verify`: a clean store passes; every fault class, injected into a copy of a built
store, is caught with exit 1 and the array named.

Row faults are injected by re-encoding the row with `encode_chunk` and rewriting its shard with
`ShardWriter`, so every checksum is valid and only the semantic (or source) checks can see them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import build_store
from typer.testing import CliRunner

from prebake import transforms
from prebake.cli import app
from prebake.errors import StoreError
from prebake.store.layout import StoreDir
from prebake.store.rows import RowReader
from prebake.store.schema import array_specs, encode_chunk
from prebake.store.shard import NO_CHUNK, ShardWriter, read_index
from prebake.verify import check_frame, check_item, nearest_sources, verify_store

PREBAKE = str(Path(sys.executable).with_name("prebake"))  # the console script of this venv
MEAN = np.asarray(transforms.IMAGENET_MEAN, dtype=np.float32)[:, None, None]
STD = np.asarray(transforms.IMAGENET_STD, dtype=np.float32)[:, None, None]


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def store_copy(train_store: Path, tmp_path: Path) -> Path:
    """A private copy of the session store, free to damage."""
    return Path(shutil.copytree(train_store, tmp_path / "store.zarr"))


def rows_per_shard(store: Path, name: str) -> int:
    attrs = StoreDir(store).attrs()
    assert attrs is not None
    key = array_specs()[name].rows_per_shard
    assert key is not None
    return int(attrs["params"][key])


def reader(store: Path, name: str) -> RowReader:
    return RowReader(StoreDir(store), array_specs()[name], rows_per_shard(store, name))


def read_row(store: Path, name: str, row: int) -> np.ndarray:
    return reader(store, name).read(row).copy()


def shard_file(store: Path, name: str, row: int) -> Path:
    return StoreDir(store).shard_path(array_specs()[name], row // rows_per_shard(store, name))


def replace_row(store: Path, name: str, row: int, value: np.ndarray) -> None:
    """Re-encode one row and rewrite its shard with ShardWriter (valid checksums everywhere)."""
    spec, per = array_specs()[name], rows_per_shard(store, name)
    path = shard_file(store, name, row)
    index = read_index(path, per)
    blob = path.read_bytes()
    written = [position for position in range(per) if index[position, 0] != NO_CHUNK]
    assert written == list(range(len(written))), "honest shards hold a prefix of their rows"
    writer = ShardWriter(path, path.with_name(path.name + ".tmp"), per)
    for position in written:
        if position == row % per:
            writer.append(encode_chunk(spec, value))
        else:
            offset, nbytes = (int(v) for v in index[position])
            writer.append(blob[offset : offset + nbytes])
    writer.close()


def tables(store: Path) -> dict[str, np.ndarray]:
    import zarr

    names = ("items/frame_row", "items/mask_row", "items/area")
    return {name: np.asarray(zarr.open_array(store / name, mode="r")[...]) for name in names}


def first_item_rows(store: Path) -> tuple[int, int]:
    """(frame row, mask row) of the item with the largest area: a visible object."""
    t = tables(store)
    item = int(np.argmax(t["items/area"]))
    return int(t["items/frame_row"][item]), int(t["items/mask_row"][item])


def run_verify(store: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", str(store), "--quiet", *args])
    return result.exit_code, result.output


def problems(output: str) -> list[str]:
    lines = output.splitlines()
    return (
        [line.strip() for line in lines[lines.index("problems:") + 1 :]]
        if "problems:" in lines
        else []
    )


def normalize(levels: np.ndarray) -> np.ndarray:
    """The reference normalization of uint8 CHW levels (as transforms.pixel_values does it)."""
    values = levels.astype(np.float32)
    values /= np.float32(255)
    values -= MEAN
    values /= STD
    return values


def levels_of(pixel: np.ndarray) -> np.ndarray:
    return np.rint((pixel.astype(np.float64) * STD + MEAN) * 255).clip(0, 255).astype(np.uint8)


# -- clean stores -----------------------------------------------------------------------------


def test_clean_store_passes_without_and_with_source(
    train_store: Path, sample_sources: dict[str, Path]
) -> None:
    code, output = run_verify(train_store)
    assert code == 0, output
    assert "OK" in output.splitlines()[0]
    code, output = run_verify(
        train_store, "--src", str(sample_sources["train"]), "--samples", "all"
    )
    assert code == 0, output
    report = verify_store(train_store, src=sample_sources["train"], samples=None, progress=False)
    attrs = StoreDir(train_store).attrs()
    assert attrs is not None
    assert report.ok
    assert report.semantics["frames_checked"] == attrs["counts"]["frames"]
    assert report.semantics["items_checked"] == attrs["counts"]["items"]
    assert report.source is not None
    assert report.source["items_checked"] == attrs["counts"]["items"]
    assert report.source["frames_checked"] == attrs["counts"]["frames"]


def test_json_report_has_counts_and_speed(train_store: Path) -> None:
    code, output = run_verify(train_store, "--json")
    assert code == 0
    data = json.loads(output)
    assert data["ok"] is True and data["problems"] == []
    assert data["integrity"]["bytes"] > 0 and data["integrity"]["mb_per_s"] > 0
    assert data["integrity"]["chunks"] > 0 and data["schema"]["arrays"] == 4


def test_default_samples_rederive_sixteen_items(
    train_store: Path, sample_sources: dict[str, Path]
) -> None:
    report = verify_store(train_store, src=sample_sources["train"], progress=False)
    assert report.ok, report.problems
    assert report.source is not None and report.source["items_checked"] == 16


# -- integrity faults -------------------------------------------------------------------------


def test_flipped_byte_in_a_chunk(store_copy: Path) -> None:
    frame_row, _ = first_item_rows(store_copy)
    path = shard_file(store_copy, "g_pixel_values", frame_row)
    per = rows_per_shard(store_copy, "g_pixel_values")
    offset, nbytes = (int(v) for v in read_index(path, per)[frame_row % per])
    with path.open("r+b") as handle:
        handle.seek(offset + nbytes // 2)
        byte = handle.read(1)
        handle.seek(offset + nbytes // 2)
        handle.write(bytes([byte[0] ^ 0x01]))
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1 and found[0].startswith(f"g_pixel_values row {frame_row} ("), found
    assert "crc32c mismatch" in found[0] and "g_pixel_values/c/" in found[0]


def test_flipped_byte_in_a_shard_index(store_copy: Path) -> None:
    _, mask_row = first_item_rows(store_copy)
    path = shard_file(store_copy, "masks", mask_row)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x80
    path.write_bytes(bytes(data))
    code, output = run_verify(store_copy)
    assert code == 1
    assert any(
        line.startswith("masks: shard file masks/c/") and "checksum" in line
        for line in problems(output)
    )


def test_truncated_shard(store_copy: Path) -> None:
    path = shard_file(store_copy, "pixel_values", 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert any(
        line.startswith("pixel_values: shard file pixel_values/c/0/0/0/0") and "truncated" in line
        for line in found
    ), found


def test_missing_shard_file(store_copy: Path) -> None:
    _, mask_row = first_item_rows(store_copy)
    shard_file(store_copy, "masks", mask_row).unlink()
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert any(
        line.startswith("masks: shard file masks/c/") and "is missing" in line for line in found
    ), found


def test_orphan_shard_file_is_reported(store_copy: Path) -> None:
    source = shard_file(store_copy, "prompt_masks", 0)
    orphan = store_copy / "prompt_masks" / "c" / "999" / "0"
    orphan.mkdir(parents=True)
    shutil.copy(source, orphan / "0")
    code, output = run_verify(store_copy)
    assert code == 1
    assert (
        "prompt_masks: shard file prompt_masks/c/999/0/0 holds no row the tables refer to"
        in problems(output)
    )


# -- semantic faults (valid checksums) --------------------------------------------------------


def test_g_pixel_values_made_the_seeds_way(store_copy: Path) -> None:
    """Normalized 448 -> bilinear 1024 -> x255 -> clamp -> uint8: the bug this project was born from."""
    frame_row, _ = first_item_rows(store_copy)
    pixel = torch.from_numpy(read_row(store_copy, "pixel_values", frame_row))
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
    replace_row(
        store_copy,
        "pixel_values",
        frame_row,
        normalize(np.ascontiguousarray(levels_of(pixel)[::-1])),
    )
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


def test_raw_channel_reversal_of_pixel_values_caught_without_source(store_copy: Path) -> None:
    """Reversing the stored floats (not the frame) leaves values no ImageNet normalization makes."""
    frame_row, _ = first_item_rows(store_copy)
    pixel = read_row(store_copy, "pixel_values", frame_row)
    replace_row(store_copy, "pixel_values", frame_row, np.ascontiguousarray(pixel[::-1]))
    code, output = run_verify(store_copy)
    assert code == 1
    assert any(line.startswith(f"pixel_values row {frame_row} (") for line in problems(output))


def test_pixel_values_with_wrong_mean_and_std(store_copy: Path) -> None:
    frame_row, _ = first_item_rows(store_copy)
    levels = levels_of(read_row(store_copy, "pixel_values", frame_row))
    wrong = ((levels.astype(np.float32) / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)
    replace_row(store_copy, "pixel_values", frame_row, wrong.astype(np.float32))
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert found and all(line.startswith(f"pixel_values row {frame_row} (") for line in found), (
        found
    )
    assert any("not ImageNet-normalized 8-bit levels" in line for line in found)


def test_pixel_values_not_divided_by_255_is_out_of_range(store_copy: Path) -> None:
    frame_row, _ = first_item_rows(store_copy)
    levels = levels_of(read_row(store_copy, "pixel_values", frame_row))
    replace_row(
        store_copy,
        "pixel_values",
        frame_row,
        ((levels.astype(np.float32) - MEAN) / STD).astype(np.float32),
    )
    code, output = run_verify(store_copy)
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


# -- schema faults ----------------------------------------------------------------------------


def edit_metadata(store: Path, name: str, key: str, value: object) -> None:
    path = store / name / "zarr.json"
    metadata = json.loads(path.read_text())
    metadata[key] = value
    path.write_text(json.dumps(metadata))


def test_tampered_shape(store_copy: Path) -> None:
    metadata = json.loads((store_copy / "masks" / "zarr.json").read_text())
    edit_metadata(store_copy, "masks", "shape", [metadata["shape"][0], 1024, 1000])
    code, output = run_verify(store_copy)
    assert code == 1
    assert any(line.startswith("masks: zarr.json shape is") for line in problems(output)), output


def test_tampered_dtype(store_copy: Path) -> None:
    edit_metadata(store_copy, "g_pixel_values", "data_type", "float32")
    code, output = run_verify(store_copy)
    assert code == 1
    assert 'g_pixel_values: zarr.json data_type is "float32", the schema says "uint8"' in problems(
        output
    )


def test_tampered_table_is_caught(store_copy: Path) -> None:
    import zarr

    area = zarr.open_array(store_copy / "items" / "area", mode="r+")
    values = np.asarray(area[...])
    item = int(np.argmax(values))
    values[item] *= 3
    area[...] = values
    code, output = run_verify(store_copy)
    assert code == 1
    assert any(
        line.startswith("masks row ") and f"(item {item}:" in line for line in problems(output)
    )


# -- cannot run: exit 2 -----------------------------------------------------------------------


def test_cannot_run(tmp_path: Path, store_copy: Path) -> None:
    code, output = run_verify(tmp_path / "nothing")
    assert code == 2 and "no such store" in output
    (tmp_path / "plain").mkdir()
    code, output = run_verify(tmp_path / "plain")
    assert code == 2 and "not a prebake store" in output
    code, output = run_verify(store_copy, "--samples", "many")
    assert code == 2
    attrs = json.loads((store_copy / "zarr.json").read_text())
    attrs["attributes"]["prebake"]["state"] = "building"
    (store_copy / "zarr.json").write_text(json.dumps(attrs))
    code, output = run_verify(store_copy)
    assert code == 2 and "incomplete" in output and "Traceback" not in output
    with pytest.raises(StoreError):
        verify_store(store_copy, progress=False)


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


# -- the real sample --------------------------------------------------------------------------


def test_real_sample_store_verify_info_show(
    real_sav: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The real SA-V sample built by the CLI passes verify with --src; info and show work on it."""
    from PIL import Image

    from prebake.show import tile_size

    folder = tmp_path_factory.mktemp("real")
    out = folder / "real-verify.zarr"
    build = [
        PREBAKE,
        "build",
        "--src",
        str(real_sav),
        "--out",
        str(out),
        "--quiet",
        "--workers",
        "1",
    ]
    subprocess.run(build, check=True, capture_output=True)
    result = subprocess.run(
        [PREBAKE, "verify", str(out), "--src", str(real_sav), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "121/121 frames, 480/480 items" in result.stdout
    assert "16 items" in result.stdout
    result = subprocess.run([PREBAKE, "info", str(out)], capture_output=True, text=True)
    assert result.returncode == 0 and "videos 1 (0 failed), frames 121, items 480" in result.stdout
    preview = folder / "real.png"
    result = subprocess.run(
        [PREBAKE, "show", str(out), "--item", "200", "--out", str(preview)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(preview) as image:
        assert image.size == tile_size(1.0)


def test_store_with_a_failed_video_verifies(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    """A video that failed at build time is recorded, not a fault: verify passes and says so."""
    src = Path(shutil.copytree(sample_sources["train"], tmp_path / "src"))
    broken = src / "sav_900002.mp4"
    broken.write_bytes(broken.read_bytes()[:3000])
    store = build_store(src, tmp_path / "store.zarr")
    code, output = run_verify(store, "--src", str(src), "--samples", "all")
    assert code == 0, output
    assert "1 videos failed at build time" in output
