"""Canonical geometry: RAS reorientation, resampling and cropping keep world positions."""

from __future__ import annotations

import numpy as np
import pytest

from anatosynth.io.canonical import canonicalise, crop_foreground, parse_spacing, resample, resample_label, to_ras
from anatosynth.io.volume import Volume, load_image, load_label
from anatosynth.errors import ConfigError


def centroid_mm(vol: Volume, lab: int) -> np.ndarray:
    return vol.world(np.argwhere(vol.array == lab).mean(axis=0))


def _lps_volume(tiny_label) -> Volume:
    affine = np.array([[0, -2.0, 0, 30], [-1.5, 0, 0, 12], [0, 0, 3.0, -7], [0, 0, 0, 1]])  # axes P, L, S
    return Volume(tiny_label.astype(np.int32), affine)


def test_to_ras_is_exact(tiny_label):
    vol = _lps_volume(tiny_label)
    ras = to_ras(vol)
    assert ras.orientation == "RAS"
    for lab in (1, 2):
        np.testing.assert_allclose(centroid_mm(ras, lab), centroid_mm(vol, lab), atol=1e-9)
    assert sorted(ras.shape) == sorted(vol.shape)


def test_resample_label_keeps_centroids_and_volumes(tiny_label):
    vol = to_ras(_lps_volume(tiny_label))
    out = resample_label(vol, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(out.spacing, [1, 1, 1])
    for lab in (1, 2):
        assert np.abs(centroid_mm(out, lab) - centroid_mm(vol, lab)).max() < 1.0
        v0 = (vol.array == lab).sum() * vol.spacing.prod()
        v1 = (out.array == lab).sum() * out.spacing.prod()
        assert abs(v1 - v0) / v0 < 0.2


def test_thin_structure_survives_downsampling():
    arr = np.zeros((40, 40, 40), np.int32)
    arr[10:30, 20, 10:30] = 3  # a one-voxel-thick sheet
    arr[5:35, 5:15, 5:35] = 1
    out = resample_label(Volume(arr, np.eye(4)), (3.0, 3.0, 3.0))
    assert (out.array == 3).any(), "thin label vanished"
    assert (out.array == 1).sum() > 0


def test_resample_image_linear():
    arr = np.tile(np.arange(10, dtype=np.float32)[:, None, None], (1, 4, 4))
    out = resample(Volume(arr, np.eye(4)), (0.5, 1, 1))
    assert out.shape == (19, 4, 4)
    np.testing.assert_allclose(out.array[:, 0, 0], np.arange(19) * 0.5, atol=1e-6)


def test_crop_foreground_moves_origin(tiny_label):
    vol = Volume(tiny_label.astype(np.int32), np.diag([2.0, 2.0, 2.0, 1.0]))
    img = Volume(np.random.default_rng(0).normal(size=tiny_label.shape).astype(np.float32), vol.affine)
    lab_c, img_c = crop_foreground(vol, None, 1, img)
    assert lab_c.shape == img_c.shape and lab_c.shape[0] < vol.shape[0]
    for lab in (1, 2):
        np.testing.assert_allclose(centroid_mm(lab_c, lab), centroid_mm(vol, lab))
    np.testing.assert_array_equal(img_c.array, img.array[tuple(
        slice(int(i.min()) - 1, int(i.max()) + 2) for i in np.nonzero(tiny_label))])


def test_parse_spacing():
    assert parse_spacing("1.5,1.5,2") == (1.5, 1.5, 2.0)
    for bad in ("1,2", "a,b,c", "1,0,1"):
        with pytest.raises(ConfigError):
            parse_spacing(bad)


@pytest.mark.parametrize("rel,spacing", [
    ("chaos-t2/labelsTr/chaos_01.nii.gz", (1.5, 1.5, 2.0)),          # float64 labels, 7.7 mm slices
    ("openkbp/labelsTr/openkbp_001.nii.gz", (2.0, 2.0, 2.0)),        # P-L-I orientation
    ("labels/flare22/FLARE22_Tr_0001.nii.gz", (1.5, 1.5, 2.0)),      # anisotropic 0.64 x 0.64 x 2.5
])
def test_real_geometry_preserved(data_dir, rel, spacing):
    """A structure's world-space centroid agrees before and after canonicalisation within one voxel."""
    vol = load_label(data_dir / rel)
    out, _ = canonicalise(vol, spacing)
    assert out.orientation == "RAS"
    np.testing.assert_allclose(out.spacing, spacing)
    voxel = np.maximum(np.asarray(spacing), vol.spacing[np.argsort(
        [np.argmax(np.abs(vol.affine[:3, i])) for i in range(3)])])
    for lab in np.unique(vol.array)[1:]:
        assert (out.array == lab).any(), f"label {lab} lost"
        err = np.abs(centroid_mm(out, lab) - centroid_mm(vol, lab))
        assert np.all(err <= voxel), f"label {lab}: centroid moved {err} mm"


def test_real_image_and_label_stay_aligned(data_dir):
    img = load_image(data_dir / "chaos-t2/imagesTr/chaos_02.nii.gz")
    lab = load_label(data_dir / "chaos-t2/labelsTr/chaos_02.nii.gz")
    out_l, out_i = canonicalise(lab, (2.0, 2.0, 4.0), img, crop=True, margin=2)
    assert out_l.shape == out_i.shape
    np.testing.assert_allclose(out_l.affine, out_i.affine)
    liver_in = img.array[lab.array == 1].mean()
    liver_out = out_i.array[out_l.array == 1].mean()
    assert abs(liver_out - liver_in) / abs(liver_in) < 0.1
