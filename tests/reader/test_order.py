"""The order items are served in, and resuming it: against DistributedSampler (the reference for
a fresh epoch) and the properties a resumed epoch must have (each item once across the ranks,
the uninterrupted run's batches at the same world size), with PrebakedSampler and
PrebakedLoader (prompt masks only: cheap to read) on the sample store."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from prebake import PrebakedDataset, PrebakedLoader, PrebakedSampler

Key = tuple[str, int, str, int]


def batch_keys(batch: dict[str, Any]) -> list[Key]:
    return list(
        zip(
            batch["video_id"],
            batch["frame_index"].tolist(),
            batch["masklet_type"],
            batch["masklet_id"].tolist(),
            strict=True,
        )
    )


def loaders(store: Path, world_size: int, batch_size: int, **options: Any) -> list[PrebakedLoader]:
    return [
        PrebakedLoader(
            store, batch_size, fields=["prompt_masks"], rank=rank, world_size=world_size, **options
        )
        for rank in range(world_size)
    ]


def lockstep(ranks: list[PrebakedLoader], steps: int | None) -> list[list[list[Key]]]:
    """Each rank's next `steps` batches (all that are left when None), as item keys; the
    iterators are closed after, as a checkpointing job would stop."""
    served = []
    for loader in ranks:
        batches: list[list[Key]] = []
        if steps == 0:
            served.append(batches)
            continue
        for step, batch in enumerate(loader):
            batches.append(batch_keys(batch))
            if steps is not None and step + 1 == steps:
                break
        served.append(batches)
    return served


def flat(per_rank: list[list[list[Key]]]) -> list[Key]:
    return [key for batches in per_rank for batch in batches for key in batch]


def all_keys(store: Path) -> list[Key]:
    dataset = PrebakedDataset(store, fields=["prompt_masks"])
    samples = [dataset[index] for index in range(len(dataset))]
    return [(s["video_id"], s["frame_index"], s["masklet_type"], s["masklet_id"]) for s in samples]


@pytest.fixture(scope="module")
def keys(train_store: Path) -> list[Key]:
    return all_keys(train_store)


# -- a fresh epoch is DistributedSampler's --------------------------------------------------------


@pytest.mark.parametrize("items", [0, 1, 5, 58])
@pytest.mark.parametrize("world_size", [1, 3, 8])
@pytest.mark.parametrize(("shuffle", "drop_last"), [(True, False), (False, False), (True, True)])
def test_sampler_is_distributed_samplers_order(
    items: int, world_size: int, shuffle: bool, drop_last: bool
) -> None:
    data = list(range(items))
    for rank in range(world_size):
        ours = PrebakedSampler(
            data, shuffle=shuffle, seed=7, drop_last=drop_last, rank=rank, world_size=world_size
        )
        theirs = DistributedSampler(
            data, world_size, rank, shuffle=shuffle, seed=7, drop_last=drop_last
        )
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs)
            assert len(ours) == len(theirs)


@pytest.mark.parametrize(("shuffle", "drop_last"), [(True, False), (False, True)])
def test_loader_batches_are_distributed_samplers(
    train_store: Path, shuffle: bool, drop_last: bool
) -> None:
    dataset = PrebakedDataset(train_store, fields=["prompt_masks"])
    ranks = loaders(train_store, 3, 5, shuffle=shuffle, seed=11, drop_last=drop_last)
    for rank, loader in enumerate(ranks):
        sampler = DistributedSampler(
            dataset, 3, rank, shuffle=shuffle, seed=11, drop_last=drop_last
        )
        reference = DataLoader(dataset, batch_size=5, sampler=sampler, drop_last=drop_last)
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            sampler.set_epoch(epoch)
            ours = [batch_keys(batch) for batch in loader]
            theirs = [batch_keys(batch) for batch in reference]
            assert ours == theirs and len(ours) == len(loader)


def test_rank_and_world_size_default_to_torch_distributed(
    train_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (PrebakedLoader(train_store, 4).rank, PrebakedLoader(train_store, 4).world_size) == (
        0,
        1,
    )
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    loader = PrebakedLoader(train_store, 4)
    sampler = PrebakedSampler(range(10))
    assert (loader.rank, loader.world_size) == (sampler.rank, sampler.world_size) == (2, 3)
    with pytest.raises(ValueError, match="rank 3"):
        PrebakedSampler(range(10), rank=3, world_size=3)


# -- resuming -------------------------------------------------------------------------------------

SCENARIOS = [
    # (world size before, after, batches each rank took before the checkpoint)
    (2, 2, 3),
    (8, 6, 1),
    (6, 8, 1),
    (1, 3, 5),
    (3, 1, 2),
    (8, 8, 0),
]


@pytest.mark.parametrize(("before", "after", "steps"), SCENARIOS)
@pytest.mark.parametrize(("shuffle", "drop_last"), [(True, False), (False, False), (True, True)])
def test_resume_serves_the_rest_of_the_epoch_once(
    train_store: Path,
    keys: list[Key],
    before: int,
    after: int,
    steps: int,
    shuffle: bool,
    drop_last: bool,
) -> None:
    batch = 3
    options = {"shuffle": shuffle, "seed": 5, "drop_last": drop_last}
    first = loaders(train_store, before, batch, **options)
    for loader in first:
        loader.set_epoch(4)
    served = lockstep(first, steps)
    states = [loader.state_dict() for loader in first]
    assert all(state == states[0] for state in states)  # one checkpoint serves every rank
    state = json.loads(json.dumps(states[0]))  # plain JSON: a checkpoint file

    resumed = loaders(train_store, after, batch, **options)
    for loader in resumed:
        loader.load_state_dict(state)
        loader.set_epoch(4)  # the training loop's call: the loaded epoch keeps its position
    rest = lockstep(resumed, None)

    if after == before:  # the uninterrupted run's batches, exactly
        assert rest == lockstep(first, None)
    counts = Counter(flat(served) + flat(rest))
    assert set(counts) <= set(keys)
    if drop_last:
        assert max(counts.values()) == 1
        assert len(keys) - len(counts) < after * batch  # only a last short round is dropped
        assert all(len(b) == batch for batches in served + rest for b in batches)
    else:
        assert set(counts) == set(keys)  # every item served
        assert sum(counts.values()) - len(keys) < after  # repeats: the padding alone

    # The next epoch is a fresh one at the new world size, the same as a run that never stopped.
    for loader in resumed:
        assert loader.epoch == 5
    fresh = loaders(train_store, after, batch, **options)
    for loader in fresh:
        loader.set_epoch(5)
    assert lockstep(resumed, None) == lockstep(fresh, None)


def test_resume_twice_across_world_sizes(train_store: Path, keys: list[Key]) -> None:
    """8 GPUs, then 6, then 4: each checkpoint's rest is served once."""
    served: list[Key] = []
    state = None
    for world_size, steps in ((8, 1), (6, 1), (4, None)):
        ranks = loaders(train_store, world_size, 2, seed=1)
        for loader in ranks:
            if state is not None:
                loader.load_state_dict(state)
        served += flat(lockstep(ranks, steps))
        state = ranks[0].state_dict()
    counts = Counter(served)
    assert set(counts) == set(keys) and sum(counts.values()) - len(keys) < 4
    assert state is not None and state["epoch"] == 1 and state["served"] == 0


def test_resume_in_a_new_process(train_store: Path) -> None:
    loader = PrebakedLoader(train_store, 4, fields=["prompt_masks"], seed=9)
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    state = loader.state_dict()
    expected = [batch_keys(batch) for batch in iterator]
    script = (
        "import json, sys\n"
        "from prebake import PrebakedLoader\n"
        f"loader = PrebakedLoader({str(train_store)!r}, 4, fields=['prompt_masks'], seed=9)\n"
        "loader.load_state_dict(json.loads(sys.argv[1]))\n"
        "rows = [[list(k) for k in zip(b['video_id'], b['frame_index'].tolist(), "
        "b['masklet_type'], b['masklet_id'].tolist())] for b in loader]\n"
        "print(json.dumps(rows))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = [[tuple(key) for key in batch] for batch in json.loads(result.stdout)]
    assert got == expected


def test_state_positions_and_refusals(train_store: Path) -> None:
    loader = PrebakedLoader(train_store, 4, fields=["prompt_masks"])
    items = len(loader.dataset)
    assert loader.state_dict() == {
        "items": items, "seed": 0, "shuffle": True, "drop_last": False, "epoch": 0, "served": 0
    }  # fmt: skip
    iterator = iter(loader)
    next(iterator)
    next(iterator)
    assert loader.state_dict()["served"] == 8
    del iterator  # left early: the position of the batches handed out stays
    assert loader.state_dict()["served"] == 8
    assert sum(len(batch["video_id"]) for batch in loader) == items - 8
    assert loader.state_dict() == {**loader.state_dict(), "epoch": 1, "served": 0}
    loader.set_epoch(3)
    assert loader.epoch == 3
    for bad in ({"seed": 1}, {"items": items + 1}, {"shuffle": False}, {"served": items + 1}):
        with pytest.raises(ValueError):
            loader.load_state_dict({**loader.state_dict(), **bad})
    with pytest.raises(ValueError, match="lacks"):
        loader.load_state_dict({"epoch": 0})


def test_sampler_state_with_a_dataloader(train_store: Path) -> None:
    """A DataLoader with workers draws indices ahead: the loop tells the sampler what it got."""
    dataset = PrebakedDataset(train_store, fields=["prompt_masks"])
    sampler = PrebakedSampler(dataset, seed=2, world_size=2, rank=1)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler)
    batches = iter(loader)
    for _ in range(3):
        next(batches)
    state = sampler.state_dict(consumed=3 * 4)
    rest = [batch_keys(batch) for batch in batches]
    resumed = PrebakedSampler(dataset, seed=2, world_size=2, rank=1)
    resumed.load_state_dict(state)
    assert [batch_keys(b) for b in DataLoader(dataset, batch_size=4, sampler=resumed)] == rest
    assert sampler.state_dict() == {**state, "epoch": 1, "served": 0}


def test_sampler_state_after_its_indices_were_all_drawn(train_store: Path) -> None:
    """A DataLoader's workers may draw the whole pass before the loop has its first batches
    (a small store, prefetch): the state of what the loop consumed still counts in that pass."""
    dataset = PrebakedDataset(train_store, fields=["prompt_masks"])
    drawn_all = PrebakedSampler(dataset, seed=5, world_size=2, rank=0)
    assert len(list(drawn_all)) == len(drawn_all)
    drawn_four = PrebakedSampler(dataset, seed=5, world_size=2, rank=0)
    indices = iter(drawn_four)
    for _ in range(4):
        next(indices)
    assert drawn_all.state_dict(consumed=4) == drawn_four.state_dict()
    assert drawn_all.state_dict()["epoch"] == 1  # every index yielded: the pass is complete
