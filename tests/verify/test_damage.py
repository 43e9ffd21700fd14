"""`prebake verify`: a clean store passes; damaged bytes, files and metadata, injected into a
copy of a built store, are caught with exit 1 and the array named."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.damage import (
    PREBAKE,
    edit_metadata,
    first_item_rows,
    problems,
    rows_per_shard,
    run_verify,
    shard_file,
)
from helpers.stores import build_store

from prebake.errors import StoreError
from prebake.store.layout import StoreDir
from prebake.store.shard import read_index
from prebake.verify import verify_store

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


def flip_a_byte_of_an_image(store: Path) -> int:
    """Flip one bit in the middle of the first item's g_pixel_values chunk; return its row."""
    frame_row, _ = first_item_rows(store)
    path = shard_file(store, "g_pixel_values", frame_row)
    per = rows_per_shard(store, "g_pixel_values")
    offset, nbytes = (int(v) for v in read_index(path, per)[frame_row % per])
    with path.open("r+b") as handle:
        handle.seek(offset + nbytes // 2)
        byte = handle.read(1)
        handle.seek(offset + nbytes // 2)
        handle.write(bytes([byte[0] ^ 0x01]))
    return frame_row


def test_flipped_byte_in_a_chunk(store_copy: Path) -> None:
    frame_row = flip_a_byte_of_an_image(store_copy)
    code, output = run_verify(store_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1 and found[0].startswith(f"g_pixel_values row {frame_row} ("), found
    assert "crc32c mismatch" in found[0] and "g_pixel_values/c/" in found[0]


def test_json_problems_are_objects(store_copy: Path) -> None:
    """`verify --json`: each problem an object naming the check that found it, the array, the
    row (the one damaged here; None for a whole file) and the message."""
    frame_row = flip_a_byte_of_an_image(store_copy)
    orphan = store_copy / "prompt_masks" / "c" / "999" / "0"
    orphan.mkdir(parents=True)
    shutil.copy(shard_file(store_copy, "prompt_masks", 0), orphan / "0")
    code, output = run_verify(store_copy, "--json")
    assert code == 1
    data = json.loads(output)
    assert data["ok"] is False and len(data["problems"]) == 2, data["problems"]
    assert all(set(problem) == {"check", "array", "row", "message"} for problem in data["problems"])
    chunk, file = sorted(data["problems"], key=lambda problem: problem["array"])
    assert (chunk["check"], chunk["array"], chunk["row"]) == ("shards", "g_pixel_values", frame_row)
    assert "crc32c mismatch" in chunk["message"]
    assert (file["check"], file["array"], file["row"]) == ("shards", "prompt_masks", None)
    assert file["message"].startswith("prompt_masks: shard file prompt_masks/c/999/0/0")


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


# -- the real sample --------------------------------------------------------------------------


def test_real_sample_store_verify_info_show(real_sav: Path, tmp_path: Path) -> None:
    """The real SA-V sample built by the CLI passes verify with --src; info and show work on it."""
    from PIL import Image

    from prebake.show import tile_size

    folder = tmp_path
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
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    result = subprocess.run(
        [PREBAKE, "verify", str(out), "--src", str(real_sav), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "121/121 frames, 480/480 items" in result.stdout
    assert "16 items" in result.stdout
    result = subprocess.run([PREBAKE, "info", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "videos 1 (0 failed), frames 121, items 480" in result.stdout
    preview = folder / "real.png"
    result = subprocess.run(
        [PREBAKE, "show", str(out), "--item", "200", "--out", str(preview)],
        capture_output=True,
        text=True,
        timeout=120,
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
