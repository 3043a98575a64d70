"""``anatosynth synth preview|export|bench`` through the real entry point, on the toy bank saved to disk."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from anatosynth.bank import save_bank
from anatosynth.cli import main


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory, toy_bank):
    return str(save_bank(toy_bank, tmp_path_factory.mktemp("bank") / "toy.bank"))


def test_preview_writes_png(bank_file, tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["synth", "preview", "--bank", bank_file, "--mode", "anatomy", "--render", "shell+fill",
                 "--patch", "64x64x32", "--n", "2", "--seed", "1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_export_msd_nnunet_layout(bank_file, tmp_path, toy_bank):
    out = tmp_path / "ds"
    assert main(["synth", "export", "--bank", bank_file, "--mode", "random", "--patch", "32",
                 "--n", "3", "--batch", "2", "--seed", "4", "--out", str(out)]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {name: i for i, name in enumerate(toy_bank.class_names)}
    assert meta["channel_names"] == {"0": "synthetic"} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 3 and len(meta["training"]) == 3
    img = nib.load(str(out / "imagesTr" / "case_0002_0000.nii.gz"))
    lab = nib.load(str(out / "labelsTr" / "case_0002.nii.gz"))
    assert img.shape == lab.shape == (32, 32, 32)
    assert np.allclose(img.header.get_zooms(), toy_bank.spacing)
    assert np.allclose(img.affine, lab.affine)
    assert np.asarray(lab.dataobj).max() < toy_bank.num_classes
    logs = (out / "placement_logs.jsonl").read_text().splitlines()
    assert len(logs) == 3 and json.loads(logs[0])["mode"] == "random"
    # refuses to write into a non-empty folder
    assert main(["synth", "export", "--bank", bank_file, "--n", "1", "--out", str(out)]) == 2


def test_export_matches_stream(bank_file, tmp_path, toy_bank):
    from anatosynth.synth import SynthConfig, SyntheticStream

    out = tmp_path / "ds"
    assert main(["synth", "export", "--bank", bank_file, "--patch", "32", "--n", "1", "--out", str(out)]) == 0
    stream = SyntheticStream(toy_bank, SynthConfig(patch=(32, 32, 32)), seed=0)
    batch = stream.batch([0])
    lab = np.asarray(nib.load(str(out / "labelsTr" / "case_0000.nii.gz")).dataobj)
    assert np.array_equal(lab, batch.label[0].numpy())


def test_bench_json(bank_file, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["synth", "bench", "--bank", bank_file, "--patch", "32", "--n", "4", "--batch", "2",
                     "--workers", "1", "--threads", "1", "--json"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    result = json.loads(capsys.readouterr().out)
    for key in ("patches_per_s", "ms_per_patch", "forbidden_overlap_voxels", "organs_placed_mean"):
        assert key in result
    assert result["forbidden_overlap_voxels"] == 0 and result["patches_per_s"] > 0



def test_bench_render_workers_render_the_same_samples(bank_file, capsys):
    common = ["synth", "bench", "--bank", bank_file, "--patch", "32", "--n", "6", "--batch", "2", "--json"]
    assert main(common + ["--threads", "1"]) == 0
    here = json.loads(capsys.readouterr().out)
    assert main(common + ["--render-workers", "2"]) == 0
    there = json.loads(capsys.readouterr().out)
    assert there["render_workers"] == 2 and there["patches_per_s"] > 0
    for key in ("forbidden_overlap_voxels", "organs_placed_mean", "organs_dropped_mean", "organs_in_patch_mean"):
        assert there[key] == here[key]  # the same six samples, rendered in two other processes


def test_render_workers_are_for_the_cpu_route(bank_file, capsys):
    assert main(["synth", "bench", "--bank", bank_file, "--n", "1", "--patch", "32", "--render-workers", "2",
                 "--workers", "1"]) == 2
    assert "--render-workers" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--patch", "40"], "multiple of 32"),
    (["--patch", "9x9"], "one or three numbers"),
    (["--bank", "/nonexistent/x.bank"], "not found"),
    (["--device", "tpu"], "device"),
])
def test_bad_input_one_line_exit_2(bank_file, tmp_path, capsys, argv, message):
    args = ["synth", "bench", "--n", "1", "--patch", "32"]
    if "--bank" not in argv:
        args += ["--bank", bank_file]
    assert main(args + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_mode_rejected_by_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "preview", "--mode", "scribble", "--out", "x.png"])
    assert exc.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(bank_file, capsys):
    assert main(["synth", "bench", "--bank", bank_file, "--n", "1", "--patch", "32", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_config_file_sets_mode_render_and_patch_and_flags_win(bank_file, tmp_path, capsys):
    """`--config` values for mode/render/patch are used (they were silently replaced by the flags' defaults)."""
    def export(name, *extra):
        out = tmp_path / name
        assert main(["synth", "export", "--bank", bank_file, "--n", "1", "--seed", "2", "--out", str(out), *extra]) == 0
        return nib.load(str(out / "imagesTr" / "case_0000_0000.nii.gz"))

    (tmp_path / "fill.yaml").write_text("render: fill\npatch: [32, 32, 32]\nmode: random\n")
    from_file = export("file", "--config", str(tmp_path / "fill.yaml"))
    from_flags = export("flags", "--render", "fill", "--patch", "32", "--mode", "random")
    assert from_file.shape == (32, 32, 32)
    assert np.array_equal(np.asarray(from_file.dataobj), np.asarray(from_flags.dataobj))
    overridden = export("over", "--config", str(tmp_path / "fill.yaml"), "--render", "shell")
    assert not np.array_equal(np.asarray(overridden.dataobj), np.asarray(from_flags.dataobj))
    (tmp_path / "bad.yaml").write_text("render: shel\n")
    assert main(["synth", "preview", "--bank", bank_file, "--config", str(tmp_path / "bad.yaml"),
                 "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "shel" in err
