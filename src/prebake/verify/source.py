"""Against the source (`prebake verify --src`): sampled items re-derived with the reference
decoder (OpenCV for mp4s, as the trainers read SA-V) and transforms, resized by the store's
Pillow rule, and compared with the store bit for bit."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from prebake import transforms
from prebake.errors import PrebakeError
from prebake.storage import storage_options_of
from prebake.store.rows import RowError
from prebake.verify.context import VerifyContext, sample


def pillow_rule(params: dict[str, Any]) -> Any:
    """The Pillow rule a store was baked with (a store from before the rule was recorded: 13)."""
    return params.get("pillow_rule", transforms.DEFAULT_PILLOW_RULE)


def check_source(context: VerifyContext) -> bool:
    """Sampled items (`samples`; None: every item and every frame) re-derived from the source
    with the reference decoder and transforms, and compared bit for bit."""
    from prebake.progress import progress_bar
    from prebake.sources import discover, open_video

    if pillow_rule(context.params) not in transforms.PILLOW_RULES:
        return True  # reported with the attributes: nothing can be re-derived by an unknown rule
    src, samples = context.src, context.samples
    assert src is not None
    t = context.tables
    item_count = len(t["items/mask_row"])
    chosen = sample(np.arange(item_count), samples, seed=2).tolist()
    wanted_items: dict[int, list[int]] = defaultdict(list)
    for item in chosen:
        wanted_items[int(t["items/video"][item])].append(item)
    wanted_frames: dict[int, set[int]] = defaultdict(set)
    for video, its in wanted_items.items():
        wanted_frames[video].update(
            int(t["items/frame_row"][i]) - int(t["videos/frame_row"][video]) for i in its
        )
    if samples is None:  # every frame too, including frames where no masklet is visible
        for video in np.flatnonzero(t["videos/status"] == "ok").tolist():
            wanted_frames[video].update(range(int(t["videos/frames"][video])))
    refs = {
        ref.video_id: ref
        for ref in discover(
            src,
            layout=context.params.get("layout", "auto"),
            masklets=context.params.get("masklets", "manual"),
        )
    }
    frames_done = items_done = 0
    decoders: set[str] = set()
    total = sum(len(frames) for frames in wanted_frames.values())
    with progress_bar(
        total=total, desc="source", unit="frame", disable=not context.progress
    ) as bar:
        for video in sorted(wanted_frames):
            video_id = context.video_ids[video]
            if video_id not in refs:
                context.problem(
                    f"videos row {video} ({video_id}): not found under {src}; cannot re-derive its items"
                )
                continue
            try:
                source_video = open_video(refs[video_id], storage_options_of(src))
                decoders.add(source_video.reference_decoder)
                done = _rederive_video(
                    context,
                    source_video,
                    video,
                    sorted(wanted_frames[video]),
                    wanted_items[video],
                    bar,
                )
            except PrebakeError as error:
                context.problem(f"source of {video_id}: {error}")
                continue
            frames_done += done[0]
            items_done += done[1]
    context.report.source = {
        "src": str(src),
        "frames_checked": frames_done,
        "items_checked": items_done,
        "items_sampled": len(chosen),
        "items": item_count,
        "decoders": sorted(decoders),
        "pillow_rule": pillow_rule(context.params),
    }
    return True


def _rederive_video(
    context: VerifyContext,
    video: Any,
    video_row: int,
    frames: list[int],
    items: list[int],
    bar: Any,
) -> tuple[int, int]:
    t = context.tables
    first_row = int(t["videos/frame_row"][video_row])
    stored = (
        int(t["videos/width"][video_row]),
        int(t["videos/height"][video_row]),
        int(t["videos/frames"][video_row]),
    )
    if (video.width, video.height, len(video.frame_indices)) != stored:
        context.problem(
            f"videos row {video_row} ({video.video_id}): source is {video.width}x{video.height} with "
            f"{len(video.frame_indices)} annotated frames, the store says {stored[0]}x{stored[1]} with {stored[2]}"
        )
        return 0, 0
    masklet_index = {(m.type, m.id): k for k, m in enumerate(video.masklets)}
    items_at: dict[int, list[int]] = defaultdict(list)
    for item in items:
        items_at[int(t["items/frame_row"][item]) - first_row].append(item)
    wanted = set(frames)
    last = max(wanted) if wanted else -1
    frames_done = items_done = 0
    pillow = pillow_rule(context.params)
    decoder = video.reference_decoder
    for time_index, frame in _frames_until(video.iter_reference_frames(), last):
        if time_index not in wanted:
            continue
        row = first_row + time_index
        if int(t["frames/frame_index"][row]) != video.frame_indices[time_index]:
            context.problem(
                f"frames/frame_index {context.frame_label(row)}: source frame index is {video.frame_indices[time_index]}"
            )
        # v2 stores the 448 image's uint8 levels (served through the table), v1 the float32.
        pixel = transforms.pixel_levels if context.version >= 2 else transforms.pixel_values
        derive = {"pixel_values": pixel, "g_pixel_values": transforms.g_pixel_values}
        label = (
            f"{context.frame_label(row)} [frame decoded by {decoder}, resized as Pillow {pillow}]"
        )
        for name, make in derive.items():
            if name in context.fields:
                _compare(context, name, row, make(frame, pillow), label)
        frames_done += 1
        for item in items_at[time_index]:
            kind = context.attrs["masklet_types"][int(t["items/masklet_type"][item])]
            k = masklet_index.get((kind, int(t["items/masklet_id"][item])))
            label = context.item_label(item)
            if k is None:
                context.problem(f"items {label}: the source has no such masklet")
                continue
            mask = video.mask(time_index, k)
            if int(np.count_nonzero(mask)) != int(t["items/area"][item]):
                context.problem(
                    f"items/area {label}: {int(t['items/area'][item])}, the source mask has {int(np.count_nonzero(mask))} pixels on"
                )
            row = int(t["items/mask_row"][item])
            prompt = transforms.prompt_masks(mask)
            if int(prompt.sum()) != int(t["items/prompt_cells"][item]):
                context.problem(
                    f"items/prompt_cells {label}: {int(t['items/prompt_cells'][item])}, the source mask's prompt has {int(prompt.sum())} cells on"
                )
            if "masks" in context.fields:
                _compare(context, "masks", row, transforms.masks(mask), label)
            if "prompt_masks" in context.fields:
                _compare(context, "prompt_masks", row, prompt, label)
            items_done += 1
        bar.update(1)
    return frames_done, items_done


def _frames_until(
    frames: Iterator[tuple[int, Image.Image]], last: int
) -> Iterable[tuple[int, Image.Image]]:
    """Stop decoding after the last frame needed (closing the decoder)."""
    try:
        for time_index, frame in frames:
            if time_index > last:
                return
            yield time_index, frame
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def _compare(context: VerifyContext, name: str, row: int, derived: np.ndarray, label: str) -> None:
    if row in context.damaged[name]:
        return  # already reported by the integrity check
    try:
        stored = context.readers[name].read(row)
    except RowError as error:
        context.problem(str(error))
        return
    if stored.shape != derived.shape or stored.tobytes() != derived.tobytes():
        differ = (
            int(np.count_nonzero(stored != derived))
            if stored.shape == derived.shape
            else stored.size
        )
        largest = (
            float(np.abs(stored.astype(np.float64) - derived.astype(np.float64)).max())
            if stored.shape == derived.shape
            else float("nan")
        )
        context.problem(
            f"{name} {label}: differs from its re-derivation from the source ({differ} of {derived.size} values, largest difference {largest:g})"
        )
