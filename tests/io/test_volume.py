"""Volume loading, validation and atomic saving."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from anatosynth.errors import InputError
from anatosynth.io.volume import Volume, check_same_geometry, load_image, load_label, save_volume
from tests.conftest import write_nifti


def test_image_roundtrip_keeps_geometry(tmp_path):
    affine = np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    arr = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    write_nifti(tmp_path / "a.nii.gz", arr, affine)
    vol = load_image(tmp_path / "a.nii.gz")
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.affine, affine)
    np.testing.assert_allclose(vol.spacing, [0.8, 0.8, 2.5])
    assert vol.orientation == "LPS"
    out = save_volume(vol, tmp_path / "out" / "b.nii.gz")
    back = load_image(out)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, affine)


def test_saved_files_follow_umask(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        out = save_volume(Volume(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "m.nii.gz")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_float_labels_accepted_when_integral(tmp_path, tiny_label):
    write_nifti(tmp_path / "f.nii.gz", tiny_label.astype(np.float64))
    vol = load_label(tmp_path / "f.nii.gz")
    assert vol.array.dtype == np.int32
    np.testing.assert_array_equal(vol.array, tiny_label)


def test_float_labels_rejected_when_fractional(tmp_path, tiny_label):
    arr = tiny_label.astype(np.float32)
    arr[0, 0, 0] = 0.5
    write_nifti(tmp_path / "f.nii.gz", arr)
    with pytest.raises(InputError, match=r"f\.nii\.gz: .*non-integer"):
        load_label(tmp_path / "f.nii.gz")


def test_negative_labels_rejected(tmp_path, tiny_label):
    arr = tiny_label.astype(np.int16)
    arr[1, 1, 1] = -3
    write_nifti(tmp_path / "n.nii.gz", arr)
    with pytest.raises(InputError, match="negative"):
        load_label(tmp_path / "n.nii.gz")


def test_label_names_must_cover_ids(tmp_path, tiny_label):
    write_nifti(tmp_path / "l.nii.gz", tiny_label)
    load_label(tmp_path / "l.nii.gz", names={0: "background", 1: "a", 2: "b"})
    with pytest.raises(InputError, match="label ids 2 are not in the label names"):
        load_label(tmp_path / "l.nii.gz", names={0: "background", 1: "a"})


def test_empty_label_map_rejected_when_required(tmp_path):
    write_nifti(tmp_path / "e.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert not load_label(tmp_path / "e.nii.gz").array.any()
    with pytest.raises(InputError, match="e.nii.gz: label map is empty"):
        load_label(tmp_path / "e.nii.gz", require_foreground=True)


def test_truncated_gzip(tmp_path, tiny_label):
    good = write_nifti(tmp_path / "g.nii.gz", tiny_label)
    raw = good.read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"t\.nii\.gz: .*(truncated|corrupt|cannot read)"):
        load_label(tmp_path / "t.nii.gz")


def test_corrupt_gzip(tmp_path):
    (tmp_path / "c.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(InputError, match=r"c\.nii\.gz"):
        load_image(tmp_path / "c.nii.gz")


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 4, 3)])
def test_wrong_dimensions(tmp_path, shape):
    write_nifti(tmp_path / "d.nii.gz", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match="expected a 3D volume"):
        load_image(tmp_path / "d.nii.gz")


def test_singleton_fourth_dimension_is_squeezed(tmp_path):
    write_nifti(tmp_path / "d.nii.gz", np.ones((4, 4, 4, 1), np.float32))
    assert load_image(tmp_path / "d.nii.gz").shape == (4, 4, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_intensities(tmp_path, bad):
    arr = np.zeros((4, 4, 4), np.float32)
    arr[2, 2, 2] = bad
    write_nifti(tmp_path / "x.nii.gz", arr)
    with pytest.raises(InputError, match="1 voxels are NaN or Inf"):
        load_image(tmp_path / "x.nii.gz")


def test_missing_and_non_nifti(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_image(tmp_path / "nope.nii.gz")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="not a NIfTI"):
        load_image(tmp_path / "a.txt")


def test_geometry_mismatch():
    a = Volume(np.zeros((4, 4, 4)), np.eye(4))
    check_same_geometry(a, Volume(np.zeros((4, 4, 4)), np.eye(4)), "case")
    with pytest.raises(InputError, match="shape"):
        check_same_geometry(a, Volume(np.zeros((4, 4, 5)), np.eye(4)), "case")
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    with pytest.raises(InputError, match="affines differ"):
        check_same_geometry(a, Volume(np.zeros((4, 4, 4)), shifted), "case")


def test_unwritable_output_leaves_nothing(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    vol = Volume(np.zeros((3, 3, 3), np.float32), np.eye(4))
    with pytest.raises(InputError, match="blocker"):
        save_volume(vol, tmp_path / "blocker" / "sub" / "x.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    vol = Volume(np.zeros((3, 3, 3), np.float32), np.eye(4))

    def boom(img, filename):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError):
        save_volume(vol, tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []
