"""The training-side reader of a prebake store.

- `rows`: row readers that fill a caller-given buffer with one row (memory maps and shard
  indexes, the zarr-python fallback), per process; glibc's allocator tuning;
- `layout`: how each array is read (memory-mapped or through zarr-python), decided at open;
- `items`: which items are served and where their rows are (row tables, filters, clip keys);
- `dataset`: `PrebakedDataset`, items and clips assembled as torch tensors.
"""

from prebake.reader.dataset import (
    FIELDS,
    LOOP1_FIELDS,
    LOOP2_FIELDS,
    METADATA_KEYS,
    OUTPUT_DTYPES,
    PrebakedDataset,
)
from prebake.reader.rows import DEFAULT_MAX_OPEN_SHARDS, tune_allocator

__all__ = [
    "DEFAULT_MAX_OPEN_SHARDS",
    "FIELDS",
    "LOOP1_FIELDS",
    "LOOP2_FIELDS",
    "METADATA_KEYS",
    "OUTPUT_DTYPES",
    "PrebakedDataset",
    "tune_allocator",
]
