"""The training-side reader of a prebake store.

- `rows`: row readers that fill a caller-given buffer with one row (`pread` of shard
  indexes, the zarr-python fallback), per process; glibc's allocator tuning;
- `layout`: how each array is read (byte ranges by `pread`, or through zarr-python), decided at open;
- `items`: which items are served and where their rows are (row tables, filters, clip keys);
- `dataset`: `PrebakedDataset`, items and clips assembled as torch tensors;
- `order`: the order items are served in per epoch and rank, and the position a checkpoint
  saves (`PrebakedSampler`, and `PrebakedLoader`'s order);
- `buffers`: the loader's reused batch buffers and the conversions on a CUDA device;
- `loader`: `PrebakedLoader`, batches filled by threads of the training process.
"""

from prebake.reader.dataset import (
    FIELDS,
    LOOP1_FIELDS,
    LOOP2_FIELDS,
    METADATA_KEYS,
    OUTPUT_DTYPES,
    PrebakedDataset,
)
from prebake.reader.loader import PrebakedLoader
from prebake.reader.order import PrebakedSampler
from prebake.reader.rows import DEFAULT_MAX_OPEN_SHARDS, tune_allocator

__all__ = [
    "DEFAULT_MAX_OPEN_SHARDS",
    "FIELDS",
    "LOOP1_FIELDS",
    "LOOP2_FIELDS",
    "METADATA_KEYS",
    "OUTPUT_DTYPES",
    "PrebakedDataset",
    "PrebakedLoader",
    "PrebakedSampler",
    "tune_allocator",
]
