"""``anatosynth evaluate`` on a tiny synthetic dataset: geometry, label ids, reports, errors."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from anatosynth.cli import main
from anatosynth.errors import InputError
from anatosynth.evaluate.evaluate import evaluate


def test_predictions_land_in_original_geometry_with_dataset_ids(tiny_run, synthetic_dataset, tmp_path):
    summary = evaluate(synthetic_dataset, tiny_run, tmp_path / "report", progress=False)
    assert summary["cases_from"].startswith("the run's evaluation split")
    split = json.loads((tiny_run / "split.json").read_text())
    assert sorted(summary["per_case"]) == sorted(split["eval"])
    for case in split["eval"]:
        pred = nib.load(tmp_path / "report" / "predictions" / f"{case}.nii.gz")
        ref = nib.load(synthetic_dataset / "labelsTr" / f"{case}.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 200, 500}
    assert set(summary["classes"]) == {"ball", "box"}
    assert summary["label_ids"] == {"ball": 200, "box": 500}
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "| ball |" in md and "| box |" in md


def test_cases_option_and_unknown_case(tiny_run, synthetic_dataset, tmp_path):
    summary = evaluate(synthetic_dataset, tiny_run, tmp_path / "r", cases=["case_00"], progress=False,
                       save_predictions=False)
    assert list(summary["per_case"]) == ["case_00"]
    assert not (tmp_path / "r" / "predictions").exists()
    with pytest.raises(InputError, match="not in dataset"):
        evaluate(synthetic_dataset, tiny_run, tmp_path / "r2", cases=["nope"], progress=False)


def test_class_names_must_match(tiny_run, synthetic_dataset, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(synthetic_dataset, other)
    meta = json.loads((other / "dataset.json").read_text())
    meta["labels"]["500"] = "cube"
    (other / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="class names differ.*box.*cube"):
        evaluate(other, tiny_run, tmp_path / "r", progress=False)


def test_geometry_mismatch_is_a_clear_cli_error(tiny_run, synthetic_dataset, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(synthetic_dataset, bad)
    lab = nib.load(bad / "labelsTr" / "case_02.nii.gz")
    shifted = lab.affine.copy()
    shifted[0, 3] += 5
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), shifted), bad / "labelsTr" / "case_02.nii.gz")
    code = main(["evaluate", "--data", str(bad), "--model", str(tiny_run), "--out", str(tmp_path / "r"),
                 "--cases", "case_00,case_02", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "case_02.nii.gz" in err and "affines differ" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # checked before anything is written


def test_run_folder_without_finetune_metadata(tmp_path, capsys):
    code = main(["evaluate", "--data", str(tmp_path), "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert code == 2
    assert f"{tmp_path / 'missing'}: run folder or weights file not found" in capsys.readouterr().err  # the path given


def test_nnunet_layout_round_trip(synthetic_dataset, tmp_path):
    """Fine-tune and evaluate on the same data in nnU-Net raw layout (labels name→id, _0000 images)."""
    from anatosynth.train.finetune import FinetuneConfig, finetune

    root = tmp_path / "Dataset001_Tiny"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for lab in sorted((synthetic_dataset / "labelsTr").glob("*.nii.gz")):
        name = lab.name[:-len(".nii.gz")]
        shutil.copy(lab, root / "labelsTr" / lab.name)
        shutil.copy(synthetic_dataset / "imagesTr" / lab.name, root / "imagesTr" / f"{name}_0000.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "ball": 200, "box": 500},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    run = finetune(FinetuneConfig(data=str(root), out=str(tmp_path / "run"), model="unet", feature_size=4,
                                  patch=(32, 32, 32), steps=1, train_cases=1, spacing=(3.0, 3.0, 3.0)), progress=False)
    summary = evaluate(root, run, tmp_path / "report", progress=False)
    assert summary["label_ids"] == {"ball": 200, "box": 500} and summary["n_cases"] == 1
    case = next(iter(summary["per_case"]))
    assert nib.load(tmp_path / "report" / "predictions" / f"{case}.nii.gz").shape == \
        nib.load(root / "labelsTr" / f"{case}.nii.gz").shape


def test_cases_that_trained_or_validated_the_run_are_warned_about_marked_and_not_test_dice(
        tiny_run, synthetic_dataset, tmp_path, capsys):
    split = json.loads((tiny_run / "split.json").read_text())
    (train,), (val,), (test,) = split["train"], split["val"], split["test"]
    alone = evaluate(synthetic_dataset, tiny_run, tmp_path / "test", progress=False, save_predictions=False)
    assert capsys.readouterr().err == ""  # the run's own test cases: no warning
    assert alone["case_roles"] == {test: "test"} and alone["test_mean_dice"] == alone["mean_dice"]
    every = evaluate(synthetic_dataset, tiny_run, tmp_path / "all", cases=[train, val, test], progress=False,
                     save_predictions=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of 3 cases scored are not test cases" in err[0] and f"{train} (train)" in err[0]
    assert every["case_roles"] == {train: "train", val: "validation", test: "test"}
    assert every["n_test_cases"] == 1 and every["test_mean_dice"] == pytest.approx(alone["mean_dice"])
    md = (tmp_path / "all" / "summary.md").read_text()
    assert f"| {train} | *train* |" in md and f"| {val} | *validation* |" in md and f"| {test} | test |" in md
    assert "**Test Dice:" in md and "not a test result" in md


def test_an_existing_report_folder_is_refused_unless_overwrite_clears_it(tiny_run, synthetic_dataset, tmp_path,
                                                                          capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "predictions").mkdir()
    (out / "predictions" / "stale.nii.gz").write_bytes(b"old")
    argv = ["evaluate", "--data", str(synthetic_dataset), "--model", str(tiny_run), "--out", str(out), "--quiet",
            "--no-predictions", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not empty" in err[0] and "--overwrite" in err[0]
    assert (out / "predictions" / "stale.nii.gz").exists()
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "predictions").exists() and (out / "summary.md").is_file()


def test_labels_json_renames_the_dataset_classes_for_evaluate(tiny_run, synthetic_dataset, tmp_path, capsys):
    names = tmp_path / "labels.json"
    names.write_text(json.dumps({"200": "sphere", "500": "box"}))
    assert main(["evaluate", "--data", str(synthetic_dataset), "--model", str(tiny_run), "--out", str(tmp_path / "r"),
                 "--labels", str(names), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err  # the run predicts 'ball': a renamed class is found out, with the option it has
    assert "class names differ" in err and "sphere" in err
