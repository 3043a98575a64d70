"""Dataset readers: MSD, nnU-Net, datalist, label folder; path safety; the real datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anatosynth.errors import InputError
from anatosynth.io.datasets import case_name, read_dataset, read_labels_json
from tests.conftest import write_nifti


def _msd(root, labels=None, entries=None):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in ("a", "b"):
        write_nifti(root / "imagesTr" / f"{name}.nii.gz", np.zeros((4, 4, 4), np.float32))
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", np.ones((4, 4, 4), np.uint8))
    data = {"modality": {"0": "CT"}, "labels": labels or {"0": "background", "1": "liver"},
            "training": entries or [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"}
                                    for n in ("a", "b")]}
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_msd_layout(tmp_path):
    ds = read_dataset(_msd(tmp_path / "ds"))
    assert ds.layout == "msd" and ds.modality == "CT"
    assert ds.labels == {0: "background", 1: "liver"}
    assert [c.name for c in ds.cases] == ["a", "b"]
    assert all(c.image.is_absolute() and c.image.exists() for c in ds.cases)


def test_nnunet_layout(tmp_path):
    root = tmp_path / "Dataset001_Test"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in ("case_001", "case_002"):
        write_nifti(root / "imagesTr" / f"{name}_0000.nii.gz", np.zeros((4, 4, 4), np.float32))
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", np.ones((4, 4, 4), np.uint8))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "heart": 200, "lung": 500},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    ds = read_dataset(root)
    assert ds.layout == "nnunet" and ds.modality == "MRI"
    assert ds.labels == {0: "background", 200: "heart", 500: "lung"}
    assert [c.name for c in ds.cases] == ["case_001", "case_002"]
    assert ds.cases[0].image.name == "case_001_0000.nii.gz"


def test_nnunet_missing_image(tmp_path):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_nifti(root / "labelsTr" / "x.nii.gz", np.ones((4, 4, 4), np.uint8))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                   "labels": {"background": 0, "a": 1}}))
    with pytest.raises(InputError, match="no matching image x_0000.nii.gz"):
        read_dataset(root)


def test_datalist_with_labels_json(tmp_path):
    root = _msd(tmp_path / "ds")
    (root / "labels.json").write_text(json.dumps({"0": "background", "1": "spleen"}))
    datalist = {"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}],
                "validation": [{"image": "imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz"}]}
    (root / "split.json").write_text(json.dumps(datalist))
    ds = read_dataset(root / "split.json")
    assert ds.layout == "datalist" and ds.labels[1] == "spleen"
    assert [(c.name, c.split) for c in ds.cases] == [("a", "training"), ("b", "validation")]


def test_label_folder(tmp_path, tiny_label):
    for n in ("s1", "s2"):
        write_nifti(tmp_path / f"{n}.nii.gz", tiny_label)
    (tmp_path / "labels.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "spleen"}))
    ds = read_dataset(tmp_path)
    assert ds.layout == "labels" and [c.name for c in ds.cases] == ["s1", "s2"]
    assert all(c.image is None for c in ds.cases)
    one = read_dataset(tmp_path / "s1.nii.gz")
    assert len(one.cases) == 1


def test_label_folder_needs_names(tmp_path, tiny_label):
    write_nifti(tmp_path / "s1.nii.gz", tiny_label)
    with pytest.raises(InputError, match="no label names"):
        read_dataset(tmp_path)


def test_missing_listed_file(tmp_path):
    root = _msd(tmp_path / "ds", entries=[{"image": "./imagesTr/zzz.nii.gz", "label": "./labelsTr/a.nii.gz"}])
    with pytest.raises(InputError, match=r"dataset.json: listed file './imagesTr/zzz.nii.gz' does not exist"):
        read_dataset(root)


@pytest.mark.parametrize("rel", ["../outside.nii.gz", "/etc/passwd", "imagesTr/../../outside.nii.gz"])
def test_path_escaping_dataset_folder(tmp_path, rel):
    write_nifti(tmp_path / "outside.nii.gz", np.zeros((4, 4, 4), np.float32))
    root = _msd(tmp_path / "ds", entries=[{"image": rel, "label": "./labelsTr/a.nii.gz"}])
    with pytest.raises(InputError, match="escapes the dataset folder"):
        read_dataset(root)


def test_bad_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        read_dataset(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({"0": "background", "1": 7}))
    with pytest.raises(InputError, match="invalid label entry"):
        read_labels_json(tmp_path / "labels.json")


def test_case_name():
    from pathlib import Path
    assert case_name(Path("BRATS_001_0000.nii.gz"), channel_suffix=True) == "BRATS_001"
    assert case_name(Path("chaos_01.nii.gz")) == "chaos_01"
    assert case_name(Path("FLARE22_Tr_0001.nii")) == "FLARE22_Tr_0001"


def test_real_datasets(data_dir):
    chaos = read_dataset(data_dir / "chaos-t2")
    assert chaos.modality == "MRI" and len(chaos.cases) == 20
    assert chaos.foreground == {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
    kbp = read_dataset(data_dir / "openkbp")
    assert kbp.modality == "CT" and len(kbp.cases) == 203 and kbp.labels[7] == "mandible"
    flare = read_dataset(data_dir / "labels" / "flare22")
    assert len(flare.cases) == 50 and flare.labels[13] == "left_kidney"
    amos = read_dataset(data_dir / "labels" / "amos")
    assert amos.labels[1] == "spleen" and len(amos.cases) == 1


def test_dataset_folder_without_dataset_json_says_what_is_missing(tmp_path):
    """imagesTr/ and labelsTr/ full of NIfTI but no dataset.json: name the missing file, not 'no label maps'."""
    root = _msd(tmp_path / "ds")
    (root / "dataset.json").unlink()
    with pytest.raises(InputError, match=r"dataset\.json: not found: write it with anatosynth dataset init"):
        read_dataset(root)


def test_a_dataset_with_no_cases_is_an_error(tmp_path):
    root = _msd(tmp_path / "ds")
    data = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**data, "training": []}))
    with pytest.raises(InputError, match=r"dataset\.json: no cases"):
        read_dataset(root)


def test_label_maps_without_images_for_a_verb_that_needs_images(tmp_path, tiny_label, capsys):
    """``finetune --data`` / ``evaluate --data`` on a folder of label maps: one line that says so."""
    from anatosynth.cli import main

    write_nifti(tmp_path / "s1.nii.gz", tiny_label)
    (tmp_path / "labels.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "spleen"}))
    with pytest.raises(InputError, match="read as a folder of label maps only; finetune needs images paired"):
        read_dataset(tmp_path).require_images("finetune")
    assert main(["finetune", "--data", str(tmp_path), "--out", str(tmp_path / "ft"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"anatosynth dataset init {tmp_path} pairs them (rules: anatosynth dataset init --help)")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "ft").exists()
