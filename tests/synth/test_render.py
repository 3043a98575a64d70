"""Rendering of label patches: determinism, batch independence, shells, texture band, contours, artefacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from anatosynth.errors import ConfigError
from anatosynth.options import RENDERS
from anatosynth.synth import artefacts as art
from anatosynth.synth.render import (
    CONTOUR_VALUE,
    CONTOUR_WIDTH,
    apply_render,
    boundary_distance,
    draw_render_params,
)

PATCH = (32, 32, 32)
FULL = art.ArtefactRanges(noise_p=1.0, blur_p=1.0, bias_p=1.0, gamma_p=1.0)


def ellipsoids(patch=PATCH, seed=0) -> np.ndarray:
    """Three overlapping random ellipsoids (labels 1..3) in a small patch."""
    rng = np.random.default_rng(seed)
    g = np.mgrid[: patch[0], : patch[1], : patch[2]].astype(np.float64)
    lab = np.zeros(patch, np.int64)
    for k in (1, 2, 3):
        c = rng.uniform(0.3, 0.7, 3) * np.array(patch)
        r = rng.uniform(0.15, 0.3, 3) * np.array(patch)
        lab[sum(((g[i] - c[i]) / r[i]) ** 2 for i in range(3)) <= 1.0] = k
    return lab


def labels(n=2) -> torch.Tensor:
    return torch.from_numpy(np.stack([ellipsoids(seed=s) for s in range(n)]))


def params(render, n=2, ranges=None, seed0=0):
    return [draw_render_params(np.random.default_rng(seed0 + i), 4, render, PATCH, ranges) for i in range(n)]


def chebyshev_to_other(lab: np.ndarray, k: int, in_plane: bool = False) -> np.ndarray:
    """Reference: Chebyshev distance of each voxel of class k to the nearest voxel of another class.

    scipy returns -1 where no other class exists (in the volume or slice): mapped to a large value.
    """
    if in_plane:
        out = np.zeros(lab.shape, np.int64)
        for z in range(lab.shape[2]):
            out[:, :, z] = ndimage.distance_transform_cdt(lab[:, :, z] == k, metric="chessboard")
    else:
        out = ndimage.distance_transform_cdt(lab == k, metric="chessboard").astype(np.int64)
    return np.where(out < 0, 10**6, out)


@pytest.mark.parametrize("render", RENDERS)
def test_same_params_same_bytes_and_batch_independent(render):
    lab = labels(2)
    ps = params(render, 2, None if render == "contour" else FULL)
    a = apply_render(lab, ps)
    b = apply_render(lab, ps)
    assert a.shape == (2, 1, *PATCH) and a.dtype == torch.float32
    assert torch.equal(a, b)
    singles = torch.cat([apply_render(lab[i : i + 1], ps[i : i + 1]) for i in range(2)])
    assert torch.equal(a, singles)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.equal(a[0], a[1])  # different draws give different images


def test_mixed_modes_in_one_batch_match_single_samples():
    lab = labels(1).repeat(len(RENDERS), 1, 1, 1)
    ps = [draw_render_params(np.random.default_rng(7), 4, r, PATCH, FULL) for r in RENDERS]
    batch = apply_render(lab, ps)
    for i in range(len(RENDERS)):
        assert torch.equal(batch[i], apply_render(lab[i : i + 1], ps[i : i + 1])[0]), RENDERS[i]


def test_draw_is_seeded():
    a = draw_render_params(np.random.default_rng(3), 5, "texture", PATCH)
    b = draw_render_params(np.random.default_rng(3), 5, "texture", PATCH)
    c = draw_render_params(np.random.default_rng(4), 5, "texture", PATCH)
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.texture_grids[0], b.texture_grids[0])
    assert a.artefacts.seed == b.artefacts.seed and a.seed == b.seed
    assert not np.array_equal(a.mean, c.mean)


def test_shells_are_boundary_bands_of_each_organ():
    lab = labels(1)
    p = params("shell", 1, art.NO_ARTEFACTS)[0]
    img = apply_render(lab, [p])[0, 0].numpy()
    L = lab[0].numpy()
    background = p.mean[0]
    assert np.all(img[L == 0] == background)
    for k in (1, 2, 3):
        t = int(p.shell_thickness[k])
        assert 1 <= t <= 3
        want = (L == k) & (chebyshev_to_other(L, k) <= t)
        got = (L == k) & (img == p.shell_value[k])
        assert want.any()
        np.testing.assert_array_equal(got, want)
        assert np.all(img[(L == k) & ~want] == background)  # organ cores show the background
        assert abs(p.shell_value[k] - background) >= 0.2 - 1e-6


def test_boundary_distance_matches_scipy_in_3d_and_in_plane():
    L = ellipsoids(seed=5)
    for in_plane in (False, True):
        d = boundary_distance(torch.from_numpy(L)[None], 4, in_plane=in_plane)[0].numpy()
        ref = np.zeros(L.shape, np.int64)
        for k in np.unique(L):
            ref = np.where(L == k, chebyshev_to_other(L, int(k), in_plane), ref)
        np.testing.assert_array_equal(d, np.minimum(ref, 5))


def test_texture_only_in_cores_with_clean_band():
    lab = labels(1)
    p = params("texture", 1, art.NO_ARTEFACTS)[0]
    img = apply_render(lab, [p])[0, 0].numpy()
    L = lab[0].numpy()
    assert np.all(img[L == 0] == p.mean[0])  # background is plain
    for k in (1, 2, 3):
        d = chebyshev_to_other(L, k)
        band = (L == k) & (d <= p.texture_band)
        core = (L == k) & (d > p.texture_band + 2)
        assert band.any()
        np.testing.assert_array_equal(img[band], np.full(band.sum(), p.mean[k], np.float32))
        if core.sum() > 20:
            assert np.std(img[core]) > 1e-3  # textured


def test_fill_matches_the_drawn_gaussian_mixture():
    lab = torch.zeros((1, 64, 64, 32), dtype=torch.int64)
    lab[:, 32:] = 1
    p = draw_render_params(np.random.default_rng(1), 2, "fill", (64, 64, 32), art.NO_ARTEFACTS)
    img = apply_render(lab, [p])[0, 0].numpy()
    for k in (0, 1):
        v = img[lab[0].numpy() == k]
        assert abs(v.mean() - p.mean[k]) < 0.01
        assert abs(v.std() - p.std[k]) < 0.15 * p.std[k] + 0.003  # clipping at 0/1 may shave a little
    assert 25 / 255 - 1e-6 <= p.mean.min() and p.mean.max() <= 225 / 255 + 1e-6


def test_shell_plus_fill_draws_shells_over_the_fill():
    lab = labels(1)
    p = params("shell+fill", 1, art.NO_ARTEFACTS)[0]
    p.std[:] = 0.0  # plain fill to compare exactly
    img = apply_render(lab, [p])[0, 0].numpy()
    L = lab[0].numpy()
    for k in (1, 2, 3):
        shell = (L == k) & (chebyshev_to_other(L, k) <= int(p.shell_thickness[k]))
        assert np.all(img[shell] == p.shell_value[k])
        assert np.all(img[(L == k) & ~shell] == p.mean[k])


def test_contour_is_per_slice_outline_open_at_top_and_bottom():
    lab = torch.zeros((1, 32, 32, 32), dtype=torch.int64)
    lab[0, 8:24, 8:24, 10:20] = 1  # a box: a prism with flat top and bottom
    lab[0, 12:20, 12:20, 4:10] = 2  # a smaller box below it
    p = draw_render_params(np.random.default_rng(0), 3, "contour", (32, 32, 32))
    img = apply_render(lab, [p])[0, 0].numpy()
    assert set(np.unique(img).tolist()) == {0.0, np.float32(CONTOUR_VALUE)}
    L = lab[0].numpy()
    drawn = img > 0
    ref = np.zeros(L.shape, np.int64)
    for k in (1, 2):
        ref = np.where(L == k, chebyshev_to_other(L, k, in_plane=True), ref)
    np.testing.assert_array_equal(drawn, (L > 0) & (ref <= CONTOUR_WIDTH))
    assert not drawn[12:20, 12:20, 10].any()  # the top face of the lower box is open (no cap)
    assert not drawn[12:20, 12:20, 19].any()  # the top face of the upper box is open
    assert drawn[8:10, 8:24, 15].all() and not drawn[10:22, 10:22, 15].any()  # 2-px ring per slice


def test_artefacts_stay_in_range_and_change_the_image():
    lab = labels(1)
    clean = apply_render(lab, params("shell", 1, art.NO_ARTEFACTS))
    dirty = apply_render(lab, params("shell", 1, FULL))
    assert not torch.equal(clean, dirty)
    assert float(dirty.min()) == 0.0 and float(dirty.max()) == 1.0  # rescaled to [0, 1]


def test_blur_keeps_constants_and_sums():
    x = torch.full((16, 16, 16), 0.25)
    y = art._blur_one(x, art._blur_taps(1.0))
    assert torch.allclose(y, x, atol=1e-6)
    spike = torch.zeros(16, 16, 16)
    spike[8, 8, 8] = 1.0
    assert abs(float(art._blur_one(spike, art._blur_taps(0.7)).sum()) - 1.0) < 1e-5


def test_gamma_table_approximates_power_and_rescale_spans_unit_range():
    x = torch.linspace(0, 1, 1001)
    for g in (0.75, 1.3):
        y = x.clone()
        art._rescale_gamma_(y, False, g)
        assert torch.allclose(y, x**g, atol=1e-3)
    y = torch.linspace(0.2, 0.7, 1001)
    art._rescale_gamma_(y, True, 1.0)
    assert float(y.min()) == 0.0 and abs(float(y.max()) - 1.0) < 1e-6


def test_separable_upsampling_equals_trilinear():
    grid = np.random.default_rng(0).standard_normal((4, 5, 3)).astype(np.float32)
    ours = art.upsample_separable(grid, (32, 40, 16), "cpu")
    ref = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=(32, 40, 16),
                                          mode="trilinear", align_corners=True)[0, 0]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_hash_matches_numpy_uint32_reference():
    n = 5000
    key = art.mix_key(12345, 3)
    x = (np.arange(n, dtype=np.uint64) * art._M1 + key) & 0xFFFFFFFF
    for m, s in ((art._M2, 16), (art._M3, 15), (art._M1, 16)):
        x ^= x >> np.uint64(s)
        x = (x * np.uint64(m)) & 0xFFFFFFFF
    x ^= x >> np.uint64(15)
    got = art.hash_bits(12345, 3, n, "cpu").numpy().view(np.uint32)
    np.testing.assert_array_equal(got, x.astype(np.uint32))


def test_hash_gaussian_is_standardised_and_seeded():
    z = art.hash_gaussian([1, 2], 0, (64, 64, 64), "cpu")
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1.0) < 0.01
    assert torch.equal(z[1:], art.hash_gaussian([2], 0, (64, 64, 64), "cpu"))
    assert abs(float((z[0] * z[1]).mean())) < 0.01  # seeds are independent
    for d in range(3):  # neighbouring voxels are uncorrelated along every axis
        n = z.shape[d + 1] - 1
        assert abs(float((z[0].narrow(d, 0, n) * z[0].narrow(d, 1, n)).mean())) < 0.01
    assert abs(float((z[0] ** 4).mean()) - 2.7) < 0.05  # Irwin-Hall(4) kurtosis: 3 - 6/(5*4)


def test_bad_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown render mode"):
        draw_render_params(np.random.default_rng(0), 4, "photo", PATCH)
    p = params("shell", 1)
    with pytest.raises(ConfigError, match="outside 0..3"):
        apply_render(torch.full((1, *PATCH), 4, dtype=torch.int64), p)
    with pytest.raises(ConfigError, match="render params"):
        apply_render(labels(2), p)
    with pytest.raises(ConfigError, match="integer tensor"):
        apply_render(torch.zeros((1, *PATCH)), p)


def test_non_cubic_patch():
    patch = (64, 64, 32)
    lab = torch.from_numpy(ellipsoids(patch, 1))[None]
    for render in RENDERS:
        p = draw_render_params(np.random.default_rng(0), 4, render, patch, None if render == "contour" else FULL)
        img = apply_render(lab, [p])
        assert img.shape == (1, 1, *patch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("render", RENDERS)
def test_cuda_matches_cpu(render):
    lab = labels(2)
    ps = params(render, 2, None if render == "contour" else FULL)
    cpu = apply_render(lab, ps)
    gpu = apply_render(lab.cuda(), ps)
    assert gpu.device.type == "cuda"
    assert torch.equal(art.hash_bits(9, 1, 4096, "cuda").cpu(), art.hash_bits(9, 1, 4096, "cpu"))
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)
    assert torch.equal(gpu[1:], apply_render(lab[1:].cuda(), ps[1:]))


@pytest.mark.parametrize("render", ["shell+fill", "texture"])
def test_bytes_do_not_depend_on_thread_count(render):
    lab = labels(2)
    ps = params(render, 2, FULL)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = apply_render(lab, ps)
        torch.set_num_threads(3)
        three = apply_render(lab, ps)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, three)


def _clutter_params(render, share, n=4, seed0=0):
    """Render params without artefacts, with background clutter of ``share`` drawn from its own rng."""
    from anatosynth.synth.render import draw_clutter

    out = params(render, n, art.NO_ARTEFACTS, seed0)
    for i, p in enumerate(out):
        p.clutter = draw_clutter(np.random.default_rng(1000 + i), share, p, PATCH)
    return out


def _field(grid: np.ndarray) -> np.ndarray:
    from anatosynth.synth.render import TEXTURE_NORM

    g = torch.from_numpy(grid * TEXTURE_NORM)[None, None]
    return torch.nn.functional.interpolate(g, size=PATCH, mode="trilinear", align_corners=True)[0, 0].numpy()


def _expected_clutter(p, lab: np.ndarray) -> np.ndarray:
    """Reference clutter mask: the shape grid upsampled by torch's trilinear interpolation, over the
    threshold, in the background only."""
    return (_field(p.clutter.grids[0]) > p.clutter.threshold) & (lab == 0)


def test_clutter_paints_only_background_and_keeps_labels():
    lab = labels(4)
    plain = params("fill", 4, art.NO_ARTEFACTS)
    cluttered = _clutter_params("fill", 0.3)
    before, after = apply_render(lab, plain).numpy(), apply_render(lab, cluttered).numpy()
    shares = []
    for b in range(4):
        L = lab[b].numpy()
        changed = before[b, 0] != after[b, 0]
        want = _expected_clutter(cluttered[b], L)
        assert not changed[L > 0].any()  # organ voxels: the same intensities
        assert (changed == want).mean() > 0.995  # background: changed exactly where the clutter lies
        shares.append(want.sum() / (L == 0).sum())
    assert 0.15 < np.mean(shares) < 0.45  # about the share asked for (0.3)


def test_clutter_in_shell_mode_shows_shells_only():
    lab = labels(2)
    plain, cluttered = params("shell", 2, art.NO_ARTEFACTS), _clutter_params("shell", 0.4, n=2)
    before, after = apply_render(lab, plain).numpy(), apply_render(lab, cluttered).numpy()
    for b in range(2):
        L = lab[b].numpy()
        clutter = _expected_clutter(cluttered[b], L)
        changed = before[b, 0] != after[b, 0]
        assert changed.any() and not changed[L > 0].any()
        kind = 1 + (_field(cluttered[b].clutter.grids[1]) > -0.4307) + (_field(cluttered[b].clutter.grids[1]) > 0.4307)
        render_classes = torch.from_numpy(np.where(clutter, L.max() + kind, L))[None]
        core = boundary_distance(render_classes, 3)[0].numpy() > 3  # farther than 3 voxels from a class border
        assert (changed & core & clutter).sum() <= 0.01 * clutter.sum()  # cores show the background, as organs'
        values = np.unique(after[b, 0][changed])
        assert len(values) <= 3 and set(values) <= set(cluttered[b].clutter.shell_value)


def test_clutter_share_is_checked():
    from anatosynth.synth.render import draw_clutter

    with pytest.raises(ConfigError, match="clutter share"):
        draw_clutter(np.random.default_rng(0), 1.0, params("fill", 1)[0], PATCH)
