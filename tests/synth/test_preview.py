"""The preview's slices: through the labels, not through an empty middle."""

from __future__ import annotations

import numpy as np

from anatosynth.synth.preview import busiest_slices, orthogonal_slices


def test_busiest_slices_find_an_off_centre_organ():
    label = np.zeros((40, 30, 20), dtype=np.int64)
    label[2:8, 25:29, 1:4] = 3  # an organ in a corner: the mid-slices miss it
    label[5, 26, 2] = 1
    x, y, z = busiest_slices(label)
    assert 2 <= x < 8 and 25 <= y < 29 and 1 <= z < 4
    for _, view, _ in orthogonal_slices(label, (1, 1, 1), (x, y, z)):
        assert view.any()
    assert not any(view.any() for _, view, _ in orthogonal_slices(label, (1, 1, 1)))  # the middle: empty


def test_an_empty_patch_shows_its_middle():
    assert busiest_slices(np.zeros((10, 12, 6), dtype=np.int64)) == (5, 6, 3)
