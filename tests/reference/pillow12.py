"""Pillow 12 run as a Pillow-12 trainer runs it, beside the pinned Pillow 13.

The Makefile installs Pillow 12 into `.venv/pillow12` (`pip install --target`); a subprocess with
that folder first on its path resizes with `Image.resize(size, BICUBIC)`, so tests compare with
the real library, not with a re-implementation of its pass order.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

PILLOW12 = Path(sys.prefix) / "pillow12"

_SCRIPT = """
import sys
import numpy as np
import PIL
from PIL import Image
assert PIL.__version__.startswith("12."), PIL.__version__
data = dict(np.load(sys.argv[1]))
out = {}
for key, value in data.items():
    if key.startswith("image"):
        width, height = (int(v) for v in data["size" + key[5:]])
        out[key] = np.asarray(Image.fromarray(value).resize((width, height), Image.BICUBIC))
np.savez(sys.argv[2], **out)
"""


def resize_with_pillow12(
    images: list[np.ndarray], sizes: list[tuple[int, int]]
) -> list[np.ndarray]:
    """`Image.fromarray(image).resize(size, BICUBIC)` of each uint8 (H, W, 3) image, by Pillow 12.

    `sizes` are (width, height), as Pillow takes them.
    """
    if not (PILLOW12 / "PIL").is_dir():
        pytest.skip(f"Pillow 12 is not installed in {PILLOW12} (make installs it)")
    with tempfile.TemporaryDirectory() as folder:
        given, taken = Path(folder) / "in.npz", Path(folder) / "out.npz"
        arrays: dict[str, np.ndarray] = {}
        for i, (image, size) in enumerate(zip(images, sizes, strict=True)):
            arrays[f"image{i}"] = image
            arrays[f"size{i}"] = np.array(size)
        np.savez(given, **arrays)
        subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(given), str(taken)],
            env={"PYTHONPATH": str(PILLOW12)},
            check=True,
            timeout=300,
        )
        with np.load(taken) as result:
            return [result[f"image{i}"] for i in range(len(images))]
