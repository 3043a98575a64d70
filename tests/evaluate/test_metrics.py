"""Known answers of the Dice/HD95 metrics and of the absent-class rule."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from anatosynth.evaluate.metrics import case_scores, class_score
from anatosynth.evaluate.report import markdown_table, summarise, write_reports


@pytest.fixture
def cube() -> np.ndarray:
    mask = np.zeros((24, 20, 16), bool)
    mask[5:12, 5:12, 4:11] = True
    return mask


def test_label_against_itself_is_perfect(cube):
    score = class_score(cube, cube, (1.0, 1.0, 1.0))
    assert score.dice == pytest.approx(1.0)
    assert score.hd95 == pytest.approx(0.0)
    assert score.status == "ok"


def test_shifted_copy_scores_below_one_with_known_values(cube):
    shifted = np.roll(cube, 2, axis=0)
    score = class_score(shifted, cube, (1.5, 1.0, 1.0))
    assert score.dice == pytest.approx(2 * 5 / 14)  # overlap 5 of 7 slices
    assert score.dice < 1.0
    assert score.hd95 == pytest.approx(2 * 1.5)  # two voxels along an axis of 1.5 mm


def test_empty_prediction_scores_zero(cube):
    score = class_score(np.zeros_like(cube), cube, (1.0, 1.0, 1.0))
    assert score.dice == 0.0
    assert math.isnan(score.hd95)
    assert score.status == "missed"


def test_false_positive_and_absent_classes(cube):
    fp = class_score(cube, np.zeros_like(cube), (1.0, 1.0, 1.0))
    assert (fp.dice, fp.status) == (0.0, "false_positive")
    absent = class_score(np.zeros_like(cube), np.zeros_like(cube), (1.0, 1.0, 1.0))
    assert math.isnan(absent.dice) and math.isnan(absent.hd95) and absent.status == "absent"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_crop_does_not_change_hd95():
    ref = np.zeros((40, 40, 40), bool)
    ref[2:10, 2:10, 2:10] = True
    pred = np.zeros_like(ref)
    pred[25:35, 25:35, 25:35] = True
    from monai.metrics import compute_hausdorff_distance
    import torch

    full = float(compute_hausdorff_distance(torch.as_tensor(np.stack([~pred, pred])[None]).float(),
                                            torch.as_tensor(np.stack([~ref, ref])[None]).float(), percentile=95)[0, 0])
    assert class_score(pred, ref, (1, 1, 1)).hd95 == pytest.approx(full)


def test_summary_excludes_absent_and_reports_consistently(cube, tmp_path):
    ref = cube.astype(np.int32) * 3
    ref[15:20, 2:6, 2:6] = 7
    pred_a = ref.copy()
    pred_b = np.where(ref == 3, 3, 0)  # misses class 7
    ref_c = np.where(ref == 3, 3, 0)  # class 7 absent in both
    names = {"organ": 3, "small": 7}
    scores = {"a": case_scores(pred_a, ref, names, (1, 1, 1)), "b": case_scores(pred_b, ref, names, (1, 1, 1)),
              "c": case_scores(ref_c, ref_c, names, (1, 1, 1))}
    summary = summarise(scores, list(names))
    small = summary["classes"]["small"]
    assert small["dice"]["n"] == 2 and small["dice"]["mean"] == pytest.approx(0.5)  # 1.0 and 0.0; c excluded
    assert small["n_absent"] == 1 and small["n_missed"] == 1
    assert small["hd95"]["n"] == 1
    assert summary["per_case"]["c"]["small"]["dice"] is None
    paths = write_reports(summary, tmp_path)
    table = paths["md"].read_text()
    assert "| small | 50.0 ± 50.0 | 2 |" in table and "n/a" in table
    rows = list(csv.DictReader(paths["csv"].open()))
    row_c = next(r for r in rows if r["case"] == "c" and r["class"] == "small")
    assert row_c["dice"] == "" and row_c["status"] == "absent"
    assert json.loads(paths["json"].read_text())["classes"]["organ"]["dice"]["mean"] == pytest.approx(1.0)


def test_markdown_with_nothing_defined():
    text = markdown_table({"classes": {}, "mean_dice": None, "mean_hd95": None, "per_case": {}, "case_mean_dice": {}})
    assert "n/a" in text
