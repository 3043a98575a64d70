"""nnU-Net v2 at the file level: plans read without nnunetv2, a dataset written as nnU-Net raw data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anatosynth.cli import main
from anatosynth.errors import InputError
from anatosynth.io.datasets import read_dataset
from anatosynth.io.nnunet import NnUNetPlan, export_nnunet_raw, read_plans
from anatosynth.io.splits import Split

PLANS = Path(__file__).resolve().parents[1] / "data" / "nnunet" / "nnUNetPlans_tiny.json"


def _plans(tmp_path, **top) -> Path:
    plans = json.loads(PLANS.read_text())
    plans.update(top)
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans))
    return path


def test_read_plans_takes_network_patch_and_normalisation():
    plan = read_plans(PLANS, "3d_fullres")
    assert plan.plans_name == "nnUNetPlans_tiny" and plan.dataset_name == "Dataset999_AnatosynthTest"
    assert plan.network_class.endswith("PlainConvUNet")
    assert plan.network_kwargs["features_per_stage"] == [4, 8, 16]
    assert set(plan.network_kwargs_import) == {"conv_op", "norm_op", "dropout_op", "nonlin"}
    assert plan.patch_size == (16, 32, 48) and plan.normalization == ["ZScoreNormalization"]
    # SimpleITK arrays are (z, y, x): network axis 0 is anatosynth's z
    assert plan.axes == (2, 1, 0)
    assert plan.anatosynth_patch() == (48, 32, 16)
    assert plan.anatosynth_spacing() == pytest.approx((1.25, 1.25, 7.7), abs=1e-3)
    assert len(plan.sha256) == 64
    assert NnUNetPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_axes_follow_transpose_whatever_the_reader(tmp_path):
    # nnU-Net's nibabel readers transpose to SimpleITK's order too: the reader does not change the mapping
    nib_plan = read_plans(_plans(tmp_path, image_reader_writer="NibabelIOWithReorient"), "3d_fullres")
    assert nib_plan.axes == (2, 1, 0) and nib_plan.anatosynth_patch() == (48, 32, 16)
    transposed = read_plans(_plans(tmp_path, transpose_forward=[2, 0, 1]), "3d_fullres")
    assert transposed.axes == (0, 2, 1)


def test_inherited_configuration_is_resolved():
    plan = read_plans(PLANS, "3d_lowres_like")
    assert plan.patch_size == (16, 32, 32)
    assert plan.network_class.endswith("PlainConvUNet")  # from 3d_fullres


@pytest.mark.parametrize("config, words", [("3d_cascade", "no configuration"), ("2d", "not 3-D")])
def test_unusable_configuration_is_one_clear_error(config, words):
    with pytest.raises(InputError, match=words):
        read_plans(PLANS, config)


def test_bad_plans_files(tmp_path):
    with pytest.raises(InputError, match="plans file not found"):
        read_plans(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="not a JSON plans file"):
        read_plans(tmp_path / "broken.json")


def test_export_nnunet_raw_layout(tmp_path, data_dir):
    dataset = read_dataset(data_dir / "chaos-t2").select(["chaos_01", "chaos_02", "chaos_03"])
    split = Split(test=["chaos_02"], validation=["chaos_03"], pool=["chaos_01"])
    folder = export_nnunet_raw(dataset, tmp_path / "raw", 501, "CHAOST2", split, progress=False)
    assert folder.name == "Dataset501_CHAOST2"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    assert meta["channel_names"] == {"0": "MRI"} and meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["overwrite_image_reader_writer"] == "NibabelIOWithReorient"  # RAS at inference too
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["chaos_01_0000.nii.gz", "chaos_03_0000.nii.gz"]
    assert [p.name for p in (folder / "labelsTs").iterdir()] == ["chaos_02.nii.gz"]
    label = nib.load(folder / "labelsTr" / "chaos_01.nii.gz")
    source = nib.load(data_dir / "chaos-t2" / "labelsTr" / "chaos_01.nii.gz")
    assert label.get_data_dtype() == np.uint8  # CHAOS stores float64
    assert nib.aff2axcodes(source.affine) == ("L", "A", "S") and nib.aff2axcodes(label.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(np.asarray(label.dataobj), np.asarray(source.dataobj)[::-1])  # x flipped
    np.testing.assert_allclose(label.affine @ [0, 0, 0, 1], source.affine @ [source.shape[0] - 1, 0, 0, 1])
    image = nib.load(folder / "imagesTr" / "chaos_01_0000.nii.gz")
    assert image.get_data_dtype() == np.float32
    with pytest.raises(InputError, match="not empty"):
        export_nnunet_raw(dataset, tmp_path / "raw", 501, "CHAOST2", progress=False)


def test_export_reorients_to_ras_and_renumbers_labels(tmp_path):
    """nnU-Net needs label ids 0..N and our axis mapping needs RAS voxel order: the export gives both."""
    from tests.conftest import write_nifti

    root = tmp_path / "ds"
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])  # LPS voxel axes
    label = np.zeros((6, 5, 4), dtype=np.int16)
    label[0, 0, 0], label[5, 4, 3] = 2, 7
    image = np.arange(120, dtype=np.float32).reshape(6, 5, 4)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_nifti(root / "imagesTr" / "a.nii.gz", image, lps)
    write_nifti(root / "labelsTr" / "a.nii.gz", label, lps)
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "2": "liver", "7": "spleen"}, "modality": {"0": "CT"},
        "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}))
    folder = export_nnunet_raw(read_dataset(root), tmp_path / "raw", 3, "Toy", progress=False)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2} and meta["channel_names"] == {"0": "CT"}
    assert meta["anatosynth"]["label_ids"] == {"2": 1, "7": 2}
    out = nib.load(folder / "labelsTr" / "a.nii.gz")
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    arr = np.asarray(out.dataobj)
    assert arr[5, 4, 0] == 1 and arr[0, 0, 3] == 2  # x and y flipped into RAS, ids renumbered
    img = nib.load(folder / "imagesTr" / "a_0000.nii.gz")
    assert np.asarray(img.dataobj)[5, 4, 0] == image[0, 0, 0]
    np.testing.assert_allclose(img.affine @ [5, 4, 0, 1], lps @ [0, 0, 0, 1])  # the same voxel, the same place


def test_dataset_nnunet_cli(tmp_path, data_dir, capsys):
    code = main(["dataset", "nnunet", str(data_dir / "chaos-t2"), "--out", str(tmp_path), "--id", "7", "--quiet",
                 "--split", str(Path(__file__).resolve().parents[2] / "protocols" / "splits" / "chaos-t2.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "13 training case(s)" in out and "7 test case(s)" in out
    assert len(list((tmp_path / "Dataset007_CHAOS-T2SPIR" / "imagesTs").iterdir())) == 7
    # nnU-Net raw data in: read as it is, renamed with the new id only
    assert main(["dataset", "nnunet", str(tmp_path / "Dataset007_CHAOS-T2SPIR"), "--out", str(tmp_path), "--id", "8",
                 "--quiet"]) == 0
    assert len(list((tmp_path / "Dataset008_CHAOS-T2SPIR" / "imagesTr").iterdir())) == 13
