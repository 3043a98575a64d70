"""Fine-tuning: deterministic splits, run folder contents, seeding and clear errors (tiny synthetic data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from anatosynth.cli import main
from anatosynth.errors import ConfigError
from anatosynth.io.datasets import Case
from anatosynth.train.checkpoint import read_checkpoint
from anatosynth.train.finetune import FinetuneConfig, class_dice, finetune, lateralised, make_split


def _write_dataset(root: Path, n: int = 3, seed: int = 0, shape=(26, 24, 16)) -> Path:
    """A tiny MSD-style CT dataset with non-contiguous ids 200 ('ball') and 500 ('box'), LPS at 2x2x3 mm."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    entries = []
    for i in range(n):
        grid = np.indices(shape)
        c = np.array(shape) / 2 + rng.integers(-2, 3, 3)
        label = np.zeros(shape, np.uint16)
        label[((grid - c[:, None, None, None]) ** 2 * np.array([1, 1, 4])[:, None, None, None]).sum(0) < 30] = 200
        label[2:8, 2:7, 2:6] = 500
        image = np.where(label == 200, 150, np.where(label == 500, 60, -100)) + rng.normal(0, 15, shape)
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"c{i}.nii.gz")
        entries.append({"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "tiny", "modality": {"0": "CT"}, "labels": {"0": "background", "200": "ball", "500": "box"},
        "training": entries}))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("tiny") / "data")


def _cfg(data: Path, out: Path, **kw) -> FinetuneConfig:
    base = dict(data=str(data), out=str(out), model="unet", feature_size=4, patch=(32, 32, 32), steps=3,
                train_cases=1, seed=3, spacing=(3.0, 3.0, 3.0), val_every=2)
    base.update(kw)
    return FinetuneConfig(**base)


def _cases(n: int) -> list[Case]:
    return [Case(f"c{i:02d}", Path(f"i{i}"), Path(f"l{i}")) for i in range(n)]


def test_split_is_deterministic_and_disjoint():
    a = make_split(_cases(10), 4, seed=7)
    assert a == make_split(_cases(10), 4, seed=7)
    assert a != make_split(_cases(10), 4, seed=8)
    assert len(a["train"]) == 4 and len(a["eval"]) == 6 and not set(a["train"]) & set(a["eval"])
    assert a["val"] == a["eval"][:4]
    b = make_split(_cases(10), 2, seed=7, val_cases=["c00", "c01"])
    assert b["eval"] == ["c00", "c01"] and not {"c00", "c01"} & set(b["train"]) and len(b["train"]) == 2


def test_split_errors():
    with pytest.raises(ConfigError, match="leaves no evaluation case"):
        make_split(_cases(3), 3, seed=0)
    with pytest.raises(ConfigError, match="no training cases left"):
        make_split(_cases(2), 1, seed=0, val_cases=["c00", "c01"])
    with pytest.raises(ConfigError, match="not among the labelled cases"):
        make_split(_cases(3), 1, seed=0, val_cases=["zz"])
    unlabelled = [Case("u", Path("i"), None)] + _cases(2)
    assert "u" not in make_split(unlabelled, 1, seed=0)["eval"]


def test_class_dice_marks_absent_classes():
    pred = np.array([0, 1, 1, 2])
    ref = np.array([0, 1, 2, 2])
    d = class_dice(pred, ref, 4)
    assert d[0] == pytest.approx(2 / 3) and d[1] == pytest.approx(2 / 3) and np.isnan(d[2])


def test_a_bad_patch_is_one_line_naming_the_option(tmp_path, capsys):
    assert main(["finetune", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--patch", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "anatosynth finetune: error: --patch entries must be at least 8, got ['4']"
    assert not (tmp_path / "run").exists()


def test_finetune_writes_a_complete_seeded_run(dataset, tmp_path):
    run = finetune(_cfg(dataset, tmp_path / "a"), progress=False)
    for name in ("config.yaml", "split.json", "train.log", "checkpoint.pt", "model.pt", "model_best.pt",
                 "metadata.json", "postprocessing.json", "progress.png"):
        assert (run / name).is_file(), name
    assert not (run / "config.json").exists() and not (run / "last.pt").exists()  # one config, pre-training's names
    assert list((run / "tensorboard").iterdir())
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["class_names"] == ["background", "ball", "box"] and meta["label_ids"] == [0, 200, 500]
    assert meta["preprocess"]["modality"] == "CT" and meta["preprocess"]["spacing"] == [3.0, 3.0, 3.0]
    assert meta["model"]["out_channels"] == 3 and 1 <= meta["best_step"] <= 3 and meta["steps_done"] == 3
    post = json.loads((run / "postprocessing.json").read_text())["weights"]
    assert post["model_best.pt"]["step"] == meta["best_step"] and post["model.pt"]["step"] == 3
    assert set(post["model.pt"]["classes"]) == {"ball", "box"}
    assert "val dice" in (run / "train.log").read_text()
    again = finetune(_cfg(dataset, tmp_path / "b"), progress=False)
    assert (run / "split.json").read_text() == (again / "split.json").read_text()
    w1 = torch.load(run / "model.pt", weights_only=True)
    w2 = torch.load(again / "model.pt", weights_only=True)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # same seed, same weights

    # --init from that run: same classes, everything transferred
    third = finetune(_cfg(dataset, tmp_path / "c", init=str(run / "model.pt"), steps=1), progress=False)
    report = json.loads((third / "transfer.json").read_text())
    assert report["n_skipped"] == 0 and report["n_not_initialised"] == 0 and not report["head_reinitialised"]


def test_existing_run_is_not_overwritten(dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_bytes(b"x")
    code = main(["finetune", "--data", str(dataset), "--out", str(out), "--model", "unet", "--feature-size", "4",
                 "--patch", "32", "--steps", "1", "--train-cases", "1", "--quiet"])
    assert code == 2 and (out / "model.pt").read_bytes() == b"x"
    (out / "model_best.pt").write_bytes(b"stale")
    (out / "checkpoint.pt").write_bytes(b"stale")
    assert main(_cli(dataset, out, "--train-cases", "1", "--overwrite")) == 0  # the old run's files go first
    assert torch.load(out / "model_best.pt", weights_only=True) and read_checkpoint(out / "checkpoint.pt")["step"] == 1


def _cli(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--data", str(dataset), "--out", str(out), "--model", "unet", "--feature-size", "4",
            "--patch", "32", "--steps", "1", "--spacing", "3,3,3", "--quiet", *extra]


def test_cli_errors_are_one_line_and_write_nothing(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_cli(dataset, out, "--train-cases", "3")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--train-cases 3, but the training pool holds 1 of the 3 labelled cases" in err[0]
    assert main(_cli(dataset, out, "--train-cases", "3", "--val-cases", "c0")) == 2  # the earlier split
    assert "only 2 labelled cases remain after --val-cases" in capsys.readouterr().err
    from anatosynth.train.models import ModelSpec, build_model

    torch.save(build_model(ModelSpec("unet", 2, 3, 4, (32, 32, 32))).state_dict(), tmp_path / "two.pt")
    assert main(_cli(dataset, out, "--train-cases", "1", "--init", str(tmp_path / "two.pt"))) == 2
    err = capsys.readouterr().err
    assert "two.pt: checkpoint was trained with 2 input channel(s) but the network has 1" in err
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    lab = nib.load(bad / "labelsTr" / "c1.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:-1], lab.affine), bad / "labelsTr" / "c1.nii.gz")
    assert main(_cli(bad, out, "--val-cases", "c0", "--train-cases", "2")) == 2
    err = capsys.readouterr().err
    assert "c1.nii.gz: image shape" in err and "Traceback" not in err
    assert main(_cli(dataset, out, "--train-cases", "1", "--modality", "PET")) == 2
    assert "unknown modality" in capsys.readouterr().err
    assert not out.exists()


def test_datalist_validation_list_is_the_evaluation_set(dataset, tmp_path):
    meta = json.loads((dataset / "dataset.json").read_text())
    datalist = {"labels": meta["labels"], "modality": "CT", "training": meta["training"][:2],
                "validation": meta["training"][2:]}
    (dataset / "datalist.json").write_text(json.dumps(datalist))
    run = finetune(_cfg(dataset / "datalist.json", tmp_path / "run", steps=1, train_cases=None), progress=False)
    split = json.loads((run / "split.json").read_text())
    assert split["eval"] == ["c2"] and sorted(split["train"]) == ["c0", "c1"]


def test_unet_patch_must_divide_by_16(dataset, tmp_path):
    with pytest.raises(ConfigError, match="divisible by 16"):
        _cfg(dataset, tmp_path / "x", patch=(40, 40, 40))


def test_lateralised_class_names():
    assert lateralised(["background", "liver", "right_kidney"])
    assert lateralised(["background", "Left Parotid"])
    assert not lateralised(["background", "liver", "spleen", "brightness"])


def test_crops_from_precomputed_indices_equal_a_scan_of_the_label_at_every_step(dataset):
    """Same seed, same crops as MONAI padding and scanning the whole label map each step (the old path)."""
    from monai.transforms import Compose, RandCropByPosNegLabeld, SpatialPadd

    from anatosynth.io import read_dataset
    from anatosynth.train.finetune_data import _augmentations, _batch, _crop_source
    from anatosynth.transforms.preprocess import ClassMap, PreprocessConfig, prepare_cases

    cfg = _cfg(dataset, dataset / "unused", crops=3)
    data = read_dataset(dataset)
    case = prepare_cases(data.cases[:1], PreprocessConfig("CT", (3.0, 3.0, 3.0)), ClassMap.from_labels(data.labels),
                         "", False)[0]
    new = _augmentations(cfg, 11)
    # the previous pipeline: padding and a label scan inside, then the same augmentations, seeded the same way
    old = Compose([SpatialPadd(["image", "label"], spatial_size=cfg.patch, mode="constant"),
                   RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=cfg.patch, pos=1,
                                          neg=1, num_samples=3, allow_smaller=False),
                   *_augmentations(cfg, 0).transforms[1:]])
    old.set_random_state(seed=11)
    source = _crop_source(case, cfg.patch)
    foreground = int((case.label > 0).sum())
    assert len(source["fg_indices"]) == foreground  # background = every other voxel of the padded volume
    assert len(source["bg_indices"]) == source["label"].numel() - foreground
    for _ in range(12):
        a = _batch(new, source)
        samples = old({"image": case.image[None], "label": case.label[None].astype(np.float32)})
        b_img = torch.stack([torch.as_tensor(np.asarray(s["image"])) for s in samples]).float()
        b_lab = torch.stack([torch.as_tensor(np.asarray(s["label"])) for s in samples]).round().long()
        assert torch.equal(a[0], b_img) and torch.equal(a[1], b_lab)
    assert a[1].sum() > 0  # positive centres really hit the foreground


def test_stop_then_resume_equals_an_uninterrupted_run(dataset, tmp_path):
    straight = finetune(_cfg(dataset, tmp_path / "straight", steps=5, checkpoint_every=2, log_every=1), progress=False)
    run = tmp_path / "stopped"
    finetune(_cfg(dataset, run, steps=5, checkpoint_every=2, log_every=1), progress=False, stop_at=3)
    assert (run / "checkpoint.pt").is_file() and (run / "model_best.pt").is_file() and not (run / "model.pt").exists()
    # the folder blocks a fresh run with a true message, and resumes
    assert main(_cli(dataset, run, "--train-cases", "2")) == 2
    from anatosynth.train.finetune import resume_config

    finetune(resume_config(run), progress=False, resume=True)
    assert "resumed at step 3" in (run / "train.log").read_text()
    for name in ("model.pt", "model_best.pt"):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(run / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    meta_a, meta_b = (json.loads((r / "metadata.json").read_text()) for r in (straight, run))
    assert (meta_a["best_step"], meta_a["best_val_dice"]) == (meta_b["best_step"], meta_b["best_val_dice"])
    assert (json.loads((straight / "postprocessing.json").read_text())
            == json.loads((run / "postprocessing.json").read_text()))
    h_a = torch.load(straight / "checkpoint.pt", weights_only=True)["history"]
    h_b = torch.load(run / "checkpoint.pt", weights_only=True)["history"]
    assert torch.equal(h_a, h_b) and h_a.shape == (5, 3)  # the loss curve continues too


def test_interrupted_folder_messages_are_true_and_resume_starts_it(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    finetune(_cfg(dataset, run, steps=2, checkpoint_every=5, val_every=5), progress=False, stop_at=1)
    (run / "checkpoint.pt").unlink()  # as if killed before the first checkpoint: config.yaml and logs only
    (run / "model_best.pt").unlink(missing_ok=True)
    assert main(_cli(dataset, run, "--train-cases", "2")) == 2
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and f"--resume {run}" in err
    assert "model.pt" not in err  # nothing claims a model that is not there
    assert main(["finetune", "--resume", str(run), "--steps", "9", "--quiet"]) == 2
    assert "drop --steps" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(run), "--quiet"]) == 0
    assert "no checkpoint was written yet, starting at step 0" in (run / "train.log").read_text()
    assert "no checkpoint was written yet, starting at step 0" in capsys.readouterr().out  # said on the console
    assert (run / "model.pt").is_file()
    assert main(_cli(dataset, run, "--train-cases", "2")) == 2
    assert "already holds a finished fine-tuning run" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "no config.yaml" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_bf16_autocast_and_resume(dataset, tmp_path):
    """On a GPU: autocast forward, fp32 loss, pinned copies; stop/resume still gives the run's files."""
    run = finetune(_cfg(dataset, tmp_path / "gpu", device="cuda", steps=4, checkpoint_every=2, log_every=1),
                   progress=False, stop_at=2)
    from anatosynth.train.finetune import resume_config

    cfg = resume_config(run)
    cfg.device = "cuda"
    finetune(cfg, progress=False, resume=True)
    history = read_checkpoint(run / "checkpoint.pt")["history"]
    assert history.shape == (4, 3) and torch.isfinite(history).all()
    assert (run / "model.pt").is_file() and (run / "postprocessing.json").is_file()


def _other_task_weights(path: Path) -> Path:
    """Plain state-dict weights of the same network trained for 5 classes: the head cannot transfer."""
    from anatosynth.train.models import ModelSpec, build_model

    torch.manual_seed(11)
    model = build_model(ModelSpec("unet", 1, 5, 4, (32, 32, 32)))
    torch.save(model.state_dict(), path)
    return path


def test_frozen_pretrained_warm_up_then_all_tensors_train_and_resume(dataset, tmp_path):
    source = _other_task_weights(tmp_path / "other.pt")
    init = torch.load(source, weights_only=True)
    kw = dict(init=str(source), steps=4, freeze_pretrained_steps=2, checkpoint_every=1, log_every=1)
    run = finetune(_cfg(dataset, tmp_path / "stopped", **kw), progress=False, stop_at=2)
    report = json.loads((run / "transfer.json").read_text())
    assert report["head_reinitialised"] and report["n_not_initialised"] >= 2  # the last layer: fresh, not frozen
    at2 = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(at2[k], init[k]) for k in report["transferred"])  # frozen for 2 steps
    from anatosynth.train.finetune import resume_config

    finetune(resume_config(run), progress=False, resume=True)
    final = torch.load(run / "model.pt", weights_only=True)
    moved = [k for k in report["transferred"] if not torch.equal(final[k], init[k])]
    assert len(moved) > len(report["transferred"]) // 2  # then everything trains
    straight = finetune(_cfg(dataset, tmp_path / "straight", **kw), progress=False)
    uninterrupted = torch.load(straight / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], uninterrupted[k]) for k in final)  # resume knows the groups


def test_pretrained_lr_scale_zero_keeps_transferred_tensors(dataset, tmp_path):
    source = _other_task_weights(tmp_path / "other.pt")
    init = torch.load(source, weights_only=True)
    run = finetune(_cfg(dataset, tmp_path / "r", init=str(source), pretrained_lr_scale=0.0), progress=False)
    final = torch.load(run / "model.pt", weights_only=True)
    transferred = json.loads((run / "transfer.json").read_text())["transferred"]
    assert all(torch.equal(final[k], init[k]) for k in transferred)
    head = [k for k in final if k not in transferred]
    assert head and all(not torch.equal(final[k], init[k]) for k in head if init[k].shape == final[k].shape)


@pytest.mark.parametrize("kw, message", [({"pretrained_lr_scale": -1.0}, "pretrained-lr-scale"),
                                         ({"freeze_pretrained_steps": 3}, "freeze-pretrained-steps")])
def test_pretrained_schedule_options_are_checked(dataset, tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(dataset, tmp_path / "x", **kw)


def test_default_split_keeps_test_validation_and_training_apart_and_a_split_file_is_used(dataset, tmp_path):
    run = finetune(_cfg(dataset, tmp_path / "a", steps=1), progress=False)
    split = json.loads((run / "split.json").read_text())
    assert split["eval"] == split["test"] and not set(split["test"]) & set(split["validation"])
    assert not set(split["train"]) & (set(split["test"]) | set(split["validation"]))
    assert set(split["val"]) <= set(split["validation"]) and split["draw"] == {"group": 0, "groups": 1}
    assert split["scheme"] == "sha256-rank-v1"
    file = tmp_path / "split.json"
    file.write_text(json.dumps({"test": ["c2"], "validation": ["c0"], "pool": ["c1"]}))
    other = finetune(_cfg(dataset, tmp_path / "b", steps=1, split=str(file)), progress=False)
    chosen = json.loads((other / "split.json").read_text())
    assert (chosen["train"], chosen["eval"], chosen["val"]) == (["c1"], ["c2"], ["c0"])
    with pytest.raises(ConfigError, match="both name the evaluation set"):
        finetune(_cfg(dataset, tmp_path / "c", split=str(file), val_cases=["c0"]), progress=False)
    assert not (tmp_path / "c").exists()


def test_init_weights_name_the_network_and_a_contradiction_is_refused_before_preprocessing(dataset, tmp_path,
                                                                                          capsys):
    """`finetune --init DIR` without --model builds the network DIR's metadata names; --model that contradicts
    it is one line, exit 2, nothing written (no preprocessing first)."""
    import yaml

    from anatosynth.train.finetune_cli import DEFAULT_MODEL, DEFAULT_PATCH, DEFAULT_WIDTH

    assert (DEFAULT_MODEL, DEFAULT_WIDTH, (int(DEFAULT_PATCH),) * 3) == (
        FinetuneConfig.model, FinetuneConfig.feature_size, FinetuneConfig.patch)  # one definition of the defaults
    source = finetune(_cfg(dataset, tmp_path / "source", steps=1), progress=False)  # a unet f4 at 32^3
    out = tmp_path / "run"
    base = ["finetune", "--data", str(dataset), "--out", str(out), "--init", str(source), "--steps", "1",
            "--train-cases", "1", "--spacing", "3,3,3", "--quiet", "--device", "cpu"]
    assert main([*base, "--model", "swinunetr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model swinunetr, but --init" in err[0] and "unet of feature size 4" in err[0]
    assert not out.exists()
    assert main(base) == 0
    assert "finetune: network unet f4, patch 32x32x32 (what --init" in capsys.readouterr().out
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["model"], cfg["feature_size"], cfg["patch"]) == ("unet", 4, [32, 32, 32])


def test_finetune_logs_its_time_estimate_once(dataset, tmp_path):
    run = finetune(_cfg(dataset, tmp_path / "eta", steps=3, log_every=1), progress=False)
    log = (run / "train.log").read_text()
    assert log.count("left for 2 more steps") == 1
