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
