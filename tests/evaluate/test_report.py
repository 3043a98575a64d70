"""The evaluation's summary: one definition of the mean Dice, shared with the experiment's test Dice."""

from __future__ import annotations

import math

import pytest

from anatosynth.evaluate.metrics import ClassScore
from anatosynth.evaluate.report import mean_dice, summarise


def _score(dice: float) -> ClassScore:
    return ClassScore(dice=dice, hd95=1.0, status="absent" if math.isnan(dice) else "ok", ref_voxels=1,
                      pred_voxels=1)


def test_mean_dice_is_the_mean_of_class_means_and_summarise_uses_it():
    scores = {"a": {"liver": _score(0.9), "spleen": _score(0.5)},
              "b": {"liver": _score(0.7), "spleen": _score(math.nan)},  # spleen absent in both: left out
              "c": {"liver": _score(0.2), "spleen": _score(0.1)}}
    summary = summarise(scores, ["liver", "spleen"])
    expected = ((0.9 + 0.7 + 0.2) / 3 + (0.5 + 0.1) / 2) / 2  # not the mean of the cases' means (0.4917)
    assert summary["mean_dice"] == pytest.approx(expected)
    assert mean_dice(summary["per_case"]) == summary["mean_dice"]
    # the same definition over plain numbers, without some cases
    plain = {c: {n: s.dice for n, s in per.items()} for c, per in scores.items()}
    assert mean_dice(plain, exclude=["a"]) == pytest.approx(((0.7 + 0.2) / 2 + 0.1) / 2)
    assert mean_dice(plain, exclude=["a", "b", "c"]) is None
    assert mean_dice({"b": {"spleen": None}}) is None
