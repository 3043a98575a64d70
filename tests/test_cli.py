"""The command line: verbs exist, bad input is one line on stderr with exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from anatosynth.cli import build_parser, main
from tests.conftest import write_nifti

VERBS = {"bank", "synth", "pretrain", "finetune", "evaluate", "experiment", "demo", "check"}


def test_all_verbs_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert VERBS <= set(sub.choices)


def _bad_dataset(tmp_path, problem):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    img = np.zeros((6, 6, 6), np.float32)
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[2:4, 2:4, 2:4] = 1
    entry = {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}
    if problem == "nan":
        img[1, 1, 1] = np.nan
    if problem == "shape":
        img = np.zeros((6, 6, 5), np.float32)
    if problem == "escape":
        entry["image"] = "../../etc/passwd"
    if problem == "missing":
        entry["label"] = "labelsTr/zzz.nii.gz"
    write_nifti(root / "imagesTr" / "a.nii.gz", img)
    write_nifti(root / "labelsTr" / "a.nii.gz", lab)
    if problem == "truncated":
        raw = (root / "labelsTr" / "a.nii.gz").read_bytes()
        (root / "labelsTr" / "a.nii.gz").write_bytes(raw[:60])
    (root / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "background", "1": "liver"}, "modality": {"0": "CT"}, "training": [entry]}))
    return root


@pytest.mark.parametrize("problem,message", [
    ("nan", "a.nii.gz: 1 voxels are NaN or Inf"),
    ("shape", "image shape (6, 6, 5) and label shape (6, 6, 6) differ"),
    ("escape", "escapes the dataset folder"),
    ("missing", "listed file 'labelsTr/zzz.nii.gz' does not exist"),
    ("truncated", "a.nii.gz: "),
])
def test_check_bad_input_exit_2(tmp_path, capsys, problem, message):
    root = _bad_dataset(tmp_path, problem)
    assert main(["check", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_check_good_dataset(tmp_path, capsys):
    root = _bad_dataset(tmp_path, None)
    assert main(["check", str(root)]) == 0
    assert "ok: 1 cases valid" in capsys.readouterr().out


def test_console_script_no_traceback(tmp_path):
    """The installed entry point itself (as a user runs it) exits 2 with one line."""
    root = _bad_dataset(tmp_path, "nan")
    proc = subprocess.run([sys.executable, "-m", "anatosynth", "check", str(root), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("anatosynth check: error:")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, verb, suggestion", [
    (["pretrain", "--stpes", "5"], "anatosynth pretrain", "did you mean --steps?"),
    (["pretrain", "--step", "2"], "anatosynth pretrain", "did you mean --steps?"),  # no silent abbreviation
    (["bank", "build", "x", "--subjets", "3", "--out", "y.bank"], "anatosynth bank build", "did you mean --subjects?"),
    (["finetune", "--dta", "x"], "anatosynth finetune", "did you mean --data?"),
])
def test_a_typo_names_the_verb_and_the_closest_option(argv, verb, suggestion, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {verb} ") and f"{verb}: error: unrecognised option" in err and suggestion in err


def test_errors_name_the_verb_and_counts_agree_with_their_nouns(tmp_path, capsys):
    from anatosynth.options import counted

    assert main(["bank", "build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b.bank")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anatosynth bank build: error:")
    assert (counted(1, "subject"), counted(5, "subject"), counted(1, "labelled case")) == (
        "1 subject", "5 subjects", "1 labelled case")


@pytest.mark.parametrize("argv", [
    ["pretrain", "--device", "cuda:7", "--steps", "1"],
    ["synth", "preview", "--device", "cuda:7"],
    ["synth", "bench", "--device", "cuda:7"],
])
def test_every_verb_words_a_missing_gpu_the_same_way(argv, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main([*argv, "--out", str(tmp_path / "o.png")] if argv[0] == "synth" and argv[1] == "preview" else
                [*argv, "--out", str(tmp_path / "o")] if argv[0] == "pretrain" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("device 'cuda:7' requested but no CUDA GPU is available (use --device cpu)")


@pytest.mark.parametrize("argv, words", [
    (["evaluate", "--modle", "x", "--data", "y", "--out", "z"], "unrecognised option --modle; did you mean --model?"),
    (["pretrian", "--steps", "3"], "unknown verb 'pretrian'; did you mean pretrain?"),
    (["bank", "biuld", "x", "--out", "y"], "unknown action 'biuld'; did you mean build?"),
])
def test_a_typo_is_named_before_what_it_leaves_missing(argv, words, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and words in capsys.readouterr().err
