"""Issue 14: messages that fit what the user did: a file given as --src, verify and info on
something that is not a store, Ctrl-C in verify."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import zarr
from helpers.runs import DEADLINE, frame_held
from helpers.stores import CLI, build_store


def prebake_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=DEADLINE)


def assert_one_line(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and text in result.stderr, result.stderr


def test_src_naming_a_file_says_it_is_a_file(
    sample_sources: dict[str, Path], train_store: Path, tmp_path: Path
) -> None:
    mp4 = sample_sources["train"] / "sav_900001.mp4"
    built = prebake_command("build", "--src", str(mp4), "--out", str(tmp_path / "s.zarr"), "-q")
    assert_one_line(built, f"{mp4}: is a file; the source is the folder that holds")
    assert not (tmp_path / "s.zarr").exists()
    verified = prebake_command("verify", str(train_store), "--src", str(mp4), "-q")
    assert_one_line(verified, f"{mp4}: is a file")


@pytest.mark.parametrize("kind", ["file", "empty folder", "zarr group", "array of a store"])
def test_verify_and_info_on_what_is_not_a_store(
    kind: str, train_store: Path, tmp_path: Path
) -> None:
    if kind == "file":
        path = tmp_path / "notes.txt"
        path.write_text("not a store")
    elif kind == "empty folder":
        path = tmp_path / "empty"
        path.mkdir()
    elif kind == "zarr group":
        path = tmp_path / "other.zarr"
        zarr.open_group(path, mode="w").attrs["made_by"] = "someone else"
    else:
        path = train_store / "masks"
    what = {
        "file": "a file, not a store's folder",
        "empty folder": "no zarr.json: not a Zarr store",
    }.get(kind, "no prebake attributes in zarr.json")
    for command in ("verify", "info"):
        result = prebake_command(command, str(path))
        assert_one_line(result, f"{path}: not a prebake store ({what})")


def test_ctrl_c_in_verify_is_one_line(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    """Ctrl-C while verify re-derives frames (held reading one: a named pipe): one line, 130."""
    src = Path(sample_sources["frames"])
    store = build_store(src, tmp_path / "store.zarr")
    with frame_held(src / "JPEGImages" / "sav_900001", "00004.jpg") as held:
        process = subprocess.Popen(
            [*CLI, "verify", str(store), "--src", str(src), "--samples", "all", "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches
        )
        held.wait_read(process)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 130, stderr
    assert stderr == f"prebake: {store}: verify interrupted; the store was not changed\n"
    assert stdout == ""


def test_an_interrupted_overwrite_says_to_drop_overwrite() -> None:
    """Rerunning an interrupted `--overwrite` build as it was would throw away what it committed."""
    from prebake.build.baking import RunState

    state = RunState(Path("s.zarr"), phase="baking", committed=1, planned=4)
    assert state.interrupted_message().endswith("run the same command again to resume")
    state.overwrite = True
    assert "1 of 4 videos are committed and kept" in state.interrupted_message()
    assert state.interrupted_message().endswith(
        "run the same command without --overwrite to resume"
    )
    state.phase = "committing"
    assert state.interrupted_message().endswith("without --overwrite to finish")


def test_counts_agree_with_their_nouns() -> None:
    from prebake.errors import counted

    assert [counted(n, "video") for n in (0, 1, 2)] == ["0 videos", "1 video", "2 videos"]
