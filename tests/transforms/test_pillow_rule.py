"""Issue 9, the trainer's Pillow rule: `--match-pillow 13|12` resizes as that Pillow does, with
the installed Pillow 13 (two single-axis passes); proven against Pillow 13 itself and against
the real Pillow 12 (tests/reference/pillow12.py), on portrait, landscape and near-square frames; the rule
is recorded, shown by `info`, used by `verify --src`, and a store whose pixels follow another
rule than the one verify assumes fails verification."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import reference
import zarr
from helpers.stores import CLI, REAL_SAV
from helpers.videos import VideoKind, write_sav_video
from PIL import Image
from reference.expected import assert_store_matches, expected_items

from prebake import transforms

SIZES = {"g": (1024, 1024), "pixel": (448, 448)}


def frames_of_every_shape() -> dict[str, Image.Image]:
    """Noise (the hardest case for rounding) in portrait, landscape and near-square shapes, and
    the real portrait SA-V frame when the fixtures are here."""
    rng = np.random.default_rng(9)
    shapes = {
        "portrait 480x848": (848, 480),
        "portrait 360x1280": (1280, 360),
        "landscape 1280x720": (720, 1280),
        "near-square 500x480": (480, 500),
        "near-square 480x500": (500, 480),
        "tall 3x400 (Pillow 12's 100x rule)": (400, 3),
    }
    frames = {
        name: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for name, (h, w) in shapes.items()
    }
    real = REAL_SAV / "sav_000" / "sav_000001.mp4"
    if real.is_file():
        frames["real SA-V frame 480x848"] = Image.fromarray(reference.opencv_frames(real)[0])
    return frames


@pytest.mark.parametrize("rule", [13, 12])
def test_resizes_equal_the_pillow_each_rule_names(rule: int) -> None:
    frames = frames_of_every_shape()
    for which, size in SIZES.items():
        expected = reference.resized(list(frames.values()), size, rule)
        for (name, frame), theirs in zip(frames.items(), expected, strict=True):
            if which == "g":
                ours = transforms.g_pixel_values(frame, rule)
                np.testing.assert_array_equal(ours, reference.g_pixel_values_of(theirs), name)
            else:
                ours = transforms.pixel_values(frame, rule)
                np.testing.assert_array_equal(ours, reference.pixel_values_of(theirs), name)


def test_the_rules_differ_on_portrait_frames_only() -> None:
    frames = frames_of_every_shape()
    for name in ("portrait 480x848", "landscape 1280x720"):
        twelve, thirteen = (transforms.pixel_values(frames[name], rule) for rule in (12, 13))
        assert (twelve != thirteen).any() == name.startswith("portrait"), name


# -- a store baked for each rule ---------------------------------------------------------------


def portrait_source(root: Path) -> Path:
    """One portrait H.264 video of SA-V's portrait shape (480 x 848) with its annotation."""
    write_sav_video(root, "sav_950001", VideoKind("portrait", width=480, height=848, frames=9))
    return root


def build(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "build", "--src", str(src), "--out", str(out), "--workers", "1", "-q"]
    return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=600)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


def test_match_pillow_12_bakes_pillow_12s_pixels_and_verify_uses_the_rule(
    tmp_path: Path,
) -> None:
    src = portrait_source(tmp_path / "src")
    stores = {rule: tmp_path / f"rule{rule}.zarr" for rule in (12, 13)}
    assert build(src, stores[12], "--match-pillow", "12").returncode == 0
    assert build(src, stores[13]).returncode == 0
    frames, items = expected_items(src, "train", ("manual",))
    for rule, store in stores.items():
        assert_store_matches(store, frames, items, pillow=rule)
        checked = run("verify", str(store), "--src", str(src), "--samples", "all", "-q")
        assert checked.returncode == 0, checked.stdout
        assert f"resized as Pillow {rule} does" in checked.stdout
        assert f"pillow rule {rule}" in run("info", str(store)).stdout
    twelve, thirteen = (
        zarr.open_group(stores[rule], mode="r")["pixel_values"][0] for rule in (12, 13)
    )
    assert (twelve != thirteen).any()  # a portrait frame: the rules differ

    # A store whose pixels follow Pillow 12 but which does not say so (as one baked before the
    # rule was recorded, in a Pillow 12 environment) is checked against rule 13 and fails.
    metadata_path = stores[12] / "zarr.json"
    metadata = json.loads(metadata_path.read_text())
    for params in (
        metadata["attributes"]["prebake"]["params"],
        metadata["attributes"]["prebake"]["settings"]["params"],
    ):
        del params["pillow_rule"]
    metadata_path.write_text(json.dumps(metadata))
    checked = run("verify", str(stores[12]), "--src", str(src), "--samples", "all", "-q")
    assert checked.returncode == 1
    problems = [line for line in checked.stdout.splitlines() if "differs from" in line]
    assert problems and all("sav_950001 frame" in line for line in problems), checked.stdout
    assert all("resized as Pillow 13" in line for line in problems)


def test_another_rule_does_not_resume_a_store(tmp_path: Path) -> None:
    src = portrait_source(tmp_path / "src")
    store = tmp_path / "store.zarr"
    assert build(src, store).returncode == 0
    again = build(src, store, "--match-pillow", "12")
    assert again.returncode == 2
    assert "pillow_rule: store 13, this command 12" in again.stderr
    assert build(src, store, "--match-pillow", "11").returncode == 2
    # A store claiming an unknown rule is a verification problem, not a crash.
    metadata_path = store / "zarr.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["attributes"]["prebake"]["params"]["pillow_rule"] = 11
    metadata_path.write_text(json.dumps(metadata))
    checked = run("verify", str(store), "--src", str(src), "-q")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert "params.pillow_rule is 11, expected one of [13, 12]" in checked.stdout
