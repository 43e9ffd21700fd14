"""Versions of the libraries whose behaviour decides a store's bytes."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def library_versions() -> dict[str, str]:
    names = {
        "prebake": "prebake",
        "pillow": "pillow",
        "av": "av",
        "zarr": "zarr",
        "numpy": "numpy",
        "numcodecs": "numcodecs",
        "pycocotools": "pycocotools",
        "opencv": "opencv-python-headless",  # the reference decoder of `verify --src`
    }
    found = {}
    for key, distribution in names.items():
        try:
            found[key] = version(distribution)
        except PackageNotFoundError:
            found[key] = "unknown"
    return found
