"""Issue 9, decoder parity: every video of the matrix (tests/helpers/videos.py) is decoded by prebake
exactly as SAM 2 and Sa2VA decode it (`cv2.VideoCapture` + BGR2RGB), frame by frame, or is
refused in one line naming the file and the reason; built into a store, each of its items equals
the independent reference; the real clips in ../shared/fixtures too."""

from __future__ import annotations

import gc
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import reference
import zarr
from helpers.stores import CLI, REAL_SAV, REAL_VIDEO, build_store
from helpers.videos import EQUAL, MATRIX, Case, write_sav_video
from reference.expected import assert_store_matches, expected_items

from prebake import decoding
from prebake.errors import SourceError
from prebake.sources import VideoRef, open_video
from prebake.sources.train import Mp4Video

REFUSED = frozenset(case.kind.name for case in MATRIX if case.expected != EQUAL)


@pytest.fixture(scope="session")
def matrix_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every video of the matrix with its SA-V annotation, in one training-layout folder."""
    root = tmp_path_factory.mktemp("matrix") / "src"
    for case in MATRIX:
        write_sav_video(root, case.kind.name, case.kind)
    return root


def every_frame(folder: Path, video_id: str) -> Mp4Video:
    """The video as prebake opens it, asked for every frame instead of every 4th."""
    ref = VideoRef(
        video_id,
        "train",
        str(folder / f"{video_id}.mp4"),
        (str(folder / f"{video_id}_manual.json"),),
    )
    video = open_video(ref)
    assert isinstance(video, Mp4Video)
    video.frame_indices = list(range(video.frame_count))
    return video


@pytest.mark.parametrize("case", MATRIX, ids=[case.kind.name for case in MATRIX])
def test_each_frame_equals_opencv_or_the_video_is_refused(case: Case, matrix_source: Path) -> None:
    name = case.kind.name
    video = every_frame(matrix_source, name)
    if case.expected != EQUAL:
        with pytest.raises(SourceError) as refused:
            list(video.iter_frames())
        message = str(refused.value)
        assert message.startswith(f"{matrix_source / name}.mp4: "), message
        assert case.expected in message and "\n" not in message, message
        return
    theirs = reference.opencv_frames(matrix_source / f"{name}.mp4")
    ours = [np.asarray(image) for _, image in video.iter_frames()]
    assert len(theirs) == len(ours) == case.kind.visible_frames
    for index, (mine, expected) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_array_equal(mine, expected, err_msg=f"{name} frame {index}")


@pytest.mark.parametrize(
    "name", ["h264_yuv420p10", "hevc_pq", "vp9_odd_71x39", "rot90_square", "rot180_landscape"]
)
def test_the_matrix_catches_the_old_conversion(name: str, matrix_source: Path) -> None:
    """PyAV's rgb24 at its default filter, unrotated (prebake before issue 9), differs from
    OpenCV on these: the matrix would notice a step back."""
    video = every_frame(matrix_source, name)
    old = [np.asarray(image) for _, image in video.iter_frames("legacy")]
    theirs = reference.opencv_frames(matrix_source / f"{name}.mp4")
    assert any(a.shape != b.shape or (a != b).any() for a, b in zip(old, theirs, strict=True))


def test_every_accepted_format_is_proven_by_the_matrix(matrix_source: Path) -> None:
    """The allowlists name nothing that no equal video of the matrix exercises."""
    seen: dict[str, set[object]] = {
        "codecs": set(),
        "formats": set(),
        "spaces": set(),
        "ranges": set(),
        "transfers": set(),
        "primaries": set(),
    }
    for case in MATRIX:
        if case.expected != EQUAL:
            continue
        with av.open(str(matrix_source / f"{case.kind.name}.mp4")) as container:
            stream = container.streams.video[0]
            frame = next(container.decode(stream))
            seen["codecs"].add(stream.codec_context.name)
            seen["formats"].add(frame.format.name)
            seen["spaces"].add(frame.colorspace)
            seen["ranges"].add(frame.color_range)
            seen["transfers"].add(frame.color_trc)
            seen["primaries"].add(frame.color_primaries)
    assert seen["codecs"] >= decoding.SUPPORTED_CODECS
    assert seen["formats"] >= decoding.SUPPORTED_PIXEL_FORMATS
    assert set(decoding.SUPPORTED_COLORSPACES) <= seen["spaces"]
    assert set(decoding.SUPPORTED_COLOR_RANGES) <= seen["ranges"]
    assert set(decoding.SUPPORTED_TRANSFERS) <= seen["transfers"]
    assert set(decoding.SUPPORTED_PRIMARIES) <= seen["primaries"]


def test_the_matrix_builds_item_by_item_and_refuses_in_one_line(
    matrix_source: Path, tmp_path: Path
) -> None:
    """One build of the whole matrix: exit 1, one line per refused video, every other video baked
    and equal, item by item, to OpenCV's frame through the reference preprocessing."""
    store = tmp_path / "matrix.zarr"
    command = [*CLI, "build", "--src", str(matrix_source), "--out", str(store), "-q"]
    result = subprocess.run(
        [*command, "--workers", "2"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"{len(REFUSED)} videos failed and were skipped:"
    assert lines[-1] == "(once they are fixed, --retry-failed bakes them again)"
    reasons = dict(line.strip().split(": ", 1) for line in lines[1:-1])
    assert set(reasons) == REFUSED
    for case in MATRIX:
        if case.expected != EQUAL:
            assert reasons[case.kind.name].startswith(f"{matrix_source / case.kind.name}.mp4: ")
            assert case.expected in reasons[case.kind.name]
    root = zarr.open_group(store, mode="r")
    assert root.attrs["prebake"]["counts"]["videos_failed"] == len(REFUSED)
    frames, items = expected_items(matrix_source, "train", ("manual",), exclude=REFUSED)
    assert_store_matches(store, frames, items)


# -- the real clips --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [REAL_VIDEO, REAL_SAV / "sav_000" / "sav_000001.mp4"])
def test_real_clips_decode_as_opencv(path: Path) -> None:
    """Every frame of the real H.264 clips, by prebake's decoder and by PyAV's plain rgb24 path
    (REFERENCE.md section 3: PyAV == OpenCV on real 8-bit 4:2:0 H.264), equals OpenCV's."""
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    theirs = reference.opencv_frames(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        convert = decoding.FrameConverter(str(path), stream)
        count = 0
        for index, frame in enumerate(container.decode(stream)):
            np.testing.assert_array_equal(np.asarray(convert(frame)), theirs[index])
            np.testing.assert_array_equal(frame.to_ndarray(format="rgb24"), theirs[index])
            count += 1
    assert count == len(theirs) > 200


# -- what the store records, and verify --src against OpenCV -----------------------------------


def small_source(root: Path, names: tuple[str, ...]) -> Path:
    kinds = {case.kind.name: case.kind for case in MATRIX}
    for name in names:
        write_sav_video(root, name, kinds[name])
    return root


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


def edit_attributes(store: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change the store's root attributes (and the build settings they hold) in place."""
    path = store / "zarr.json"
    metadata = json.loads(path.read_text())
    attrs = metadata["attributes"]["prebake"]
    edit(attrs["params"])
    edit(attrs["settings"]["params"])
    path.write_text(json.dumps(metadata))


def test_verify_fails_a_store_baked_with_another_decoder_conversion(tmp_path: Path) -> None:
    """Baked on purpose with prebake's old conversion (rgb24, no rotation): verify --src, which
    decodes with OpenCV, names each video and frame that differs, and only those."""
    src = small_source(tmp_path / "src", ("h264_yuv420p", "h264_yuv420p10", "rot90_square"))
    store = build_store(src, tmp_path / "legacy.zarr", decoder_conversion="legacy")
    assert "rgb24 bilinear, rotation: none" in cli("info", str(store)).stdout
    checked = cli("verify", str(store), "--src", str(src), "--samples", "all", "-q")
    assert checked.returncode == 1, checked.stdout
    assert "frames decoded by OpenCV 5." in checked.stdout
    problems = [line for line in checked.stdout.splitlines() if "differs from" in line]
    named = {video for line in problems for video in ("h264_yuv420p10 frame", "rot90_square frame") if video in line}  # fmt: skip
    assert named == {"h264_yuv420p10 frame", "rot90_square frame"}, checked.stdout
    assert not any("h264_yuv420p frame" in line for line in problems)  # 8-bit: both agree
    good = build_store(src, tmp_path / "good.zarr")
    assert cli("verify", str(good), "--src", str(src), "--samples", "all", "-q").returncode == 0


def test_a_store_from_before_decoding_was_recorded_reads_and_verifies(tmp_path: Path) -> None:
    """Schema v1 without params.decoding and params.pillow_rule: legacy decoding, rule 13.
    (Schema v2 always records both: its JSON Schema requires them.)"""
    from prebake import PrebakedDataset

    src = small_source(tmp_path / "src", ("h264_yuv420p",))
    store = build_store(src, tmp_path / "old.zarr", schema_version=1)

    def forget(params: dict[str, Any]) -> None:
        del params["decoding"], params["pillow_rule"]

    edit_attributes(store, forget)
    assert PrebakedDataset(store)[0]["pixel_values"].shape == (3, 448, 448)
    assert "not recorded" in cli("info", str(store)).stdout
    checked = cli("verify", str(store), "--src", str(src), "--samples", "all", "-q")
    assert checked.returncode == 0, checked.stdout  # 8-bit 4:2:0 H.264: the old way agreed


def test_another_decoder_does_not_resume_a_store(tmp_path: Path) -> None:
    src = small_source(tmp_path / "src", ("h264_yuv420p",))
    store = tmp_path / "store.zarr"
    command = ("build", "--src", str(src), "--out", str(store), "--workers", "1", "-q")
    assert cli(*command).returncode == 0

    def older_pyav(params: dict[str, Any]) -> None:
        params["decoding"]["pyav"] = "17.0.0"

    edit_attributes(store, older_pyav)
    again = cli(*command)
    assert again.returncode == 2
    assert "decoding.pyav: store '17.0.0', this command" in again.stderr


def test_decoding_holds_no_frame_it_has_passed(matrix_source: Path) -> None:
    """One frame at a time, whatever the video's length: no decoded frame stays alive (PyAV's
    side data would keep each frame it is read from in a reference cycle)."""
    video = every_frame(matrix_source, "rot90_landscape")
    gc.collect()
    gc.disable()
    try:
        alive = []
        for _ in video.iter_frames():
            alive.append(sum(type(o) is av.VideoFrame for o in gc.get_objects()))
    finally:
        gc.enable()
    assert len(alive) == 9 and max(alive) <= 4, alive  # held: the current one, the first


def test_decoder_bench_runs(matrix_source: Path) -> None:
    """`python -m prebake.bench.decoders` (docs/decoding.md's figures) on a small video, so it
    does not rot."""
    from prebake.bench.decoders import bench_decoders, format_decoders

    results = bench_decoders(matrix_source / "h264_bframes.mp4", repeat=1)
    assert results["clean_frames"] == {"pyav": 12, "opencv": 12}
    every = results["speed"]["pyav/1"]
    assert every["converted"] == 12 and every["converted_per_s"] > 0
    assert results["speed"]["opencv/4"]["converted"] == 3
    assert set(results["damaged"]) == {"corrupt", "truncated"}
    text = format_decoders(results)
    assert "PyAV as prebake decodes" in text and "OpenCV cv2.VideoCapture" in text
