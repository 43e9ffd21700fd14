"""The normalization table of schema v2: every value `pixel_values` can take, bit for bit the
reference's ToTensor -> Normalize (tests/reference, in torch), and the lookup the reader serves
with (`prebake.reader.rows.normalize_into`) equal to normalizing a whole image."""

from __future__ import annotations

import numpy as np
import pytest
import reference

from prebake import transforms
from prebake.reader.rows import normalize_into


def test_the_table_holds_the_reference_value_of_every_level_of_every_channel() -> None:
    table = transforms.pixel_table()
    expected = reference.normalization_table()
    assert table.dtype == np.float32 and table.shape == (3, 256)
    assert table.tobytes() == expected.tobytes()  # all 3 x 256 values, bit for bit
    # The same values as a 1 x 256 image of each level through the reference's ToTensor ->
    # Normalize (a whole-image path, not the table's formula).
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    assert reference.pixel_values_of(ramp)[:, 0, :].tobytes() == table.tobytes()
    assert not table.flags.writeable


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_a_lookup_equals_normalizing_the_image(layout: str) -> None:
    levels = np.random.default_rng(0).integers(0, 256, (3, 448, 448), dtype=np.uint8)
    expected = reference.pixel_values_of(levels.transpose(1, 2, 0))
    out = np.full((3, 448, 448) if layout == "contiguous" else (3, 448, 896), np.nan, np.float32)
    target = out if layout == "contiguous" else out[:, :, ::2]  # np.take serves this one
    normalize_into(levels, transforms.pixel_table(), target)
    assert target.tobytes() == np.ascontiguousarray(expected).tobytes()
    assert transforms.normalize(levels).tobytes() == expected.tobytes()
