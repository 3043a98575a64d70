"""Largest-connected-component post-processing in ``evaluate``: the recorded choice, applied and reported."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from anatosynth.cli import main
from anatosynth.errors import InputError
from anatosynth.evaluate.evaluate import evaluate
from anatosynth.transforms.postprocess import read_decision


def test_evaluate_applies_the_recorded_choice_and_reports_it(tiny_run, synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "postprocessing.json").read_text())["weights"]
    assert set(record) == {"model_best.pt", "model.pt"}
    chosen = [n for n, c in record["model_best.pt"]["classes"].items() if c["keep_largest"]]
    assert read_decision(run, "model_best.pt")[0] == chosen
    auto = evaluate(synthetic_dataset, run, tmp_path / "auto", progress=False)
    none = evaluate(synthetic_dataset, run, tmp_path / "none", progress=False, postprocess="none")
    assert auto["run"]["weights"] == "model_best.pt"
    assert auto["postprocessing"]["keep_largest"] == chosen
    assert "postprocessing.json" in auto["postprocessing"]["source"]
    assert none["postprocessing"]["keep_largest"] == []
    assert "Post-processing (largest connected component kept)" in (tmp_path / "auto" / "summary.md").read_text()
    ids = {"ball": 200, "box": 500}
    for case in auto["per_case"]:
        pred = np.asarray(nib.load(tmp_path / "auto" / "predictions" / f"{case}.nii.gz").dataobj)
        for name in chosen:
            assert ndimage.label(pred == ids[name])[1] <= 1
    # force the opposite choice through the record: evaluate follows the file
    flipped = {n: {**c, "keep_largest": not c["keep_largest"]} for n, c in record["model_best.pt"]["classes"].items()}
    (run / "postprocessing.json").write_text(json.dumps({"weights": {"model_best.pt": {"classes": flipped}}}))
    assert evaluate(synthetic_dataset, run, tmp_path / "flip", progress=False,
                    save_predictions=False)["postprocessing"]["keep_largest"] == [n for n in ids if n not in chosen]
    # the final weights have no record now: said so, nothing applied
    final = evaluate(synthetic_dataset, run / "model.pt", tmp_path / "final", progress=False, save_predictions=False)
    assert final["postprocessing"]["keep_largest"] == [] and "no decision recorded for model.pt" in \
        final["postprocessing"]["source"]
    (run / "postprocessing.json").write_text("{not json")
    with pytest.raises(InputError, match="postprocessing.json"):
        evaluate(synthetic_dataset, run, tmp_path / "bad", progress=False)


def test_largest_everywhere_removes_the_tiny_runs_stray_blobs(tiny_run, synthetic_dataset, tmp_path):
    """The tiny run predicts scattered voxels; --postprocess largest leaves one component per class and lowers HD95."""
    out = tmp_path / "largest"
    assert main(["evaluate", "--data", str(synthetic_dataset), "--model", str(tiny_run), "--out", str(out),
                 "--postprocess", "largest", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    raw = evaluate(synthetic_dataset, tiny_run, tmp_path / "raw", progress=False, postprocess="none",
                   save_predictions=False)
    for case in summary["per_case"]:
        pred = np.asarray(nib.load(out / "predictions" / f"{case}.nii.gz").dataobj)
        assert all(ndimage.label(pred == i)[1] <= 1 for i in (200, 500))
    ball = summary["classes"]["ball"]["hd95"]["mean"]
    assert ball is not None and ball < raw["classes"]["ball"]["hd95"]["mean"]
