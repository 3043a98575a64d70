"""Released weights: float16 safetensors + model card from a real (tiny) pre-training run, and fine-tuning from it."""

from __future__ import annotations

import json

import pytest
import torch

from anatosynth.cli import main
from anatosynth.errors import InputError
from anatosynth.train.config import PretrainConfig
from anatosynth.train.pretrain import pretrain
from anatosynth.train.release import load_release, release
from anatosynth.train.transfer import transfer_weights
from anatosynth.train.models import ModelSpec, build_model
from tests.train.test_finetune import _write_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    cfg = PretrainConfig.from_dict(dict(bank="builtin:phantom", mode="anatomy", render="shell", model="unet",
                                        feature_size=4, patch=[32, 32, 32], batch=1, steps=3, warmup=1, lr=1e-3,
                                        checkpoint_every=3, log_every=1, image_every=0, device="cpu", threads=1,
                                        seed=1, out=str(out)))
    pretrain(cfg, echo=False)
    return out


def test_release_is_half_precision_with_a_complete_card(run, tmp_path):
    out = release(run, tmp_path / "weights" / "tiny", command="anatosynth pretrain ...")
    card = json.loads((out / "card.json").read_text())
    full = torch.load(run / "model.pt", weights_only=True)
    state, meta = load_release(out)
    assert state.keys() == full.keys()
    for k, v in full.items():  # float16 round trip: close to, not equal to, the float32 weights
        assert state[k].dtype == v.dtype
        assert torch.allclose(state[k], v, rtol=1e-3, atol=1e-4), k
    assert card["architecture"]["name"] == "unet" and card["architecture"]["feature_size"] == 4
    assert card["steps"] == 3 and card["batch"] == 1 and card["class_names"][0] == "background"
    assert len(card["bank_sha256"]) == 64 and card["final_loss"] > 0 and len(card["loss_curve"]) == 3
    assert {"torch", "monai", "anatosynth"} <= set(card["versions"])
    assert card["command"] == "anatosynth pretrain ..." and card["dtype"] == "float16"
    import hashlib

    assert card["weights_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    size32 = sum(v.numel() * v.element_size() for v in full.values())
    assert card["weights_bytes"] < 0.6 * size32
    assert str(run) not in (out / "card.json").read_text()  # no local paths on the card
    assert meta["class_names"] == card["class_names"]
    assert "# tiny" in (out / "README.md").read_text() and f"--init {out.as_posix()} " in (out / "README.md").read_text()
    from anatosynth.train.run_folder import code_commit

    assert [s["from_step"] for s in card["sessions"]] == [0] and card["commit"] == code_commit()
    assert f"commit `{card['commit']}` (steps 0–3)" in (out / "README.md").read_text()


def test_finetune_init_from_a_release_folder(run, tmp_path):
    out = release(run, tmp_path / "w")
    spec = json.loads((run / "metadata.json").read_text())["model"]
    model = build_model(ModelSpec(**{**spec, "patch": tuple(spec["patch"])}))
    report = transfer_weights(model, out, spec={**spec})
    assert not report.head_reinitialised and len(report.transferred) == len(model.state_dict())
    data = _write_dataset(tmp_path / "data", n=3)
    code = main(["finetune", "--data", str(data), "--init", str(out), "--model", "unet", "--feature-size", "4",
                 "--patch", "32", "--steps", "2", "--train-cases", "1", "--spacing", "3,3,3", "--val-every", "2",
                 "--device", "cpu", "--out", str(tmp_path / "ft"), "--quiet"])
    assert code == 0
    moved = json.loads((tmp_path / "ft" / "transfer.json").read_text())
    assert moved["head_reinitialised"] and len(moved["transferred"]) > 0


def test_release_errors(run, tmp_path, capsys):
    with pytest.raises(InputError, match="not a finished pre-training run"):
        release(tmp_path, tmp_path / "w")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("mine")
    assert main(["release", str(run), "--out", str(tmp_path / "taken")]) == 2
    assert "not a released-weights folder" in capsys.readouterr().err
    assert (tmp_path / "taken" / "x.txt").read_text() == "mine"
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="cannot read released weights"):
        load_release(tmp_path / "bad.safetensors")


def test_read_card_is_the_one_reader_of_model_cards(run, tmp_path):
    from anatosynth.experiment.protocol import released_digest
    from anatosynth.train.release import read_card

    assert read_card(tmp_path / "nothing-yet") is None and released_digest(tmp_path / "nothing-yet") is None
    out = release(run, tmp_path / "w", command="c", job_key="pre-anatomy-0123abcd")
    assert read_card(out)["job_key"] == "pre-anatomy-0123abcd" == released_digest(out)
    (out / "card.json").write_text('{"name": "not ours"}')
    with pytest.raises(InputError, match=r"card\.json.*weights_sha256"):
        released_digest(out)
    (out / "card.json").write_text("{broken")
    with pytest.raises(InputError, match="not a model card"):
        read_card(out)


def test_releasing_twice_writes_the_same_bytes(run, tmp_path):
    a = release(run, tmp_path / "a" / "w", command="x")
    b = release(run, tmp_path / "b" / "w", command="x")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((a / "card.json").read_text())["weights_sha256"] == \
        json.loads((b / "card.json").read_text())["weights_sha256"]


def test_a_card_without_a_bank_says_so_instead_of_printing_none(tmp_path):
    from anatosynth.train.release import _card_markdown

    card = {"name": "prims", "architecture": {"name": "unet", "feature_size": 4, "patch": [32, 32, 32]},
            "class_names": ["background", "ellipse_prism"], "mode": "primitives", "bank_sha256": None,
            "weights_file": "model.safetensors"}
    text = _card_markdown(card, tmp_path / "prims")
    bank_line = next(line for line in text.splitlines() if line.startswith("- **Shape bank:**"))
    assert bank_line.startswith("- **Shape bank:** none (primitives") and "None" not in bank_line
    assert "- **Shape bank:** sha256 `abc`." in _card_markdown({**card, "bank_sha256": "abc"}, tmp_path / "prims")
