"""How a row-table column is stored, by schema version (`prebake.store.schema`).

- numbers: a 1-D array of the schema's data type (both versions);
- text, v2 (dtype "utf8"): a group holding `offsets` (int64, rows + 1 values) and `utf8` (uint8):
  row i is the UTF-8 text of utf8[offsets[i]:offsets[i + 1]], Apache Arrow's layout of a string
  column. Two numeric arrays: core Zarr v3, read by every implementation, at any number of rows;
- coded, v2 (`codes`): uint8 codes of a fixed list of names, listed in a root attribute;
- text, v1 (dtype "string"): zarr-python's string data type with the vlen-utf8 codec, which is
  not core Zarr v3 (tensorstore refuses it): read, never written.

Columns are read and written whole through zarr-python; values are numpy arrays (text and coded
columns: object arrays of str).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from prebake.errors import StoreError
from prebake.store.schema import CODES, TEXT_PARTS, ArraySpec, schema_document, text_part_spec

TEXT_ATTRIBUTES = {"prebake": {"encoding": "utf8-offsets"}}


def encode_text(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 (n + 1,), utf8 uint8) of `values`."""
    encoded = [str(value).encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(text) for text in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8)


def decode_text(offsets: np.ndarray, utf8: np.ndarray, where: str) -> np.ndarray:
    """The strings of a text column (object array); StoreError naming `where` when the offsets
    do not describe the bytes or the bytes are not UTF-8."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if (
        offsets.ndim != 1
        or not len(offsets)
        or offsets[0] != 0
        or offsets[-1] != len(utf8)
        or (np.diff(offsets) < 0).any()
    ):
        raise StoreError(
            f"{where}: offsets do not describe its {len(utf8)} UTF-8 bytes "
            "(must start at 0, never decrease and end at their count)"
        )
    data = np.asarray(utf8, dtype=np.uint8).tobytes()
    if b"\0" in data:  # no id, path or fingerprint holds one; a chunk never written reads as 0s
        raise StoreError(
            f"{where}: bytes hold NUL characters (a chunk of its utf8 array is missing?)"
        )
    bounds = offsets.tolist()
    try:
        texts = [data[start:end].decode("utf-8") for start, end in itertools.pairwise(bounds)]
    except UnicodeDecodeError as error:
        raise StoreError(f"{where}: bytes are not UTF-8 ({error.reason})") from None
    return _objects(texts)


def encode_codes(spec: ArraySpec, values: Sequence[str]) -> np.ndarray:
    """uint8 codes of `values` (names of `CODES[spec.codes]`)."""
    assert spec.codes is not None
    names = CODES[spec.codes]
    unknown = sorted({str(value) for value in values} - set(names))
    if unknown:
        raise ValueError(f"{spec.name}: values {unknown} are not among {list(names)}")
    return np.array([names.index(str(value)) for value in values], dtype=np.uint8)


def decode_codes(spec: ArraySpec, codes: np.ndarray, where: str) -> np.ndarray:
    assert spec.codes is not None
    names = CODES[spec.codes]
    codes = np.asarray(codes)
    if len(codes) and (codes.min() < 0 or codes.max() >= len(names)):
        raise StoreError(f"{where}: codes outside 0..{len(names) - 1} (the names in {spec.codes})")
    return _objects([names[int(code)] for code in codes])


def _objects(texts: list[str]) -> np.ndarray:
    column = np.empty(len(texts), dtype=object)
    column[:] = texts
    return column


def write_column(root: zarr.Group, spec: ArraySpec, values: np.ndarray) -> None:
    """Write one column (its values as tables make them) in the layout of `spec`'s version."""
    group_name, column = spec.name.split("/")
    group = root.require_group(group_name)
    if spec.dtype == "utf8":
        text = group.create_group(column, overwrite=True, attributes=TEXT_ATTRIBUTES)
        for part, stored in zip(TEXT_PARTS, encode_text(values.tolist()), strict=True):
            _write_array(text, part, text_part_spec(spec, part), stored)
    elif spec.codes is not None:
        _write_array(group, column, spec, encode_codes(spec, values.tolist()))
    elif spec.dtype == "string":  # v1 (written only to make v1 stores for tests)
        _write_array(group, column, spec, np.asarray(values, dtype=str))
    else:
        _write_array(group, column, spec, np.asarray(values, dtype=spec.numpy_dtype))


def _write_array(group: zarr.Group, name: str, spec: ArraySpec, values: np.ndarray) -> None:
    chunk = schema_document(2)["table_rows_per_chunk"]
    array = group.create_array(
        name,
        shape=values.shape,
        dtype=str if spec.dtype == "string" else spec.numpy_dtype,
        chunks=(max(1, min(len(values), chunk)),),
        serializer=spec.codecs[0],
        compressors=list(spec.codecs[1:]),
        fill_value=spec.fill_value,
        overwrite=True,
    )
    if len(values):
        array[:] = values


def read_column(root: zarr.Group, spec: ArraySpec) -> np.ndarray:
    """One column's values (text and coded columns as object arrays of str), read whole.

    Raises StoreError when a v2 text or coded column holds what no build writes; zarr-python's
    own errors (a missing or damaged array) pass through."""
    if spec.dtype == "utf8":
        parts: dict[str, Any] = {
            part: np.asarray(root[f"{spec.name}/{part}"][...])  # type: ignore[index]
            for part in TEXT_PARTS
        }
        return decode_text(parts["offsets"], parts["utf8"], spec.name)
    values = np.asarray(root[spec.name][...]).ravel()  # type: ignore[index]
    if spec.codes is not None:
        return decode_codes(spec, values, spec.name)
    if spec.dtype == "string":
        return _objects([str(value) for value in values])
    return values.astype(spec.numpy_dtype, copy=False)
