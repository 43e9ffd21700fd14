"""PrebakedDataset: issue 3's contract, checked against what zarr-python reads from the store."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference
import torch
import zarr
from helpers.stores import build_store, video_ids
from torch.utils.data import DataLoader, DistributedSampler

from prebake.demo import SampleObject, SampleVideo, write_sample
from prebake.errors import StoreError
from prebake.reader import FIELDS, LOOP1_FIELDS, LOOP2_FIELDS, METADATA_KEYS, PrebakedDataset

TENSOR_SPECS = {
    "pixel_values": (torch.float32, (3, 448, 448)),
    "g_pixel_values": (torch.uint8, (3, 1024, 1024)),
    "prompt_masks": (torch.bool, (16, 16)),
    "masks": (torch.float32, (1024, 1024)),
}
TABLES = (
    "items/frame_row",
    "items/mask_row",
    "items/video",
    "items/frame_index",
    "items/masklet_id",
    "items/masklet_type",
    "items/prompt_cells",
    "videos/frame_row",
    "videos/frames",
    "frames/frame_index",
)


class StoreView:
    """The store as zarr-python reads it: the reference the reader is checked against."""

    def __init__(self, path: Path) -> None:
        self.root = zarr.open_group(path, mode="r", zarr_format=3)
        self.tables = {name: self.root[name][:] for name in TABLES}  # type: ignore[index]
        self.video_ids = video_ids(self.root)
        self.type_names = self.root.attrs["prebake"]["masklet_types"]  # type: ignore[index]

    def __len__(self) -> int:
        return len(self.tables["items/frame_row"])

    def key(self, item: int) -> tuple[str, int, str, int]:
        t = self.tables
        return (
            self.video_ids[t["items/video"][item]],
            int(t["items/frame_index"][item]),
            self.type_names[int(t["items/masklet_type"][item])],
            int(t["items/masklet_id"][item]),
        )

    def t(self, item: int) -> int:
        video = self.tables["items/video"][item]
        return int(self.tables["items/frame_row"][item] - self.tables["videos/frame_row"][video])

    def row(self, name: str, item: int) -> np.ndarray:
        """What the reader must serve for the item: the stored row, a v2 pixel_values row
        (uint8 levels) normalized by the reference (ToTensor -> Normalize in torch)."""
        table = "items/mask_row" if name in ("prompt_masks", "masks") else "items/frame_row"
        return self.frame_row(name, int(self.tables[table][item]))

    def frame_row(self, name: str, row: int) -> np.ndarray:
        values = np.asarray(self.root[name][row])  # type: ignore[index]
        if name == "pixel_values" and values.dtype == np.uint8:
            return reference.pixel_values_of(values.transpose(1, 2, 0))
        return values

    def find(self, video: int, t: int, masklet_type: int, masklet_id: int) -> int | None:
        tables = self.tables
        for item in range(len(self)):
            if (
                tables["items/video"][item] == video
                and self.t(item) == t
                and tables["items/masklet_type"][item] == masklet_type
                and tables["items/masklet_id"][item] == masklet_id
            ):
                return item
        return None


@pytest.fixture(scope="module")
def view(train_store: Path) -> StoreView:
    return StoreView(train_store)


def sample_key(sample: dict[str, Any]) -> tuple[str, int, str, int]:
    frame_index = sample["frame_index"]
    frame_index = int(frame_index[0]) if isinstance(frame_index, torch.Tensor) else frame_index
    return (sample["video_id"], frame_index, sample["masklet_type"], sample["masklet_id"])


def linked_copy(
    store: Path, out: Path, *, copy: tuple[str, ...] = (), skip: tuple[str, ...] = ()
) -> Path:
    """A store sharing the original's files by symlink, but those copied (to alter) or skipped."""
    out.mkdir()
    for child in store.iterdir():
        if child.name in skip:
            continue
        if child.name in copy:
            (shutil.copytree if child.is_dir() else shutil.copy)(child, out / child.name)
        else:
            (out / child.name).symlink_to(child)
    return out


def assert_bitwise_equal(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert left.keys() == right.keys()
    for key, value in left.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == right[key].dtype and value.shape == right[key].shape, key
            assert value.numpy().tobytes() == right[key].numpy().tobytes(), key
        else:
            assert value == right[key], key


# -- contract -------------------------------------------------------------------------------------


def test_every_item_holds_what_the_store_holds(train_store: Path, view: StoreView) -> None:
    dataset = PrebakedDataset(train_store)
    assert len(dataset) == len(view) > 0
    assert dataset.read_paths == {
        "pixel_values": "pread",
        "g_pixel_values": "pread",
        "prompt_masks": "pread",
        "masks": "pread+zstd",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's non-writable-array warning
        samples = [dataset[i] for i in range(len(dataset))]
    for item, sample in enumerate(samples):
        assert list(sample) == [*FIELDS, *METADATA_KEYS]
        for name, (dtype, shape) in TENSOR_SPECS.items():
            assert sample[name].dtype == dtype and tuple(sample[name].shape) == shape, name
            expected = view.row(name, item)
            if name == "masks":
                expected = expected.astype(np.float32)
            np.testing.assert_array_equal(sample[name].numpy(), expected, err_msg=name)
        assert set(torch.unique(sample["masks"]).tolist()) <= {0.0, 1.0}
        assert sample["masks"].sum() > 0  # every item's masklet is present on its frame
        assert sample_key(sample) == view.key(item)
        assert type(sample["frame_index"]) is int and type(sample["masklet_id"]) is int


def test_item_order_negative_index_and_bounds(train_store: Path, view: StoreView) -> None:
    dataset = PrebakedDataset(train_store, fields=())
    assert sample_key(dataset[-1]) == view.key(len(view) - 1)
    assert sample_key(dataset[np.int64(3)]) == view.key(3)
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    assert [sample_key(s) for s in dataset] == [view.key(i) for i in range(len(view))]


@pytest.mark.parametrize("fields", [LOOP1_FIELDS, LOOP2_FIELDS, ("masks",), ()])
def test_field_subsets_read_only_their_arrays(
    train_store: Path, view: StoreView, tmp_path: Path, fields: tuple[str, ...]
) -> None:
    # The arrays not asked for are absent from this store: reading them would fail.
    store = linked_copy(
        train_store, tmp_path / "subset.zarr", skip=tuple(set(FIELDS) - set(fields))
    )
    dataset = PrebakedDataset(store, fields=fields)
    for item in (0, len(dataset) // 2, len(dataset) - 1):
        sample = dataset[item]
        assert list(sample) == [*fields, *METADATA_KEYS]
        for name in fields:
            np.testing.assert_array_equal(sample[name].numpy(), view.row(name, item))


def test_bad_arguments_are_refused(train_store: Path) -> None:
    with pytest.raises(ValueError, match="unknown fields"):
        PrebakedDataset(train_store, fields=("pixels",))
    with pytest.raises(ValueError, match="unknown masklet types"):
        PrebakedDataset(train_store, masklet_types=("manul",))
    with pytest.raises(ValueError, match="clip_len"):
        PrebakedDataset(train_store, clip_len=0)
    with pytest.raises(ValueError, match="min_prompt_cells"):
        PrebakedDataset(train_store, min_prompt_cells=-1)


# -- filters --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("masklet_types", "min_prompt_cells"),
    [(("manual",), 0), (("auto",), 0), (None, 4), (("manual",), 12), (("manual", "auto"), 0)],
)
def test_filters_keep_exactly_the_matching_items(
    train_store: Path, view: StoreView, masklet_types: tuple[str, ...] | None, min_prompt_cells: int
) -> None:
    dataset = PrebakedDataset(
        train_store,
        fields=("prompt_masks",),
        masklet_types=masklet_types,
        min_prompt_cells=min_prompt_cells,
    )
    expected = [
        view.key(item)
        for item in range(len(view))
        if (masklet_types is None or view.key(item)[2] in masklet_types)
        and view.tables["items/prompt_cells"][item] >= min_prompt_cells
    ]
    samples = list(dataset)
    assert [sample_key(s) for s in samples] == expected
    assert 0 < len(expected) < len(view) or masklet_types == ("manual", "auto")
    assert all(int(s["prompt_masks"].sum()) >= min_prompt_cells for s in samples)


# -- clips ----------------------------------------------------------------------------------------


def expected_clip_starts(view: StoreView, clip_len: int) -> list[int]:
    frames = view.tables["videos/frames"]
    return [
        i for i in range(len(view)) if view.t(i) + clip_len <= frames[view.tables["items/video"][i]]
    ]


def check_clip(view: StoreView, sample: dict[str, Any], start: int, clip_len: int) -> None:
    tables = view.tables
    video, t = int(tables["items/video"][start]), view.t(start)
    masklet_type, masklet_id = (
        int(tables["items/masklet_type"][start]),
        int(tables["items/masklet_id"][start]),
    )
    assert sample_key(sample) == view.key(start)
    assert sample["present"].dtype == torch.bool and tuple(sample["present"].shape) == (clip_len,)
    assert bool(sample["present"][0])  # the clip's first frame has the masklet
    frame_rows = int(tables["videos/frame_row"][video]) + t + np.arange(clip_len)
    assert sample["frame_index"].tolist() == tables["frames/frame_index"][frame_rows].tolist()
    for step in range(clip_len):
        for name in ("pixel_values", "g_pixel_values"):
            np.testing.assert_array_equal(
                sample[name][step].numpy(), view.frame_row(name, int(frame_rows[step]))
            )  # type: ignore[index]
        item = view.find(video, t + step, masklet_type, masklet_id)
        assert bool(sample["present"][step]) == (item is not None)
        for name in ("prompt_masks", "masks"):
            expected = np.zeros(TENSOR_SPECS[name][1]) if item is None else view.row(name, item)
            np.testing.assert_array_equal(sample[name][step].numpy(), expected)


@pytest.mark.parametrize("clip_len", [1, 3])
def test_clips_of_the_sample(train_store: Path, view: StoreView, clip_len: int) -> None:
    dataset = PrebakedDataset(train_store, clip_len=clip_len)
    starts = expected_clip_starts(view, clip_len)
    assert len(dataset) == len(starts)
    assert list(dataset[0]) == [*FIELDS, *METADATA_KEYS, "present"]
    for name, (dtype, shape) in TENSOR_SPECS.items():
        assert dataset[0][name].dtype == dtype and tuple(dataset[0][name].shape) == (
            clip_len,
            *shape,
        )
    for index in (0, len(starts) // 2, len(starts) - 1):
        check_clip(view, dataset[index], starts[index], clip_len)
    frames = view.tables["videos/frames"]
    longest = int(frames.max())
    with pytest.raises(ValueError, match=f"longer than the longest video .{longest} annotated"):
        PrebakedDataset(train_store, clip_len=longest + 1, fields=())


@pytest.fixture(scope="module")
def gappy_store(module_folder: Path) -> Path:
    """Masklets that vanish and appear mid-video, so clips have absent frames."""
    early = SampleObject(
        "manual", "disc", (230, 60, 40), (0.3, 0.4), (0.01, 0.0), 0.2, visible=(0, 2)
    )
    late = SampleObject("manual", "box", (40, 200, 90), (0.6, 0.6), (0.0, 0.0), 0.2, visible=(2, 4))
    middle = SampleObject(
        "auto", "disc", (20, 20, 220), (0.5, 0.3), (0.0, 0.01), 0.15, visible=(1, 3)
    )
    videos = [
        SampleVideo("sav_800001", 160, 128, 21, (early, late, middle)),  # 6 annotated frames
        SampleVideo("sav_800002", 128, 160, 9, (late, early)),  # 3 annotated frames
    ]
    root = module_folder
    src = write_sample(root / "src", "train", videos)
    return build_store(src, root / "store.zarr", frames_per_shard=4, items_per_shard=4)


def test_clips_with_absent_frames_and_video_ends(gappy_store: Path) -> None:
    view = StoreView(gappy_store)
    clip_len = 4
    dataset = PrebakedDataset(gappy_store, clip_len=clip_len)
    starts = expected_clip_starts(view, clip_len)
    assert len(dataset) == len(starts) > 0
    absent = 0
    for index, start in enumerate(starts):
        sample = dataset[index]
        check_clip(view, sample, start, clip_len)
        absent += int((~sample["present"]).sum())
        assert sample["masks"][~sample["present"]].abs().sum() == 0
    assert absent > 0
    # The second video has 3 annotated frames: too short for a clip of 4.
    assert all(dataset[i]["video_id"] == "sav_800001" for i in range(len(dataset)))


def test_clip_filters_apply_to_the_first_frame(gappy_store: Path) -> None:
    view = StoreView(gappy_store)
    dataset = PrebakedDataset(gappy_store, clip_len=2, masklet_types=("auto",), fields=("masks",))
    starts = [i for i in expected_clip_starts(view, 2) if view.key(i)[2] == "auto"]
    assert [sample_key(s) for s in dataset] == [view.key(i) for i in starts]


# -- fast path against the zarr-python fallback ---------------------------------------------------


@pytest.mark.parametrize("clip_len", [None, 3])
def test_fast_path_equals_fallback_bitwise(train_store: Path, clip_len: int | None) -> None:
    fast = PrebakedDataset(train_store, clip_len=clip_len)
    slow = PrebakedDataset(train_store, clip_len=clip_len, fast=False)
    assert set(slow.read_paths.values()) == {"zarr"}
    indices = range(len(fast)) if clip_len is None else (0, len(fast) // 2, len(fast) - 1)
    for index in indices:
        assert_bitwise_equal(fast[index], slow[index])


@pytest.mark.parametrize(
    ("codec", "read_path"),
    [(zarr.codecs.GzipCodec(level=1), "zarr"), (zarr.codecs.ZstdCodec(level=1), "pread+zstd")],
)
def test_compressed_images_are_read_right(
    train_store: Path, tmp_path: Path, codec: Any, read_path: str
) -> None:
    """A compressor the fast path does not decode falls back to zarr-python on its own."""
    store = linked_copy(
        train_store, tmp_path / "compressed.zarr", copy=("zarr.json",), skip=("pixel_values",)
    )
    source = zarr.open_array(train_store / "pixel_values", mode="r")
    target = zarr.open_group(store, mode="r+").create_array(
        "pixel_values",
        shape=source.shape,
        dtype=source.dtype,
        chunks=(1, 3, 448, 448),
        shards=source.shards,
        compressors=[codec],
        fill_value=0.0,
    )
    target[:] = source[:]
    dataset = PrebakedDataset(store)
    assert dataset.read_paths["pixel_values"] == read_path
    assert dataset.read_paths["g_pixel_values"] == "pread"
    reference = PrebakedDataset(train_store)
    for index in range(0, len(dataset), 7):
        assert_bitwise_equal(dataset[index], reference[index])


def test_checksums(train_store: Path, tmp_path: Path) -> None:
    store = linked_copy(train_store, tmp_path / "corrupt.zarr", copy=("pixel_values", "masks"))
    for name in ("pixel_values", "masks"):
        shard = store / name / "c" / "0" / "0" / "0"
        shard = shard / "0" if name == "pixel_values" else shard
        with shard.open("r+b") as handle:  # flip one byte of row 0's data
            handle.seek(100)
            byte = handle.read(1)
            handle.seek(100)
            handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(StoreError, match="crc32c mismatch"):
        PrebakedDataset(store, fields=("masks",))[0]
    # Raw image chunks are trusted by default (prebake verify checks them), checked on demand.
    PrebakedDataset(store, fields=("pixel_values",))[0]
    with pytest.raises(StoreError, match="crc32c mismatch"):
        PrebakedDataset(store, fields=("pixel_values",), verify_checksums=True)[0]


# -- store states, pickling, open files -----------------------------------------------------------


def test_incomplete_or_missing_store_is_refused(train_store: Path, tmp_path: Path) -> None:
    store = linked_copy(train_store, tmp_path / "building.zarr", copy=("zarr.json",))
    metadata = json.loads((store / "zarr.json").read_text())
    metadata["attributes"]["prebake"]["state"] = "building"
    (store / "zarr.json").write_text(json.dumps(metadata))
    with pytest.raises(StoreError, match="incomplete"):
        PrebakedDataset(store)
    with pytest.raises(StoreError, match="no such store"):
        PrebakedDataset(tmp_path / "absent.zarr")


def test_pickles_small_and_reopens(train_store: Path, view: StoreView) -> None:
    dataset = PrebakedDataset(train_store, clip_len=2, masklet_types=("manual",))
    before = pickle.dumps(dataset)
    first = dataset[1]
    after = pickle.dumps(dataset)
    assert len(before) < 2048 and len(after) < 2048  # parameters only: no tables, no data
    clone = pickle.loads(after)
    assert len(clone) == len(dataset)
    assert_bitwise_equal(clone[1], first)


def store_files_open(store: Path) -> int:
    """Descriptors (and memory maps) this process holds on the store's files."""
    root = str(store.resolve())
    targets = []
    for link in Path("/proc/self/fd").iterdir():
        try:
            targets.append(str(link.readlink()))
        except OSError:  # closed since listed
            continue
    maps = [line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()]
    return len([t for t in targets if t.startswith(root)]) + len({m for m in maps if root in m})


def test_open_shards_are_bounded(train_store: Path) -> None:
    already = store_files_open(train_store)
    dataset = PrebakedDataset(train_store, max_open_shards=3)
    for index in range(len(dataset)):
        dataset[index]
        assert store_files_open(train_store) <= already + 3
    assert store_files_open(train_store) == already + 3  # more shards than 3: the LRU evicted
    del dataset
    assert store_files_open(train_store) == already  # closed with the dataset


# -- DataLoader, workers, samplers ----------------------------------------------------------------


@pytest.mark.parametrize(("context", "fast"), [("fork", True), ("spawn", True), ("fork", False)])
def test_dataloader_epoch_with_two_workers(
    train_store: Path, view: StoreView, context: str, fast: bool
) -> None:
    dataset = PrebakedDataset(train_store, fast=fast)
    dataset[0]  # the parent opened its files (and zarr) before forking: workers open their own
    loader = DataLoader(
        dataset,
        batch_size=4,
        shuffle=True,
        num_workers=2,
        multiprocessing_context=multiprocessing.get_context(context),
        persistent_workers=True,
        pin_memory=context == "spawn",
        timeout=120,  # seconds a batch may take: a stuck worker fails the test, never hangs it
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")  # CPU-only torch: no pinning
        for _epoch in range(2):
            seen: Counter[tuple[str, int, str, int]] = Counter()
            for batch in loader:
                assert batch["pixel_values"].shape[1:] == (3, 448, 448)
                assert batch["masks"].dtype == torch.float32
                seen.update(batch_keys(batch))
            assert seen == Counter(view.key(item) for item in range(len(view)))


def batch_keys(batch: dict[str, Any]) -> list[tuple[str, int, str, int]]:
    """(video, frame, masklet type, masklet id) of every item in a collated batch."""
    return [
        (
            batch["video_id"][row],
            int(batch["frame_index"][row]),
            batch["masklet_type"][row],
            int(batch["masklet_id"][row]),
        )
        for row in range(len(batch["video_id"]))
    ]


def test_distributed_sampler_ranks_cover_every_item_once(
    train_store: Path, view: StoreView
) -> None:
    dataset = PrebakedDataset(train_store, fields=LOOP1_FIELDS)
    assert len(dataset) % 2 == 0, "an even count, so DistributedSampler pads nothing"
    seen: Counter[tuple[str, int, str, int]] = Counter()
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        for batch in DataLoader(dataset, batch_size=3, sampler=sampler):
            seen.update(batch_keys(batch))
    assert seen == Counter(view.key(item) for item in range(len(view)))


def test_threads_reading_one_dataset_get_the_same_items(train_store: Path) -> None:
    dataset = PrebakedDataset(train_store, fields=("prompt_masks", "masks"))
    sequential = [dataset[i] for i in range(len(dataset))]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(dataset.__getitem__, range(len(dataset))))
    for left, right in zip(sequential, threaded, strict=True):
        assert_bitwise_equal(left, right)
