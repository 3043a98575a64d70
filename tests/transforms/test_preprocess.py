"""Preprocessing of real scans: modality normalisation, class maps, and the way back to original grids."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from anatosynth.errors import ConfigError, InputError
from anatosynth.io import Volume, resample_label, to_ras
from anatosynth.transforms.preprocess import (
    ClassMap,
    PreprocessConfig,
    modality_kind,
    normalise,
    prepare_case,
    to_original_grid,
)


@pytest.mark.parametrize("text,kind", [("CT", "CT"), ("ct", "CT"), ("MRI", "MR"), ("MR", "MR"), ("T2", "MR"),
                                       ("T1w", "MR")])
def test_modality_kind(text, kind):
    assert modality_kind(text) == kind


@pytest.mark.parametrize("text", [None, "PET", "ultrasound"])
def test_unknown_modality_is_a_config_error(text):
    with pytest.raises(ConfigError, match="modality"):
        modality_kind(text)


def test_ct_window_scales_to_unit_range():
    cfg = PreprocessConfig("CT")
    out = normalise(np.array([-1000.0, -175.0, 37.5, 250.0, 3000.0]), cfg)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_mr_robust_zscore_ignores_outliers():
    rng = np.random.default_rng(0)
    x = rng.normal(300, 50, 10000)
    x[:5] = 1e6  # a few hot voxels
    out = normalise(x, PreprocessConfig("MR"))
    assert abs(np.median(out)) < 1e-5
    assert 0.8 < out[5:].std() < 1.2
    assert out.max() < 5


def test_bad_window_and_spacing():
    with pytest.raises(ConfigError):
        PreprocessConfig("CT", window=(250, -175))
    with pytest.raises(ConfigError):
        PreprocessConfig("CT", spacing=(1.0, 0.0, 1.0))


def test_non_contiguous_ids_round_trip():
    classes = ClassMap.from_labels({0: "background", 600: "c", 200: "a", 500: "b"})
    assert classes.ids == [0, 200, 500, 600] and classes.names == ["background", "a", "b", "c"]
    label = np.array([[0, 200], [500, 600]])
    index = classes.to_index(label)
    np.testing.assert_array_equal(index, [[0, 1], [2, 3]])
    np.testing.assert_array_equal(classes.to_ids(index), label)
    with pytest.raises(ValueError, match="300"):
        classes.to_index(np.array([300]))


def _onehot(label: np.ndarray, n: int) -> np.ndarray:
    return np.stack([(label == c).astype(np.float32) for c in range(n)])


def test_back_to_original_grid_exact_for_reorientation():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 3, (9, 7, 5))
    affine = np.array([[0, 0, -2.0, 10], [-1.5, 0, 0, 5], [0, 3.0, 0, -7], [0, 0, 0, 1]])
    canon = to_ras(Volume(label.astype(np.int32), affine))
    back = to_original_grid(_onehot(canon.array, 3), canon.affine, label.shape, affine, chunk=2)
    np.testing.assert_array_equal(back, label)


def test_back_to_original_grid_after_resampling():
    label = np.zeros((40, 36, 12), np.int32)
    label[8:30, 6:28, 3:10] = 1
    label[12:20, 10:18, 5:8] = 2
    affine = np.diag([-1.25, -1.25, 6.0, 1.0])
    canon = resample_label(to_ras(Volume(label, affine)), (2.0, 2.0, 2.0))
    back = to_original_grid(_onehot(canon.array, 3), canon.affine, label.shape, affine)
    assert back.shape == label.shape
    for c, least in ((1, 0.93), (2, 0.75)):  # the 8x8x3-voxel box loses a voxel at some faces both ways
        inter = ((back == c) & (label == c)).sum()
        assert 2 * inter / ((back == c).sum() + (label == c).sum()) > least
        shift_mm = (np.argwhere(back == c).mean(0) - np.argwhere(label == c).mean(0)) * [1.25, 1.25, 6.0]
        assert np.all(np.abs(shift_mm) < 1.25)  # within one original voxel: no systematic offset


def _write(path, array, affine):
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def test_prepare_case_checks_geometry_and_maps_ids(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    label = np.zeros((12, 12, 8), np.uint16)
    label[2:6, 2:6, 2:5] = 500
    img = _write(tmp_path / "img.nii.gz", np.full((12, 12, 8), 40, np.int16), affine)
    lab = _write(tmp_path / "lab.nii.gz", label, affine)
    classes = ClassMap.from_labels({0: "background", 200: "a", 500: "b"})
    case = prepare_case("c", img, lab, PreprocessConfig("CT", spacing=(2.0, 2.0, 3.0)), classes)
    assert set(np.unique(case.label).tolist()) == {0, 2} and case.present == [0, 2]
    assert case.image.dtype == np.float32 and case.image.shape == case.label.shape
    shifted = affine.copy()
    shifted[0, 3] = 4.0
    bad = _write(tmp_path / "bad.nii.gz", label, shifted)
    with pytest.raises(InputError, match="bad.nii.gz.*affines differ"):
        prepare_case("c", img, bad, PreprocessConfig("CT"), classes)
    other = _write(tmp_path / "other.nii.gz", np.where(label > 0, 300, 0).astype(np.uint16), affine)
    with pytest.raises(InputError, match="label ids 300 are not in the label names"):
        prepare_case("c", img, other, PreprocessConfig("CT"), classes)
