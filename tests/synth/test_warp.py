"""Geometry of warp_sample: identity, whole-voxel translation, 90-degree rotation, elastic shift."""

from __future__ import annotations

import numpy as np
import torch

from anatosynth.synth.warp import pad_mask, warp_sample

SP = np.array([2.0, 2.0, 2.0])


def _mask() -> np.ndarray:
    m = np.zeros((9, 7, 5), bool)
    m[2:7, 1:5, 1:4] = True
    m[6, 4, 3] = False  # break the symmetry
    m[0, 0, 0] = True
    return m


def _sample(mask, rel, matrix=np.eye(3), elastic=None):
    lo = np.zeros(3)  # local frame: voxel [0, 0, 0] at the origin
    span = (np.asarray(mask.shape) - 1) * SP
    elastic = np.zeros((3, 3, 3, 3), np.float32) if elastic is None else elastic
    return warp_sample(pad_mask(mask), lo, span, SP, rel, matrix, elastic) > 0.5


def _grid(shape, offset=(0, 0, 0)):
    return [(np.arange(n) + o) * SP[a] for a, (n, o) in enumerate(zip(shape, offset))]


def test_identity_reproduces_mask():
    m = _mask()
    assert torch.equal(_sample(m, _grid(m.shape)), torch.from_numpy(m))


def test_whole_voxel_translation():
    m = _mask()
    out = _sample(m, _grid((11, 9, 7), offset=(-2, -1, -1))).numpy()
    expected = np.zeros((11, 9, 7), bool)
    expected[2:11, 1:8, 1:6] = m
    assert np.array_equal(out, expected)


def test_rotation_about_z_axis_order():
    m = _mask()
    # body -> source map M: source x = body y, source y = -body x (a 90 degree turn in the x-y plane)
    matrix = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rel = [-(np.arange(m.shape[1]) * SP[1])[::-1], np.arange(m.shape[0]) * SP[0], np.arange(m.shape[2]) * SP[2]]
    out = _sample(m, rel, matrix).numpy()
    # out[i, j, k] = m[j, (Y-1) - i, k]
    expected = np.transpose(m, (1, 0, 2))[::-1]
    assert np.array_equal(out, expected)


def test_uniform_elastic_field_translates():
    m = _mask()
    elastic = np.zeros((3, 3, 3, 3), np.float32)
    elastic[0] = 2 * SP[0]  # every point samples two voxels further along x
    out = _sample(m, _grid(m.shape), elastic=elastic).numpy()
    expected = np.zeros_like(m)
    expected[:-2] = m[2:]
    assert np.array_equal(out, expected)
