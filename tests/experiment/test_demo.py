"""``anatosynth demo``: bank → preview → short CPU pre-training, paths printed; a second call continues."""

from __future__ import annotations

import json

import pytest
import torch

from anatosynth.cli import main

pytestmark = pytest.mark.slow


def test_demo_writes_preview_curves_and_loadable_weights(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--minutes", "5"]) == 0
    printed = capsys.readouterr().out
    run = out / "pretrain"
    for path in (out / "preview.png", run / "progress.png", run / "model.pt", run / "metadata.json"):
        assert path.is_file() and str(path) in printed
    assert (out / "preview.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["bank"] == "builtin:phantom" and meta["steps_done"] == 2 and meta["mode"] == "anatomy"
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(in_channels=1, out_channels=len(meta["class_names"]), feature_size=12)
    net.load_state_dict(torch.load(run / "model.pt", weights_only=True), strict=True)

    # running it again continues the same run instead of failing or starting over
    assert main(["demo", "--out", str(out), "--steps", "2"]) == 0
    assert "continuing the earlier run" in capsys.readouterr().out
    assert "resumed at step 2" in (run / "train.log").read_text()


def test_demo_with_a_missing_bank_fails_in_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--bank", str(tmp_path / "none.bank")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.bank" in err[0]
    assert not (tmp_path / "d").exists()  # nothing half-written


def test_continue_line_works_without_an_activated_venv(monkeypatch, tmp_path):
    """The demo's "continue it" command is the venv's own script when that is not on PATH."""
    import shutil
    import sys
    from pathlib import Path

    from anatosynth.experiment.demo import _command

    script = Path(sys.executable).with_name("anatosynth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)  # venv not activated, nothing on PATH
    assert _command() == (str(script) if script.exists() else f"{sys.executable} -m anatosynth")
    monkeypatch.setattr(shutil, "which", lambda name: str(script))  # activated: the short name works
    assert _command() == "anatosynth"
