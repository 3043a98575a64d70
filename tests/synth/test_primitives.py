"""PrimGeoSeg-style primitives: classes, assembly (count, overlap), painting, contour image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from anatosynth.errors import ConfigError
from anatosynth.synth.primitives import (
    NUM_PRIMITIVE_CLASSES,
    primitive_contours,
    PRIMITIVE_CLASS_NAMES,
    PrimitiveObject,
    PrimitiveParams,
    apply_primitives,
    draw_primitive_params,
    object_mask,
)
from anatosynth.synth.render import CONTOUR_VALUE, apply_render, draw_render_params

PATCH = (96, 96, 96)


@pytest.fixture(scope="module")
def draws() -> list[PrimitiveParams]:
    return [draw_primitive_params(np.random.default_rng(s), PATCH) for s in range(12)]


def paint_numpy(p: PrimitiveParams) -> np.ndarray:
    out = np.zeros(p.patch, np.int64)
    for o in p.objects:
        x, y, z = o.origin
        sx, sy, sz = o.size
        out[x : x + sx, y : y + sy, z : z + sz][object_mask(o)] = o.label
    return out


def test_class_names():
    assert NUM_PRIMITIVE_CLASSES == 32
    assert len(PRIMITIVE_CLASS_NAMES) == 33 and len(set(PRIMITIVE_CLASS_NAMES)) == 33
    assert PRIMITIVE_CLASS_NAMES[:5] == ["background", "ellipse_prism", "ellipse_hourglass", "ellipse_pyramid",
                                         "ellipse_rhombus"]  # PrimGeoSeg's class order
    assert PRIMITIVE_CLASS_NAMES[-1] == "nonagon_rhombus"


def test_all_32_classes_are_reachable(draws):
    seen = {o.label for p in draws for o in p.objects}
    assert seen == set(range(1, 33))
    labels = apply_primitives(draws, PATCH)
    assert set(labels.unique().tolist()) <= set(range(33))
    assert len(set(labels.unique().tolist())) > 25


def test_about_twenty_objects_per_volume(draws):
    counts = [len(p.objects) for p in draws]
    assert all(len(p.objects) + p.dropped == 20 for p in draws)
    assert np.mean(counts) >= 15 and max(counts) <= 20


def test_overlap_with_earlier_objects_is_at_most_70_percent(draws):
    for p in draws:
        occ = np.zeros(PATCH, bool)
        for o in p.objects:
            m = object_mask(o)
            x, y, z = o.origin
            sx, sy, sz = o.size
            assert x + sx <= PATCH[0] and y + sy <= PATCH[1] and z + sz <= PATCH[2]
            assert m.sum() == o.volume > 0
            overlap = np.count_nonzero(occ[x : x + sx, y : y + sy, z : z + sz] & m)
            assert overlap <= 0.7 * o.volume
            occ[x : x + sx, y : y + sy, z : z + sz] |= m
        vols = [o.volume for o in p.objects]
        assert vols == sorted(vols, reverse=True)  # largest first


def test_sizes_follow_primgeoseg(draws):
    for p in draws:
        for o in p.objects:
            s, _, h = o.size
            assert 30 <= s <= 80 and 10 <= h <= 50
            assert o.base.shape == (s, s) and o.index.shape == (h, s)
            if o.label <= 4:  # ellipses: box side 2 max(a, b) <= 80; the larger semi-axis reaches the box edge
                assert s % 2 == 0
                c = (s - 1) / 2
                px, py = np.nonzero(o.base)
                assert abs(np.hypot(px - c, py - c).max() - s / 2) <= 1.5


def test_torch_painting_matches_numpy_and_later_objects_win(draws):
    labels = apply_primitives(draws[:3], PATCH)
    assert labels.dtype == torch.int64 and labels.shape == (3, *PATCH)
    for b in range(3):
        np.testing.assert_array_equal(labels[b].numpy(), paint_numpy(draws[b]))
    one = apply_primitives(draws[1:2], PATCH)
    assert torch.equal(one[0], labels[1])


def test_same_seed_same_bytes():
    a = apply_primitives([draw_primitive_params(np.random.default_rng(42), PATCH)], PATCH)
    b = apply_primitives([draw_primitive_params(np.random.default_rng(42), PATCH)], PATCH)
    c = apply_primitives([draw_primitive_params(np.random.default_rng(43), PATCH)], PATCH)
    assert torch.equal(a, b) and not torch.equal(a, c)


def _single(label: int, rng_seed: int = 0) -> PrimitiveParams:
    """One object of a given class, centred, found by drawing until the class comes up."""
    rng = np.random.default_rng(rng_seed)
    while True:
        p = draw_primitive_params(rng, PATCH, n_objects=1)
        o = p.objects[0]
        if o.label == label:
            s, _, h = o.size
            o.origin = ((96 - s) // 2, (96 - s) // 2, (96 - h) // 2)
            return p


def test_height_profiles_scale_the_cross_section():
    areas = {}
    for name, label in (("prism", 1), ("hourglass", 2), ("pyramid", 3), ("rhombus", 4)):
        m = object_mask(_single(label).objects[0])
        areas[name] = m.sum(axis=(0, 1))
    a = areas["prism"]
    assert np.all(np.abs(a - a[0]) == 0)
    assert areas["pyramid"][0] > 4 * max(areas["pyramid"][-1], 1) and np.all(np.diff(areas["pyramid"]) <= 0)
    hg, rh = areas["hourglass"], areas["rhombus"]
    assert hg[1:-1].min() < 0.5 * min(hg[0], hg[-1])  # waist
    assert rh[1:-1].max() > 2.0 * max(rh[0], rh[-1])  # bulge


def test_contour_image_lies_on_label_boundaries_per_slice_and_is_open(draws):
    p = draws[0]
    lab = apply_primitives([p], PATCH)
    rp = draw_render_params(np.random.default_rng(0), 33, "contour", PATCH)
    img = apply_render(lab, [rp])[0, 0].numpy()
    L = lab[0].numpy()
    drawn = img > 0
    assert np.all(img[drawn] == np.float32(CONTOUR_VALUE))
    for z in range(0, 96, 7):  # every drawn pixel is inside an object, within 2 px of a label change in its slice
        sl = L[:, :, z]
        changed = ndimage.maximum_filter(sl, size=5) != ndimage.minimum_filter(sl, size=5)
        assert np.all(sl[drawn[:, :, z]] > 0) and np.all(changed[drawn[:, :, z]])
    # open top and bottom: a lone prism's first and last slices only show their outline
    single = _single(1)
    lab1 = apply_primitives([single], PATCH)
    img1 = apply_render(lab1, [rp])[0, 0].numpy() > 0
    o = single.objects[0]
    z0, z1 = o.origin[2], o.origin[2] + o.size[2] - 1
    for z in (z0, z1):
        inside = ndimage.binary_erosion(lab1[0, :, :, z].numpy() > 0, np.ones((3, 3)), iterations=2)
        assert inside.any() and not img1[:, :, z][inside].any()


def test_small_patches_clip_boxes():
    patch = (64, 64, 32)
    p = draw_primitive_params(np.random.default_rng(0), patch)
    assert all(o.size[0] <= 64 and o.size[2] <= 32 for o in p.objects)
    lab = apply_primitives([p], patch)
    assert lab.shape == (1, *patch) and int(lab.max()) > 0


def test_bad_inputs():
    with pytest.raises(ConfigError, match="patch"):
        draw_primitive_params(np.random.default_rng(0), (96, 96))
    p = draw_primitive_params(np.random.default_rng(0), (64, 64, 32), n_objects=2)
    with pytest.raises(ConfigError, match="drawn for patch"):
        apply_primitives([p], PATCH)


def test_per_object_contours_are_union_of_each_objects_own_outline(draws):
    p = draws[1]
    img = primitive_contours([p], PATCH)
    assert img.shape == (1, 1, *PATCH) and img.dtype == torch.float32
    assert set(img.unique().tolist()) == {0.0, float(np.float32(128 / 255))}
    drawn = img[0, 0].numpy() > 0
    ref = np.zeros(PATCH, bool)
    for o in p.objects:
        m = object_mask(o)
        ring = m & ~ndimage.binary_erosion(m, np.ones((3, 3, 1)), iterations=2, border_value=0)  # in-plane
        x, y, z = o.origin
        sx, sy, sz = o.size
        ref[x : x + sx, y : y + sy, z : z + sz] |= ring
    np.testing.assert_array_equal(drawn, ref)
    labels = apply_primitives([p], PATCH)[0].numpy()
    assert np.all(labels[drawn] > 0)  # outlines lie inside objects
    # a lone object away from the border: same image as the label-derived contour render
    single = _single(5)
    rp = draw_render_params(np.random.default_rng(0), 33, "contour", PATCH)
    via_labels = apply_render(apply_primitives([single], PATCH), [rp])
    assert torch.equal(primitive_contours([single], PATCH), via_labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_painting_matches_cpu(draws):
    assert torch.equal(apply_primitives(draws[:2], PATCH, "cuda").cpu(), apply_primitives(draws[:2], PATCH))
    assert torch.equal(primitive_contours(draws[:2], PATCH, "cuda").cpu(), primitive_contours(draws[:2], PATCH))


def test_object_dataclass_size():
    o = PrimitiveObject(label=1, origin=(0, 0, 0), base=np.ones((30, 30), bool), index=np.zeros((12, 30), np.int32))
    assert o.size == (30, 30, 12)
