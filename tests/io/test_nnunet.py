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


def test_axes_follow_reader_and_transpose(tmp_path):
    nib_plan = read_plans(_plans(tmp_path, image_reader_writer="NibabelIO"), "3d_fullres")
    assert nib_plan.axes == (0, 1, 2) and nib_plan.anatosynth_patch() == (16, 32, 48)
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
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["chaos_01_0000.nii.gz", "chaos_03_0000.nii.gz"]
    assert [p.name for p in (folder / "labelsTs").iterdir()] == ["chaos_02.nii.gz"]
    label = nib.load(folder / "labelsTr" / "chaos_01.nii.gz")
    source = nib.load(data_dir / "chaos-t2" / "labelsTr" / "chaos_01.nii.gz")
    assert label.get_data_dtype() == np.uint8  # CHAOS stores float64
    np.testing.assert_array_equal(np.asarray(label.dataobj), np.asarray(source.dataobj))
    np.testing.assert_allclose(label.affine, source.affine)
    image = nib.load(folder / "imagesTr" / "chaos_01_0000.nii.gz")
    assert image.get_data_dtype() == np.float32
    with pytest.raises(InputError, match="not empty"):
        export_nnunet_raw(dataset, tmp_path / "raw", 501, "CHAOST2", progress=False)


def test_dataset_nnunet_cli(tmp_path, data_dir, capsys):
    code = main(["dataset", "nnunet", str(data_dir / "chaos-t2"), "--out", str(tmp_path), "--id", "7", "--quiet",
                 "--split", str(Path(__file__).resolve().parents[2] / "protocols" / "splits" / "chaos-t2.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "13 training case(s)" in out and "7 test case(s)" in out
    assert len(list((tmp_path / "Dataset007_CHAOS-T2SPIR" / "imagesTs").iterdir())) == 7
