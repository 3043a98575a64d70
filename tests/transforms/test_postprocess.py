"""Largest-connected-component post-processing: what it removes, and when validation keeps it."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from anatosynth.evaluate.metrics import class_score
from anatosynth.train.finetune import class_dice
from anatosynth.transforms.postprocess import decide_largest_component, keep_largest_component


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return ((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(0) < radius ** 2


def test_a_stray_blob_is_removed_and_hd95_drops():
    shape = (48, 40, 32)
    ref = _ball(shape, (14, 20, 16), 7)
    pred = np.zeros(shape, np.uint8)
    pred[_ball(shape, (15, 20, 16), 7)] = 1
    pred[40:44, 30:34, 3:6] = 1  # a blob far from the organ
    pred[2:5, 2:5, 2:5] = 2  # another class, untouched when not listed
    kept = keep_largest_component(pred, [1])
    assert ndimage.label(kept == 1)[1] == 1 and not kept[40:44, 30:34, 3:6].any()
    assert (kept == 2).sum() == 27 and (kept == 1).sum() == (pred == 1).sum() - 48
    before, after = class_score(pred == 1, ref, (1.5, 1.5, 2.0)), class_score(kept == 1, ref, (1.5, 1.5, 2.0))
    assert after.hd95 < before.hd95 / 5 and after.dice > before.dice
    assert np.array_equal(keep_largest_component(kept, [1, 2]), kept)  # nothing left to remove


def test_validation_keeps_it_only_where_dice_does_not_drop():
    shape = (40, 32, 24)
    ref = np.zeros(shape, np.uint8)
    ref[_ball(shape, (10, 16, 12), 5)] = 1
    ref[4:10, 4:10, 4:10] = 2  # 'kidneys': two true parts in one class
    ref[30:36, 4:10, 4:10] = 2
    pred = ref.copy()
    pred[34:37, 26:29, 18:21] = 1  # stray blob of class 1
    before = [class_dice(pred, ref, 4)]
    after = [class_dice(keep_largest_component(pred, [1, 2, 3]), ref, 4)]
    decision = decide_largest_component(before, after, ["organ", "kidneys", "absent"])
    assert decision["classes"]["organ"]["keep_largest"]
    assert not decision["classes"]["kidneys"]["keep_largest"]  # would delete a true kidney
    assert decision["classes"]["kidneys"]["dice_after"] < decision["classes"]["kidneys"]["dice_before"] == 1.0
    assert not decision["classes"]["absent"]["keep_largest"] and decision["classes"]["absent"]["dice_before"] is None
