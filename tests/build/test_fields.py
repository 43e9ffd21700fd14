"""`prebake build --fields`: a store holds only the arrays asked for; another --fields neither
resumes nor grows it; a v1 store is neither resumed nor grown (build a new one); and the sizes
a default and a Loop-1 build of the real SA-V sample hold per annotated frame."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr
from helpers.stores import build_store
from typer.testing import CliRunner

from prebake.cli import app
from prebake.store.layout import BUILD_DIR


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def build_args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--src", str(src), "--out", str(out), "--workers", "1", "-q", *extra]


def store_bytes(store: Path) -> int:
    return sum(path.stat().st_size for path in store.rglob("*") if path.is_file())


def test_fields_choose_the_arrays_in_any_order(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "masks.zarr"
    code, output = run(
        *build_args(sample_sources["train"], out, "--fields", "masks, g_pixel_values")
    )
    assert code == 0, output
    root = zarr.open_group(out, mode="r")
    assert set(root.array_keys()) == {"g_pixel_values", "masks"}
    assert root.attrs["prebake"]["params"]["fields"] == ["g_pixel_values", "masks"]
    code, output = run("verify", str(out), "-q", "--src", str(sample_sources["train"]))
    assert code == 0, output
    assert "the store lacks pixel_values, prompt_masks (built with --fields)" in output
    code, output = run("info", str(out))
    assert code == 0 and "the store lacks pixel_values, prompt_masks" in output


@pytest.mark.parametrize("fields", ["pixel_values,pixels", ",", "all"])
def test_unknown_fields_are_refused_in_one_line(
    fields: str, sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "store.zarr"
    code, output = run(*build_args(sample_sources["train"], out, "--fields", fields))
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert (
        "fields must be one or more of pixel_values, g_pixel_values, prompt_masks, masks" in output
    )
    assert not out.exists()


def test_other_fields_neither_resume_nor_grow_a_store(
    loop1_store: Path, sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    out = Path(shutil.copytree(loop1_store, tmp_path / "store.zarr"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # The loop1 store's settings (build_store in tests/helpers), fields apart.
    settings = ("--masklets", "all", "--frames-per-shard", "4", "--items-per-shard", "8")
    for extra in ((), ("--fields", "pixel_values")):
        code, output = run(*build_args(sample_sources["train"], out, *settings, *extra))
        assert code == 2 and len(output.strip().splitlines()) == 1, output
        assert (
            "store was built with other settings (fields: store ['pixel_values', 'prompt_masks']"
            in output
        )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # The store's own fields (in any order) are its settings: nothing to add.
    fields = ("--fields", "prompt_masks,pixel_values")
    code, output = run(*build_args(sample_sources["train"], out, *settings, *fields))
    assert code == 0 and "already complete" in output, output


@pytest.mark.parametrize("state", ["complete", "building"])
def test_a_v1_store_is_neither_resumed_nor_grown(
    state: str, v1_store: Path, sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    out = Path(shutil.copytree(v1_store, tmp_path / "v1.zarr"))
    if state == "building":  # as a v1 build that stopped half-way leaves it
        metadata = json.loads((out / "zarr.json").read_text())
        metadata["attributes"]["prebake"]["state"] = "building"
        (out / "zarr.json").write_text(json.dumps(metadata))

    def files() -> dict[Path, bytes]:  # the lock a refused run took may stay in the build folder
        return {
            p: p.read_bytes() for p in out.rglob("*") if p.is_file() and BUILD_DIR not in p.parts
        }

    before = files()
    code, output = run(*build_args(sample_sources["train"], out, "--masklets", "all"))
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "store has schema v1" in output and "build a new store (--overwrite" in output
    assert files() == before
    code, output = run(
        *build_args(sample_sources["train"], out, "--masklets", "all", "--overwrite")
    )
    assert code == 0, output
    assert zarr.open_group(out, mode="r").attrs["prebake"]["schema_version"] == 2


def test_sizes_per_annotated_frame_of_the_real_sample(real_sav: Path, tmp_path: Path) -> None:
    """Issue 12's limits: at most 3.9 MB per annotated frame for a default build, 0.8 MB for a
    Loop-1 build (v1 held 5.56 MB)."""
    full = build_store(
        real_sav,
        tmp_path / "full.zarr",
        masklets="manual",
        frames_per_shard=64,
        items_per_shard=1024,
    )
    loop1 = build_store(
        real_sav, tmp_path / "loop1.zarr", masklets="manual", frames_per_shard=64, items_per_shard=1024,
        fields=("pixel_values", "prompt_masks"),
    )  # fmt: skip
    frames = zarr.open_group(full, mode="r").attrs["prebake"]["counts"]["frames"]
    assert frames == 121
    assert store_bytes(full) / frames <= 3.9e6
    assert store_bytes(loop1) / frames <= 0.8e6
