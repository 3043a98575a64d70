"""Cutting one subject into organ shapes: crop, measures, body frame, components rule."""

from __future__ import annotations

import numpy as np

from anatosynth.bank.shapes import subject_shapes


def _subject() -> np.ndarray:
    lab = np.zeros((40, 30, 20), np.int32)
    lab[5:15, 5:15, 5:15] = 1       # liver: 10x10x10 cube
    lab[25:30, 10:20, 4:6] = 2      # spleen: a slab (7.5 x 15 x 4 mm)
    lab[20:23, 20:23, 12:15] = 3    # kidney_right
    lab[30:33, 20:23, 12:15] = 4    # kidney_left
    return lab


NAMES = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"}


def test_shapes_are_cropped_and_measured():
    sp = (1.5, 1.5, 2.0)
    cut = subject_shapes(_subject(), sp, NAMES, "0123456789abcdef")
    liver = cut.shapes["liver"]
    assert liver.mask.shape == (10, 10, 10) and liver.mask.all()
    assert np.isclose(liver.volume_ml, 1000 * 1.5 * 1.5 * 2.0 / 1000)
    assert np.allclose(liver.extent_mm, [15, 15, 20])
    assert liver.subject == "0123456789abcdef"
    # slab: largest principal axis along y (10 voxels x 1.5 mm), smallest along z
    axes = cut.shapes["spleen"].axes
    assert abs(axes[0, 1]) > 0.99 and abs(axes[2, 2]) > 0.99


def test_body_frame_origin_is_mean_of_reference_organ_centroids():
    sp = np.array([1.5, 1.5, 2.0])
    cut = subject_shapes(_subject(), sp, NAMES, "s")
    assert cut.frame == "reference-organs"
    centroids = np.array([s.centroid_mm for s in cut.shapes.values()])
    assert np.allclose(centroids.mean(axis=0), 0, atol=1e-9)
    liver = cut.shapes["liver"]
    # origin of the mask's first voxel and the centroid agree with the crop geometry
    assert np.allclose(liver.centroid_mm - liver.origin_mm, 4.5 * sp)


def test_frame_falls_back_to_all_organs_without_references():
    lab = _subject()
    lab[lab == 2] = 0  # no spleen
    cut = subject_shapes(lab, (1, 1, 1), NAMES, "s")
    assert cut.frame == "all-organs" and "spleen" not in cut.shapes


def test_small_fragments_are_dropped_large_parts_kept():
    lab = _subject()
    lab[0:2, 0:2, 0:2] = 1           # 8 voxels: < 5 % of the 1000-voxel liver: noise
    lab[16:20, 5:15, 5:15] = 0
    lab[17:20, 5:15, 5:15] = 1       # 300 voxels, separate: kept (a second part)
    cut = subject_shapes(lab, (1, 1, 1), NAMES, "s")
    assert cut.dropped_voxels == {"liver": 8}
    assert cut.shapes["liver"].mask.sum() == 1300
