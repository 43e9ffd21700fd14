"""prebake: bake SA-V frames and masklets once into sharded Zarr v3 stores for Sa2VA-style training.

`from prebake import PrebakedLoader` (or `PrebakedDataset`, `PrebakedSampler`) is the
training-side entry point; torch is imported only when it is used, so the command line starts
fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["PrebakedDataset", "PrebakedLoader", "PrebakedSampler", "__version__"]

if TYPE_CHECKING:
    from prebake.reader import PrebakedDataset, PrebakedLoader, PrebakedSampler


def __getattr__(name: str) -> Any:
    if name in ("PrebakedDataset", "PrebakedLoader", "PrebakedSampler"):
        import prebake.reader

        return getattr(prebake.reader, name)
    raise AttributeError(f"module 'prebake' has no attribute {name!r}")
