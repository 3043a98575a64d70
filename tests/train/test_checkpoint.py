"""Checkpoints and model.pt: weights-only loading, strict MONAI keys, clear errors for misfits."""

from __future__ import annotations

import json

import pytest
import torch

from anatosynth.errors import ConfigError, InputError
from anatosynth.train.checkpoint import (check_compatible, load_pretrained, load_state_strict, read_checkpoint,
                                         save_checkpoint, save_model)
from anatosynth.train.distributed import unwrap_model
from anatosynth.train.models import ModelSpec, build_model
from anatosynth.train.schedule import build_scheduler, warmup_cosine

SPEC = ModelSpec("unet", 1, 3, 4, (32, 32, 32))
NAMES = ["background", "liver", "spleen"]


def _trained(spec=SPEC):
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = build_scheduler(opt, 1, 10)
    loss = model(torch.rand(1, 1, *spec.patch)).mean()
    loss.backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _write_run(tmp_path, model, spec=SPEC):
    save_model(tmp_path / "model.pt", model)
    (tmp_path / "metadata.json").write_text(json.dumps({"model": spec.to_dict(), "class_names": NAMES}))


def test_checkpoint_round_trips_with_weights_only(tmp_path):
    model, opt, sched = _trained()
    path = save_checkpoint(tmp_path / "checkpoint.pt", model=model, optimizer=opt, scheduler=sched, step=7,
                           next_index=56, world_size=2, spec=SPEC, class_names=NAMES,
                           history=torch.tensor([[5.0, 1.2, 1e-4, 3.0]]), device=torch.device("cpu"))
    raw = torch.load(path, weights_only=True)  # no pickled custom objects
    state = read_checkpoint(path)
    assert raw.keys() == state.keys()
    assert (state["step"], state["next_index"], state["world_size"]) == (7, 56, 2)
    assert state["class_names"] == NAMES and state["model_spec"] == SPEC.to_dict()
    torch.manual_seed(1)
    fresh = build_model(SPEC)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    sched2 = build_scheduler(opt2, 1, 10)
    load_state_strict(fresh, state["model"], path)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_model_pt_loads_strictly_into_monai_swinunetr(tmp_path):
    from monai.networks.nets import SwinUNETR

    spec = ModelSpec("swinunetr", 1, 3, 12, (64, 64, 32))
    model = build_model(spec)
    _write_run(tmp_path, model, spec)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    SwinUNETR(in_channels=1, out_channels=3, feature_size=12).load_state_dict(state, strict=True)
    rebuilt, meta = load_pretrained(tmp_path)
    assert meta["class_names"] == NAMES
    assert torch.equal(next(iter(rebuilt.state_dict().values())), next(iter(state.values())))


def test_weights_from_another_model_give_one_clear_line(tmp_path):
    model, _, _ = _trained()
    _write_run(tmp_path, model)
    other = build_model(ModelSpec("unet", 1, 3, 8, (32, 32, 32)))
    with pytest.raises(ConfigError, match="weights do not fit the UNet.*shape mismatches"):
        load_state_strict(other, torch.load(tmp_path / "model.pt", weights_only=True), tmp_path / "model.pt")
    meta = {"model": ModelSpec("dynunet", 1, 3, 4, (32, 32, 32)).to_dict()}
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="missing keys"):
        load_pretrained(tmp_path / "model.pt")


def test_check_compatible_names_what_differs():
    check_compatible(SPEC.to_dict(), NAMES, SPEC, NAMES, "ck.pt")
    with pytest.raises(ConfigError, match=r"ck.pt: checkpoint is for unet f4 .* builds unet f8 .*feature_size"):
        check_compatible(SPEC.to_dict(), NAMES, ModelSpec("unet", 1, 3, 8, (32, 32, 32)), NAMES, "ck.pt")
    with pytest.raises(ConfigError, match="out_channels"):
        check_compatible(SPEC.to_dict(), NAMES, ModelSpec("unet", 1, 4, 4, (32, 32, 32)), NAMES + ["x"], "ck.pt")
    with pytest.raises(ConfigError, match="classes"):
        check_compatible(SPEC.to_dict(), NAMES, SPEC, ["background", "kidney", "spleen"], "ck.pt")


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint_is_an_input_error(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match="checkpoint.pt: cannot read checkpoint"):
        read_checkpoint(path)


def test_truncated_real_checkpoint_and_missing_files(tmp_path):
    model, opt, sched = _trained()
    path = save_checkpoint(tmp_path / "checkpoint.pt", model=model, optimizer=opt, scheduler=sched, step=1,
                           next_index=1, world_size=1, spec=SPEC, class_names=NAMES,
                           history=torch.zeros(0, 4), device=torch.device("cpu"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read checkpoint"):
        read_checkpoint(path)
    with pytest.raises(InputError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(InputError, match="metadata.json not found"):
        load_pretrained(tmp_path / "model.pt")


class Evil:
    """A custom class: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "step": 0, "model": {}, "x": Evil()}, path)
    with pytest.raises(InputError, match="cannot read checkpoint"):
        read_checkpoint(path)


def test_unwrap_leaves_plain_models_alone():
    model = build_model(SPEC)
    assert unwrap_model(model) is model


def test_warmup_then_cosine():
    lrs = [warmup_cosine(s, 4, 20) for s in range(21)]
    assert lrs[0] > 0 and all(a < b for a, b in zip(lrs[:4], lrs[1:5]))
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
