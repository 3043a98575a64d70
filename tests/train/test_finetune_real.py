"""End to end on real scans: tiny fine-tunes on CHAOS T2 (MR) and OpenKBP (CT), then evaluation reports."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anatosynth.cli import main

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

pytestmark = pytest.mark.slow


def _need(name: str) -> Path:
    path = DATA / name
    if not (path / "dataset.json").is_file():
        pytest.skip(f"real data {path} not available")
    return path


def _check_report(report: Path, names: list[str], cases: list[str]) -> dict:
    summary = json.loads((report / "summary.json").read_text())
    assert list(summary["classes"]) == names
    assert sorted(summary["per_case"]) == sorted(cases)
    table = (report / "summary.md").read_text()
    for name in names:
        assert f"| {name} |" in table
    assert "| class | Dice % (mean ± std) | n | HD95 mm (mean ± std) |" in table
    header = (report / "per_case.csv").read_text().splitlines()[0]
    assert header == "case,class,dice,hd95_mm,status,ref_voxels,pred_voxels"
    return summary


def _same_geometry(pred: Path, ref: Path) -> None:
    p, r = nib.load(pred), nib.load(ref)
    assert p.shape == r.shape
    np.testing.assert_allclose(p.affine, r.affine, atol=1e-4)
    assert nib.aff2axcodes(p.affine) == nib.aff2axcodes(r.affine)


def test_chaos_t2_unet_finetune_and_evaluate(tmp_path, capsys):
    data = _need("chaos-t2")
    run, report = tmp_path / "run", tmp_path / "report"
    assert main(["finetune", "--data", str(data), "--out", str(run), "--model", "unet", "--feature-size", "4",
                 "--patch", "32", "--steps", "3", "--train-cases", "2", "--val-cases", "chaos_01", "--seed", "0",
                 "--spacing", "5,5,5", "--val-every", "2", "--overlap", "0", "--quiet"]) == 0
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["preprocess"]["modality"] == "MR"
    assert meta["class_names"] == ["background", "liver", "right_kidney", "left_kidney", "spleen"]
    assert main(["evaluate", "--data", str(data), "--model", str(run), "--out", str(report), "--overlap", "0.25",
                 "--quiet"]) == 0
    assert "evaluated 1 case (the run's evaluation split" in capsys.readouterr().out
    _check_report(report, ["liver", "right_kidney", "left_kidney", "spleen"], ["chaos_01"])
    _same_geometry(report / "predictions" / "chaos_01.nii.gz", data / "labelsTr" / "chaos_01.nii.gz")


def test_openkbp_swinunetr_finetune_with_missing_organs(tmp_path):
    data = _need("openkbp")
    run, report = tmp_path / "run", tmp_path / "report"
    eval_cases = ["openkbp_003", "openkbp_010"]  # both lack esophagus, larynx and mandible
    assert main(["finetune", "--data", str(data), "--out", str(run), "--model", "swinunetr", "--feature-size", "12",
                 "--patch", "64,64,32", "--steps", "2", "--train-cases", "2", "--val-cases", ",".join(eval_cases),
                 "--val-max-cases", "1", "--overlap", "0", "--seed", "1", "--spacing", "6,6,6", "--quiet"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert split["eval"] == eval_cases and len(split["train"]) == 2
    assert main(["evaluate", "--data", str(data), "--model", str(run), "--out", str(report), "--overlap", "0",
                 "--cases", "openkbp_003", "--quiet"]) == 0
    names = ["brainstem", "spinal_cord", "right_parotid", "left_parotid", "esophagus", "larynx", "mandible"]
    summary = _check_report(report, names, ["openkbp_003"])
    for organ in ("esophagus", "larynx", "mandible"):  # absent in the reference: never scored as present
        status = summary["per_case"]["openkbp_003"][organ]["status"]
        assert status in ("absent", "false_positive")
        assert summary["per_case"]["openkbp_003"][organ]["hd95"] is None
    _same_geometry(report / "predictions" / "openkbp_003.nii.gz", data / "labelsTr" / "openkbp_003.nii.gz")
