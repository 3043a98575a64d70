"""Every verb against a corpus of bad input built from real data (issue 14, item 2).

Each case runs the command line in-process (``anatosynth.cli.main(argv)``) and asserts what the
developers' guide promises: exit code 2, exactly one line on stderr that names the file and the problem,
no traceback, and nothing half-written (the working folder is byte-for-byte what it was before).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anatosynth.cli import main

CHAOS_CASES = ("chaos_01", "chaos_02", "chaos_03")
CROP = (48, 48, 12)
LABELS = {"0": "background", "1": "liver", "2": "right_kidney", "3": "left_kidney", "4": "spleen"}


# ------------------------------------------------------------------------------------------- corpus
def _crop(img: nib.Nifti1Image, lab: nib.Nifti1Image) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A CROP-sized block of a real case around its label's centre, with the affine moved to match."""
    label = np.asarray(lab.dataobj)
    centre = np.round(np.argwhere(label > 0).mean(axis=0)).astype(int)
    start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, CROP, label.shape)]
    sl = tuple(slice(a, a + s) for a, s in zip(start, CROP))
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.asarray(start, float) + img.affine[:3, 3]
    return (nib.Nifti1Image(np.asarray(img.dataobj)[sl], affine),
            nib.Nifti1Image(label[sl], affine))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir) -> Path:
    """A small, valid MSD dataset of three cropped CHAOS T2 cases (float64 as the originals)."""
    root = tmp_path_factory.mktemp("corpus") / "good"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    src = data_dir / "chaos-t2"
    training = []
    for name in CHAOS_CASES:
        img, lab = _crop(nib.load(src / "imagesTr" / f"{name}.nii.gz"), nib.load(src / "labelsTr" / f"{name}.nii.gz"))
        nib.save(img, root / "imagesTr" / f"{name}.nii.gz")
        nib.save(lab, root / "labelsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(
        {"name": "chaos-crop", "modality": {"0": "MRI"}, "labels": LABELS, "training": training}, indent=1))
    return root


def _edit(path: Path, change) -> None:
    """Rewrite a NIfTI file with ``change(array, affine) -> (array, affine)`` applied."""
    img = nib.load(path)
    array, affine = change(np.asarray(img.dataobj).copy(), img.affine.copy())
    nib.save(nib.Nifti1Image(array, affine), path)


def _nan(a, aff):
    a[3, 4, 5] = np.nan
    return a, aff


def _inf(a, aff):
    a[3, 4, 5] = np.inf
    return a, aff


def _shift(a, aff):
    aff[:3, 3] += 5.0  # 5 mm: far beyond the 1e-3 mm tolerance
    return a, aff


def _fraction(a, aff):
    a[a == 1] = 1.5
    return a, aff


# problem -> (file to break, relative to the dataset; change; words the error line must hold)
BROKEN = {
    "nan_image": ("imagesTr/chaos_02.nii.gz", _nan, "NaN or Inf"),
    "inf_image": ("imagesTr/chaos_02.nii.gz", _inf, "NaN or Inf"),
    "shape_mismatch": ("labelsTr/chaos_02.nii.gz", lambda a, aff: (a[:, :, :-1], aff), "shape"),
    "affine_mismatch": ("labelsTr/chaos_02.nii.gz", _shift, "affines differ"),
    "non_integral_labels": ("labelsTr/chaos_02.nii.gz", _fraction, "non-integer"),
}


def _dataset(corpus: Path, tmp_path: Path, problem: str) -> tuple[Path, str, str]:
    """A copy of the corpus with one problem; returns (dataset folder, file the line must name, words)."""
    root = tmp_path / problem
    shutil.copytree(corpus, root)
    if problem in BROKEN:
        rel, change, words = BROKEN[problem]
        _edit(root / rel, change)
        named = Path(rel).name
        if problem in ("shape_mismatch", "affine_mismatch"):
            named = "chaos_02.nii.gz"
        return root, named, words
    meta = json.loads((root / "dataset.json").read_text())
    if problem == "label_as_image":
        meta["training"][1]["image"] = "./labelsTr/chaos_02.nii.gz"
        (root / "dataset.json").write_text(json.dumps(meta))
        return root, "chaos_02.nii.gz", "label map"
    if problem == "empty_dataset":
        meta["training"] = []
        (root / "dataset.json").write_text(json.dumps(meta))
        return root, "dataset.json", "no cases"
    raise ValueError(problem)


# ----------------------------------------------------------------------------------- the assertions
def _snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with a hash of its bytes (folders: 'dir')."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _fails_cleanly(argv: list[str], capsys, workdir: Path, *must_name: str) -> str:
    """Run ``anatosynth ARGV``; assert exit 2, one stderr line naming ``must_name``, nothing written."""
    before = _snapshot(workdir)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"exit {code}, stderr: {err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for word in must_name:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    assert _snapshot(workdir) == before, "the failed command changed the working folder"
    return lines[0]


# -------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, corpus) -> Path:
    """A fine-tuned run folder (small UNet, random weights) that fits the corpus' classes."""
    import torch

    from anatosynth.train.checkpoint import save_model, write_json
    from anatosynth.train.models import ModelSpec, build_model
    from anatosynth.transforms.preprocess import PreprocessConfig

    run = tmp_path_factory.mktemp("runs") / "ft"
    run.mkdir()
    spec = ModelSpec("unet", 1, 5, 4, (32, 32, 16))
    torch.manual_seed(0)
    save_model(run / "model.pt", build_model(spec))
    write_json(run / "metadata.json", {
        "kind": "finetune", "model": spec.to_dict(), "class_names": list(LABELS.values()),
        "label_ids": [0, 1, 2, 3, 4], "preprocess": PreprocessConfig("MR", (3.0, 3.0, 8.0)).to_dict(),
        "dataset": "chaos-crop", "init": "none", "seed": 0})
    return run


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "afile").write_text("not a folder\n")
    return tmp_path


def _truncated(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[: max(1, src.stat().st_size // 3)])
    return dst


# ------------------------------------------------------------------------- datasets x verbs
DATA_PROBLEMS = ["nan_image", "inf_image", "shape_mismatch", "affine_mismatch", "label_as_image",
                 "non_integral_labels", "empty_dataset"]


@pytest.mark.parametrize("problem", DATA_PROBLEMS)
def test_check(corpus, work, capsys, problem):
    data, named, words = _dataset(corpus, work, problem)
    _fails_cleanly(["check", data, "--quiet"], capsys, work, named, words)


@pytest.mark.parametrize("problem", DATA_PROBLEMS)
def test_finetune(corpus, work, capsys, problem):
    data, named, words = _dataset(corpus, work, problem)
    _fails_cleanly(["finetune", "--data", data, "--out", work / "ft", "--model", "unet", "--feature-size", "4",
                    "--patch", "32,32,16", "--steps", "1", "--train-cases", "2", "--val-cases", "chaos_03",
                    "--spacing", "3,3,8", "--device", "cpu", "--quiet"], capsys, work, named, words)


@pytest.mark.parametrize("problem", DATA_PROBLEMS)
def test_evaluate(corpus, fake_run, work, capsys, problem):
    data, named, words = _dataset(corpus, work, problem)
    _fails_cleanly(["evaluate", "--data", data, "--model", fake_run, "--out", work / "report", "--device", "cpu",
                    "--quiet"], capsys, work, named, words)


@pytest.mark.parametrize("problem", ["non_integral_labels", "empty_dataset"])
def test_bank_build(corpus, work, capsys, problem):
    data, named, words = _dataset(corpus, work, problem)
    _fails_cleanly(["bank", "build", data, "--subjects", "3", "--out", work / "x.bank", "--quiet"],
                   capsys, work, named, words)


def test_empty_label_folder(work, capsys):
    (work / "empty").mkdir()
    _fails_cleanly(["bank", "build", work / "empty", "--out", work / "x.bank", "--quiet"], capsys, work,
                   "empty", "no NIfTI")
    _fails_cleanly(["check", work / "empty"], capsys, work, "empty", "no NIfTI")


# ---------------------------------------------------------------------------- --out problems
FILE_OUT = ("bank build", "bank merge", "bank inspect", "synth preview")  # --out names a file
DIR_OUT = ("synth export", "pretrain", "finetune", "evaluate", "experiment", "demo", "release")  # --out: a folder


def _out_commands(corpus: Path, run: Path, bank: Path, out: Path) -> dict[str, list]:
    """Every verb that writes, with ``out`` as its output."""
    return {
        "bank build": ["bank", "build", corpus, "--subjects", "1", "--out", out, "--quiet"],
        "bank merge": ["bank", "merge", bank, bank, "--out", out, "--quiet"],
        "bank inspect": ["bank", "inspect", bank, "--png", out],
        "synth preview": ["synth", "preview", "--patch", "32", "--n", "1", "--threads", "1", "--out", out],
        "synth export": ["synth", "export", "--patch", "32", "--n", "1", "--threads", "1", "--out", out],
        "pretrain": ["pretrain", "--model", "unet", "--feature-size", "4", "--patch", "32", "--batch", "1",
                     "--steps", "1", "--device", "cpu", "--threads", "1", "--out", out],
        "finetune": ["finetune", "--data", corpus, "--out", out, "--model", "unet", "--feature-size", "4",
                     "--patch", "32,32,16", "--steps", "1", "--train-cases", "2", "--spacing", "3,3,8",
                     "--device", "cpu", "--quiet"],
        "evaluate": ["evaluate", "--data", corpus, "--model", run, "--out", out, "--device", "cpu", "--quiet"],
        "experiment": ["experiment", Path(__file__).parents[1] / "protocols" / "cpu-mini.yaml", "--out", out,
                       "--quiet"],
        "demo": ["demo", "--out", out, "--steps", "1", "--threads", "1"],
        "release": ["release", run, "--out", out],
    }


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory) -> Path:
    from anatosynth.bank import load_bank
    from anatosynth.bank.store import save_bank

    path = tmp_path_factory.mktemp("banks") / "phantom.bank"
    save_bank(load_bank("builtin:phantom"), path)
    return path


@pytest.mark.parametrize("verb", FILE_OUT + DIR_OUT)
def test_out_in_the_way(corpus, fake_run, bank_file, work, capsys, verb):
    """``--out`` that is the wrong kind of thing: a file where a folder goes, a folder where a file goes."""
    if verb in FILE_OUT:
        out = work / ("in_the_way.bank" if verb.startswith("bank b") or verb.startswith("bank m") else "in_the_way.png")
        out.mkdir()
        (out / "keep.txt").write_text("mine\n")
    else:
        out = work / "in_the_way"
        out.write_text("mine\n")
    _fails_cleanly(_out_commands(corpus, fake_run, bank_file, out)[verb], capsys, work, "in_the_way")


@pytest.mark.parametrize("verb", FILE_OUT + DIR_OUT)
def test_out_not_writable(corpus, fake_run, bank_file, work, capsys, verb):
    """``--out`` under a file: no one can write there, root included (tests often run as root)."""
    name = "out.bank" if verb in ("bank build", "bank merge") else ("out.png" if verb in FILE_OUT else "out")
    out = work / "afile" / "sub" / name
    _fails_cleanly(_out_commands(corpus, fake_run, bank_file, out)[verb], capsys, work, "afile")


# ---------------------------------------------------------------------- files the verbs read
def test_truncated_bank_everywhere(bank_file, work, capsys):
    bad = _truncated(bank_file, work / "cut.bank")
    for argv in (["bank", "inspect", bad], ["bank", "audit", bad],
                 ["bank", "merge", bad, bad, "--out", work / "m.bank"],
                 ["synth", "preview", "--bank", bad, "--patch", "32", "--n", "1", "--out", work / "p.png"],
                 ["synth", "export", "--bank", bad, "--patch", "32", "--n", "1", "--out", work / "exp"],
                 ["synth", "bench", "--bank", bad, "--patch", "32", "--n", "1"],
                 ["pretrain", "--bank", bad, "--model", "unet", "--feature-size", "4", "--patch", "32",
                  "--steps", "1", "--device", "cpu", "--out", work / "pre"]):
        _fails_cleanly(argv, capsys, work, "cut.bank")


def test_unknown_yaml_keys(work, capsys):
    (work / "pre.yaml").write_text("model: unet\nstepz: 3\n")
    _fails_cleanly(["pretrain", "--config", work / "pre.yaml", "--out", work / "pre"], capsys, work,
                   "pre.yaml", "stepz")
    (work / "pre_synth.yaml").write_text("model: unet\nsynth:\n  anchorz: false\n")
    _fails_cleanly(["pretrain", "--config", work / "pre_synth.yaml", "--out", work / "pre"], capsys, work,
                   "pre_synth.yaml", "anchorz")
    (work / "synth.yaml").write_text("anchorz: false\n")
    for verb in ("preview", "export", "bench"):
        out = [] if verb == "bench" else ["--out", work / f"s-{verb}"]
        _fails_cleanly(["synth", verb, "--config", work / "synth.yaml", "--patch", "32", "--n", "1", *out],
                       capsys, work, "synth.yaml", "anchorz")
    proto = Path(__file__).parents[1] / "protocols" / "cpu-mini.yaml"
    (work / "proto.yaml").write_text(proto.read_text() + "\nseedz: [1]\n")
    _fails_cleanly(["experiment", work / "proto.yaml", "--out", work / "exp", "--dry-run"], capsys, work,
                   "proto.yaml", "seedz")


def test_truncated_checkpoints(corpus, fake_run, work, capsys):
    # evaluate: a run whose model.pt was cut short
    run = work / "cut_run"
    shutil.copytree(fake_run, run)
    _truncated(fake_run / "model.pt", run / "model.pt")
    _fails_cleanly(["evaluate", "--data", corpus, "--model", run, "--out", work / "rep", "--device", "cpu"],
                   capsys, work, "model.pt", "truncated")
    # finetune --init of a cut-short model.pt
    _fails_cleanly(["finetune", "--data", corpus, "--out", work / "ft", "--init", run / "model.pt",
                    "--model", "unet", "--feature-size", "4", "--patch", "32,32,16", "--steps", "1",
                    "--train-cases", "1", "--spacing", "3,3,8", "--device", "cpu", "--quiet"],
                   capsys, work, "model.pt", "truncated")
    # release of a run whose model.pt was cut short
    _fails_cleanly(["release", run, "--out", work / "weights"], capsys, work, "model.pt", "truncated")
    # pretrain --resume of a run whose checkpoint.pt was cut short
    pre = work / "pre"
    pre.mkdir()
    (pre / "config.yaml").write_text("model: unet\nfeature_size: 4\npatch: [32, 32, 32]\nbatch: 1\nsteps: 2\n"
                                     f"device: cpu\nout: {pre}\n")
    _truncated(fake_run / "model.pt", pre / "checkpoint.pt")
    _fails_cleanly(["pretrain", "--resume", pre], capsys, work, "checkpoint.pt", "truncated")


def test_checkpoint_of_another_architecture(corpus, fake_run, work, capsys):
    import torch

    from anatosynth.train.checkpoint import save_model
    from anatosynth.train.models import ModelSpec, build_model

    # evaluate: metadata says unet f4, weights are a dynunet's
    run = work / "other_run"
    shutil.copytree(fake_run, run)
    save_model(run / "model.pt", build_model(ModelSpec("dynunet", 1, 5, 4, (32, 32, 16))))
    _fails_cleanly(["evaluate", "--data", corpus, "--model", run, "--out", work / "rep", "--device", "cpu"],
                   capsys, work, "model.pt", "do not fit")
    # finetune --init: a UNet checkpoint for a SwinUNETR
    _fails_cleanly(["finetune", "--data", corpus, "--out", work / "ft", "--init", fake_run / "model.pt",
                    "--model", "swinunetr", "--feature-size", "12", "--patch", "64,64,32", "--steps", "1",
                    "--train-cases", "1", "--spacing", "3,3,8", "--device", "cpu", "--quiet"],
                   capsys, work, "model.pt", "unet")
    # pretrain --resume: the run's config says unet, its checkpoint holds a dynunet
    from anatosynth.train.checkpoint import save_checkpoint

    pre = work / "pre"
    pre.mkdir()
    (pre / "config.yaml").write_text("model: unet\nfeature_size: 4\npatch: [32, 32, 32]\nbatch: 1\nsteps: 2\n"
                                     f"device: cpu\nmode: primitives\nbank: null\nout: {pre}\n")
    spec = ModelSpec("dynunet", 1, 2, 4, (32, 32, 32))
    net = build_model(spec)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(pre / "checkpoint.pt", model=net, optimizer=opt, scheduler=sched, step=1, next_index=1,
                    world_size=1, spec=spec, class_names=["background", "x"], history=torch.zeros((0, 4)),
                    device=torch.device("cpu"))
    _fails_cleanly(["pretrain", "--resume", pre], capsys, work, "checkpoint.pt", "dynunet")


def test_out_is_checked_before_any_work(corpus, fake_run, work, capsys):
    """An unusable --out is reported first, before data is read or a model is built (no wasted minutes)."""
    data, _, _ = _dataset(corpus, work, "nan_image")
    out = work / "afile" / "sub"
    for argv in (["finetune", "--data", data, "--out", out, "--quiet"],
                 ["evaluate", "--data", data, "--model", work / "no_run", "--out", out],
                 ["synth", "export", "--bank", work / "no.bank", "--out", out],
                 ["pretrain", "--bank", work / "no.bank", "--out", out],
                 ["demo", "--bank", work / "no.bank", "--out", out]):
        _fails_cleanly(argv, capsys, work, "afile")


# ------------------------------------------------------------------------- issue 28: a first try with own data
def test_an_image_among_label_maps_is_found_whichever_subjects_the_seed_picks(corpus, work, capsys):
    """bank build screens every file of the folder (its first slice), not only the sampled subjects: the stray
    MR image fails a 1-subject build too, in one short line."""
    maps = work / "maps"
    maps.mkdir()
    for name in CHAOS_CASES:
        shutil.copy(corpus / "labelsTr" / f"{name}.nii.gz", maps / f"{name}.nii.gz")
    shutil.copy(corpus / "imagesTr" / "chaos_03.nii.gz", maps / "zz_image.nii.gz")
    (maps / "labels.json").write_text(json.dumps(LABELS))
    for k in ("1", "3"):
        line = _fails_cleanly(["bank", "build", maps, "--subjects", k, "--spacing", "3,3,6", "--out", work / "b.bank",
                               "--quiet"], capsys, work, "zz_image.nii.gz", "intensity image")
        assert len(line.replace(str(maps), "")) <= 200


def test_a_nested_labels_json_is_summarised_not_printed(corpus, work, capsys):
    nested = work / "classmap.json"
    nested.write_text(json.dumps({"total": {str(i): f"organ_{i}" for i in range(1, 118)}}))
    line = _fails_cleanly(["bank", "build", corpus, "--labels", nested, "--out", work / "b.bank", "--quiet"], capsys,
                          work, "classmap.json", "117 entries", "nested")
    assert len(line.replace(str(nested), "")) <= 200


def test_unknown_label_ids_are_counted_not_listed(tmp_path):
    from anatosynth.io.volume import unknown_ids_message

    assert unknown_ids_message([5, 6]) == "label ids 5, 6 are not in the label names"
    many = unknown_ids_message(list(range(5, 856)))
    assert "851 values" in many and "intensity image" in many and len(many) <= 200


def test_first_try_errors_are_one_line_and_write_nothing(corpus, fake_run, work, capsys):
    """The error cases issue 28 added, each through _fails_cleanly: exit 2, one line naming the problem,
    the working folder unchanged."""
    flat = work / "flat"
    flat.mkdir()
    shutil.copy(corpus / "imagesTr" / "chaos_01.nii.gz", flat / "img_01.nii.gz")
    shutil.copy(corpus / "labelsTr" / "chaos_01.nii.gz", flat / "label_01.nii.gz")
    shutil.copy(corpus / "imagesTr" / "chaos_02.nii.gz", flat / "img_02.nii.gz")
    _fails_cleanly(["dataset", "init", flat], capsys, work, "img_02.nii.gz", "no label map pairs with it")
    _fails_cleanly(["dataset", "init", corpus], capsys, work, "dataset.json", "exists already")
    _fails_cleanly(["finetune", "--data", flat, "--out", work / "ft"], capsys, work, "anatosynth dataset init")
    _fails_cleanly(["finetune", "--data", corpus, "--init", fake_run, "--model", "swinunetr", "--out", work / "ft"],
                   capsys, work, "--model swinunetr, but --init")
    report = work / "report"
    report.mkdir()
    (report / "old.txt").write_text("an earlier report")
    _fails_cleanly(["evaluate", "--data", corpus, "--model", fake_run, "--out", report, "--device", "cpu"], capsys,
                   work, "report", "not empty", "--overwrite")
