"""MONAI networks built from a ModelSpec: every architecture runs, constraints give clear errors."""

from __future__ import annotations

import pytest
import torch

from anatosynth.errors import ConfigError
from anatosynth.train.models import ModelSpec, build_model

CASES = [
    ModelSpec("unet", 1, 3, 4, (32, 32, 32)),
    ModelSpec("dynunet", 1, 3, 4, (32, 32, 32)),
    ModelSpec("swinunetr", 1, 3, 12, (64, 64, 32)),
    ModelSpec("unetr", 1, 3, 12, (32, 32, 32)),
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.name)
def test_every_model_maps_a_patch_to_class_logits(spec):
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.rand(1, 1, *spec.patch)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, spec.out_channels, *spec.patch)
    assert torch.isfinite(y).all()


def test_spec_round_trips_through_a_dict():
    spec = ModelSpec("swinunetr", 1, 5, 24, (96, 96, 32))
    d = spec.to_dict()
    assert d["patch"] == [96, 96, 32]
    assert ModelSpec.from_dict(d) == spec


def test_swinunetr_state_dict_is_monais():
    from monai.networks.nets import SwinUNETR

    spec = ModelSpec("swinunetr", 1, 4, 12, (64, 64, 64))
    ours = build_model(spec)
    theirs = SwinUNETR(in_channels=1, out_channels=4, feature_size=12)
    theirs.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("spec,msg", [
    (ModelSpec("swinunetr", 1, 2, 13, (64, 64, 64)), "multiple of 12"),
    (ModelSpec("swinunetr", 1, 2, 12, (48, 64, 64)), "divisible by 32"),
    (ModelSpec("resnet", 1, 2, 12, (64, 64, 64)), "unknown model"),
])
def test_bad_specs_raise_config_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        build_model(spec)


def test_place_model_trains_channels_last_on_the_cpu_and_saves_contiguous(tmp_path):
    from anatosynth.train.checkpoint import save_model
    from anatosynth.train.models import place_model

    spec = ModelSpec("unet", 1, 3, 4, (32, 32, 32))
    torch.manual_seed(0)
    plain = build_model(spec)
    placed = build_model(spec)
    placed.load_state_dict(plain.state_dict())
    params = list(placed.parameters())
    assert place_model(placed, "cpu") is placed
    assert [id(p) for p in placed.parameters()] == [id(p) for p in params]  # an optimiser built after still sees them
    convs = [p for p in placed.parameters() if p.dim() == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    assert any(not p.is_contiguous() for p in convs)  # one input channel: both layouts are the same strides
    x = torch.rand(2, 1, 32, 32, 32)
    for model in (plain, placed):
        model.train()
        model(x).square().mean().backward()
    for a, b in zip(plain.parameters(), placed.parameters()):  # the same values; only the layout differs
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    state = torch.load(save_model(tmp_path / "model.pt", placed), weights_only=True)
    assert all(v.is_contiguous() for v in state.values())
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
