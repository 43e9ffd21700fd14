"""The reader explains itself: options that leave a dataset empty name the cause, masklet types
are checked against the items, and `videos=` splits a store by video (issue 14, item 6).

Expected values come from the sample's definition (`SPLIT_VIDEOS`) or from the store read with
zarr-python alone, never from the reader."""

from __future__ import annotations

import multiprocessing
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers.stores import SPLIT_VIDEOS, build_store, video_ids
from torch.utils.data import DataLoader

from prebake.demo import SampleObject, SampleVideo, write_sample
from prebake.reader import PrebakedDataset

LONGEST = max(frames for frames, _ in SPLIT_VIDEOS.values())  # 4 annotated frames


def raises(match: str) -> pytest.RaisesExc[ValueError]:
    return pytest.raises(ValueError, match=re.escape(match))


def items_of(store: Path) -> list[tuple[str, int]]:
    """(video id, frame index) of every item, in store order, read with zarr-python."""
    root = zarr.open_group(store, mode="r", zarr_format=3)
    ids = video_ids(root)
    video = root["items/video"][:]  # type: ignore[index]
    frame_index = root["items/frame_index"][:]  # type: ignore[index]
    return [(ids[int(v)], int(f)) for v, f in zip(video, frame_index, strict=True)]


def largest_prompt(store: Path) -> int:
    """The most cells on in any item's 16 x 16 prompt: the stored prompt_masks, summed."""
    prompt_masks = np.asarray(zarr.open_array(store / "prompt_masks", mode="r")[...])
    return int(prompt_masks.reshape(len(prompt_masks), -1).sum(axis=1).max())


def test_the_sample_is_what_the_tests_assume(split_store: Path) -> None:
    per_video = {video_id: 0 for video_id in SPLIT_VIDEOS}
    for video_id, _ in items_of(split_store):
        per_video[video_id] += 1
    assert per_video == {video_id: items for video_id, (_, items) in SPLIT_VIDEOS.items()}
    # The trap of item 6: the attribute lists every type name, the items hold manual only.
    attrs = zarr.open_group(split_store, mode="r").attrs["prebake"]
    assert attrs["masklet_types"] == ["manual", "auto"]  # type: ignore[index]


def test_clip_longer_than_the_longest_video(split_store: Path) -> None:
    assert len(PrebakedDataset(split_store, clip_len=LONGEST, fields=())) == 1
    with raises(
        f"the dataset is empty: clip_len={LONGEST + 1} is longer than the longest video "
        f"({LONGEST} annotated frames)"
    ):
        PrebakedDataset(split_store, clip_len=LONGEST + 1)


def test_min_prompt_cells_past_the_largest_prompt(split_store: Path) -> None:
    largest = largest_prompt(split_store)
    assert 0 < largest < 256
    assert len(PrebakedDataset(split_store, min_prompt_cells=largest, fields=())) >= 1
    with raises(
        f"min_prompt_cells={largest + 1} is more than the largest prompt any item has "
        f"({largest} cells)"
    ):
        PrebakedDataset(split_store, min_prompt_cells=largest + 1)


def test_masklet_types_name_the_types_the_items_hold(split_store: Path) -> None:
    with raises("masklet_types=['auto'] keeps none: the store holds types ['manual']"):
        PrebakedDataset(split_store, masklet_types=("auto",))
    with raises("unknown masklet types ['manul']; the store holds ['manual']"):
        PrebakedDataset(split_store, masklet_types="manul")
    assert len(PrebakedDataset(split_store, masklet_types="manual", fields=())) == 7


def test_options_that_together_leave_nothing(split_store: Path) -> None:
    # Each keeps items alone: clip_len=4 those of sav_950002, videos= those of sav_950001.
    assert len(PrebakedDataset(split_store, clip_len=4, fields=())) == 1
    with raises(
        "clip_len=4 and videos= (keeping 1 video) together leave no items (clip_len=4 is "
        "longer than the longest video of the 3 items the other options keep (3 annotated "
        "frames); videos= keeps none of the 1 video of the 1 item the other options keep)"
    ):
        PrebakedDataset(split_store, clip_len=4, videos=["sav_950001"])


def test_a_store_without_items_is_not_an_error(tmp_path: Path) -> None:
    disc = SampleObject("manual", "disc", (230, 60, 40), (0.4, 0.5), (0.0, 0.0), 0.3)
    src = write_sample(tmp_path / "src", "train", [SampleVideo("sav_960001", 64, 64, 5, (disc,))])
    (src / "sav_960001.mp4").write_bytes(b"not a video")
    store = build_store(src, tmp_path / "store.zarr")
    assert items_of(store) == []
    dataset = PrebakedDataset(store, clip_len=3, masklet_types="auto", min_prompt_cells=9)
    assert len(dataset) == 0 and list(dataset) == []


# -- videos= ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "videos",
    [["sav_950002"], "sav_950002", {"sav_950002", "sav_950003"}, lambda v: v.endswith("2")],
)
def test_videos_keeps_exactly_their_items(split_store: Path, videos: object) -> None:
    dataset = PrebakedDataset(split_store, fields=("prompt_masks",), videos=videos)  # type: ignore[arg-type]
    expected = [key for key in items_of(split_store) if key[0] == "sav_950002"]
    assert [(s["video_id"], s["frame_index"]) for s in dataset] == expected
    assert len(expected) == SPLIT_VIDEOS["sav_950002"][1]


def test_videos_split_is_a_partition(split_store: Path) -> None:
    """A 1-in-2 split by a callable and its complement cover every item once."""
    train = PrebakedDataset(split_store, fields=(), videos=lambda v: v != "sav_950001")
    val = PrebakedDataset(split_store, fields=(), videos=lambda v: v == "sav_950001")
    assert train.videos == ("sav_950002", "sav_950003") and val.videos == ("sav_950001",)
    keys = [(s["video_id"], s["frame_index"]) for s in (*train, *val)]
    assert sorted(keys) == sorted(items_of(split_store))


def test_unknown_video_ids_are_named(split_store: Path) -> None:
    with raises(
        "videos= names 4 video ids the store does not hold: sav_1, sav_2, sav_3 and 1 more "
        "(it holds 3 videos"
    ):
        PrebakedDataset(split_store, videos=["sav_950001", "sav_4", "sav_3", "sav_2", "sav_1"])


def test_videos_that_leave_nothing(split_store: Path) -> None:
    with raises("videos= keeps none of the store's 3 videos"):
        PrebakedDataset(split_store, videos=lambda v: False)
    with raises("videos= keeps only videos without items (sav_950003: failed)"):
        PrebakedDataset(split_store, videos=["sav_950003"])
    with pytest.raises(TypeError, match="collection of video ids or a callable"):
        PrebakedDataset(split_store, videos=3)  # type: ignore[arg-type]


def test_a_lambda_split_pickles_into_spawned_workers(split_store: Path) -> None:
    dataset = PrebakedDataset(split_store, fields=("prompt_masks",), videos=lambda v: "2" in v)
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.videos == ("sav_950002",) and len(clone) == 4
    loader = DataLoader(
        dataset,
        batch_size=2,
        num_workers=1,
        multiprocessing_context=multiprocessing.get_context("spawn"),
        timeout=120,  # seconds a batch may take: a stuck worker fails the test, never hangs it
    )
    seen = [
        (v, int(f))
        for batch in loader
        for v, f in zip(*(batch["video_id"], batch["frame_index"]), strict=True)
    ]
    assert seen == [key for key in items_of(split_store) if key[0] == "sav_950002"]
