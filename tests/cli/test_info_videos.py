"""`prebake info --videos`: each video's id, annotated frames, items and status (issue 14,
item 6), against what the sample was made of (`SPLIT_VIDEOS`), not prebake's own tables."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.stores import SPLIT_VIDEOS
from typer.testing import CliRunner

from prebake.cli import app


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_info_videos_json(split_store: Path) -> None:
    code, output = invoke("info", str(split_store), "--videos", "--json")
    assert code == 0, output
    listed = json.loads(output)["videos"]
    assert [entry["video_id"] for entry in listed] == list(SPLIT_VIDEOS)
    for entry in listed:
        frames, items = SPLIT_VIDEOS[entry["video_id"]]
        assert (entry["frames"], entry["items"]) == (frames, items)
        failed = entry["video_id"] == "sav_950003"
        assert entry["status"] == ("failed" if failed else "ok")
        assert ("reason" in entry) == failed
    reason = listed[2]["reason"]
    assert "sav_950003.mp4" in reason and "cannot decode" in reason
    code, output = invoke("info", str(split_store), "--json")
    assert code == 0 and "videos" not in json.loads(output)  # only when asked


def test_info_videos_text(split_store: Path) -> None:
    code, output = invoke("info", str(split_store), "--videos")
    assert code == 0, output
    lines = output.splitlines()
    start = lines.index("videos (3):")
    assert lines[start + 1].split() == ["video", "annotated", "frames", "items", "status"]
    for line, (video_id, (frames, items)) in zip(
        lines[start + 2 : start + 5], SPLIT_VIDEOS.items(), strict=True
    ):
        words = line.split()
        assert words[:3] == [video_id, str(frames), str(items)]
        assert words[3] == ("failed:" if video_id == "sav_950003" else "ok")
    assert "cannot decode" in lines[start + 4]
