"""Onboarding: `anatosynth dataset init` pairs images with label maps and writes the dataset.json verbs read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anatosynth.cli import main
from anatosynth.io import read_dataset
from tests.conftest import write_nifti

LABEL = np.zeros((8, 8, 6), np.uint8)
LABEL[2:5, 2:5, 1:4] = 1
LABEL[5:7, 5:7, 2:4] = 3
IMAGE = np.random.default_rng(0).normal(0, 1, (8, 8, 6)).astype(np.float32)


def _flat(folder, names):
    folder.mkdir()
    for name in names:
        write_nifti(folder / name, LABEL if any(m in name for m in ("label", "seg")) else IMAGE)
    return folder


def test_a_flat_folder_is_paired_by_its_names_and_read_by_every_verb(tmp_path, capsys):
    folder = _flat(tmp_path / "flat", ["img_07.nii.gz", "label_07.nii.gz", "liver3.nii.gz", "liver3_seg.nii.gz"])
    assert main(["dataset", "init", str(folder), "--modality", "MR"]) == 0
    said = capsys.readouterr().out
    assert "2 paired cases (flat layout)" in said and "label_1, label_3" in said
    data = read_dataset(folder)
    assert sorted(c.name for c in data.cases) == ["label_07", "liver3_seg"]  # an MSD case is named by its label file
    assert {c.image.name for c in data.cases} == {"img_07.nii.gz", "liver3.nii.gz"}
    assert data.labels == {0: "background", 1: "label_1", 3: "label_3"} and data.modality == "MR"
    assert main(["dataset", "init", str(folder)]) == 2  # no silent rewrite
    assert "exists already" in capsys.readouterr().err


def test_images_and_labels_folders_pair_with_nnunet_channel_names_and_a_labels_json(tmp_path, capsys):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in ("a", "b"):
        write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", IMAGE)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", LABEL)
    names = tmp_path / "labels.json"
    names.write_text(json.dumps({"1": "liver", "3": "spleen"}))
    assert main(["finetune", "--data", str(root), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"anatosynth dataset init {root}" in err  # the error names the command that fixes it
    assert main(["dataset", "init", str(root), "--labels", str(names)]) == 0
    data = read_dataset(root)
    assert [c.name for c in data.cases] == ["a", "b"] and data.labels[3] == "spleen"
    assert json.loads((root / "dataset.json").read_text())["training"][0]["image"] == "./imagesTr/a_0000.nii.gz"


@pytest.mark.parametrize("names, culprit, words", [
    (["img_1.nii.gz", "label_1.nii.gz", "img_2.nii.gz"], "img_2.nii.gz", "no label map pairs with it"),
    (["img_1.nii.gz", "label_1.nii.gz", "1_seg.nii.gz"], "1_seg.nii.gz", "a second label for case '1'"),
    (["img_1.nii.gz", "image_1.nii.gz", "label_1.nii.gz"], "img_1.nii.gz", "a second image for case '1'"),
    (["label_9.nii.gz"], "label_9.nii.gz", "no image pairs with it"),
])
def test_unpaired_or_ambiguous_files_are_one_line_and_nothing_is_written(tmp_path, capsys, names, culprit, words):
    folder = _flat(tmp_path / "bad", names)
    assert main(["dataset", "init", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0] and words in err[0]
    assert len(err[0].replace(str(folder), "")) <= 200  # the message itself, whatever the folder's path
    assert not (folder / "dataset.json").exists()


def test_label_maps_without_images_point_finetune_to_dataset_init_and_labels_is_an_option_it_has(tmp_path, capsys):
    folder = _flat(tmp_path / "maps", ["label_1.nii.gz", "img_1.nii.gz"])
    (folder / "labels.json").write_text(json.dumps({"1": "liver", "3": "spleen"}))
    assert main(["finetune", "--data", str(folder), "--out", str(tmp_path / "r"), "--labels",
                 str(folder / "labels.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"anatosynth dataset init {folder} pairs them" in err[0] and "--labels" not in err[0]
    assert not (tmp_path / "r").exists()


def test_labels_json_must_name_every_id_the_maps_hold_and_modality_case_is_free(tmp_path, capsys):
    folder = _flat(tmp_path / "f", ["img_1.nii.gz", "label_1.nii.gz"])
    names = tmp_path / "labels.json"
    names.write_text(json.dumps({"1": "liver"}))  # the maps also hold id 3
    assert main(["dataset", "init", str(folder), "--labels", str(names)]) == 2
    assert "label ids 3 are not in the label names" in capsys.readouterr().err
    assert not (folder / "dataset.json").exists()
    assert main(["dataset", "init", str(folder), "--modality", "mr"]) == 0
    assert read_dataset(folder).modality == "MR"


def test_every_unpaired_file_is_counted_in_the_one_line(tmp_path, capsys):
    folder = _flat(tmp_path / "g", ["img_1.nii.gz", "label_1.nii.gz", "img_4.nii.gz", "img_5.nii.gz"])
    assert main(["dataset", "init", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "img_4.nii.gz: no label map pairs with it" in err and "1 more unpaired: img_5.nii.gz" in err
