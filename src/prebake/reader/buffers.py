"""`PrebakedLoader`'s batch buffers, and what happens on the device.

A batch is filled in place: each field has one preallocated host tensor (B, ...) per batch of
the loader's ring, reused from epoch to epoch (pinned when the batches go to a CUDA device), and
threads write rows straight into its slots (`PrebakedDataset.read_into`). For the CPU the host
tensors hold the served dtypes (`OUTPUT_DTYPES`). For a CUDA device they hold what the store
holds, so that uint8 crosses PCIe as uint8 (a quarter of float32's bytes): a schema v2 store's
`pixel_values` levels are looked up in the normalization table there and `masks` (0/1) become
float32 there, on a side stream, with non-blocking copies (`DeviceCopies`). `served` does that
conversion on any device, the same function the tests run on the CPU against the dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prebake.reader.dataset import OUTPUT_DTYPES, PrebakedDataset
from prebake.reader.rows import page_aligned_empty
from prebake.store.schema import array_specs
from prebake.transforms import pixel_table


def host_dtypes(dataset: PrebakedDataset, device: torch.device) -> dict[str, torch.dtype]:
    """The dtype each field is filled in on the host: as served for the CPU; for CUDA, uint8
    where the device converts (a v2 store's `pixel_values` levels, `masks`)."""
    dtypes = {name: OUTPUT_DTYPES[name] for name in dataset.fields}
    if device.type == "cuda":
        if (
            "pixel_values" in dtypes
            and array_specs(dataset.version)["pixel_values"].dtype == "uint8"
        ):
            dtypes["pixel_values"] = torch.uint8
        if "masks" in dtypes:
            dtypes["masks"] = torch.uint8
    return dtypes


def lookup_levels(levels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """`table[c][levels[..., c, :, :]]`: uint8 levels (..., 3, H, W) to float32 through a (3, 256)
    float32 table on the same device, exactly (a gather copies the table's values)."""
    channels = table.shape[0]
    offsets = torch.arange(channels, device=levels.device, dtype=torch.int64).mul_(256)
    return table.reshape(-1)[levels.to(torch.int64) + offsets.view(channels, 1, 1)]


def served(name: str, values: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
    """A batch field as `PrebakedDataset` serves it, from the host dtype that crossed: uint8
    `pixel_values` levels through `table`, uint8 `masks` to float32 0.0/1.0; else unchanged."""
    if name == "pixel_values" and values.dtype == torch.uint8:
        if table is None:
            raise ValueError("uint8 pixel_values need the normalization table")
        return lookup_levels(values, table)
    if name == "masks" and values.dtype == torch.uint8:
        return values.to(torch.float32)
    return values


class BatchBuffers:
    """One batch's host tensors, (batch_size, *row shape) per field, and numpy views of them."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, torch.dtype],
        batch_size: int,
        pin: bool,
    ) -> None:
        # Pinned memory is page-aligned; so are the others (a faster pread target).
        self.tensors = {
            name: torch.empty((batch_size, *shape), dtype=dtypes[name], pin_memory=True)
            if pin
            else page_aligned_empty((batch_size, *shape), dtypes[name])
            for name, shape in shapes.items()
        }
        self.arrays = {name: tensor.numpy() for name, tensor in self.tensors.items()}
        self.copied: Any = None  # CUDA event: the last copy out of these buffers is done

    def slot(self, position: int) -> dict[str, np.ndarray]:
        return {name: array[position] for name, array in self.arrays.items()}

    def wait_copied(self) -> None:
        """Block until the device has copied these buffers out (before they are refilled)."""
        if self.copied is not None:
            self.copied.synchronize()
            self.copied = None


class DeviceCopies:
    """Host batches to a CUDA device on a side stream: non-blocking copies from pinned buffers,
    converted there (`served`); the consumer's stream waits for them before it uses them."""

    def __init__(self, device: torch.device, dataset: PrebakedDataset) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        needs_table = "pixel_values" in dataset.fields
        self.table = pixel_table_tensor(device) if needs_table else None

    def start(self, buffers: BatchBuffers, count: int) -> tuple[dict[str, torch.Tensor], Any]:
        """Issue the copies of the first `count` rows; returns the device tensors (not ready
        until the event) and the event. `buffers` may be refilled once it has completed."""
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            out = {
                name: served(name, tensor[:count].to(self.device, non_blocking=True), self.table)
                for name, tensor in buffers.tensors.items()
            }
            event = self.stream.record_event()
        buffers.copied = event
        return out, event

    def hand_over(self, out: dict[str, torch.Tensor], event: Any) -> dict[str, torch.Tensor]:
        """Make the consumer's current stream wait for the copies; tell the caching allocator
        the tensors are used there (they were made on the side stream)."""
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for tensor in out.values():
            tensor.record_stream(current)
        return out


def pixel_table_tensor(device: torch.device) -> torch.Tensor:
    """The (3, 256) float32 normalization table (`prebake.transforms.pixel_table`) on `device`."""
    return torch.from_numpy(pixel_table().copy()).to(device)
