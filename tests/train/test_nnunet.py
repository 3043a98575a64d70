"""Pre-training for nnU-Net: its network, its axes and intensities, deep supervision, and weights it loads.

The network tests need dynamic-network-architectures and the load test nnunetv2 (``make nnunet``); without
them they skip, saying so. The rest runs everywhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anatosynth.cli import main
from anatosynth.errors import ConfigError
from anatosynth.io.nnunet import read_plans
from anatosynth.train.config import PretrainConfig
from anatosynth.train.nnunet import (
    NNUNET_WEIGHTS,
    DeepSupervisionLoss,
    build_network,
    network_input,
    normalise,
    synth_patch,
)

PLANS = Path(__file__).resolve().parents[1] / "data" / "nnunet" / "nnUNetPlans_tiny.json"


def _plan(**config):
    plan = read_plans(PLANS, "3d_fullres")
    d = plan.to_dict()
    d.update(config)
    return type(plan).from_dict(d)


def _needs(module: str):
    return pytest.importorskip(module, reason=f"{module} not installed (the nnU-Net extra: make nnunet)")


# ------------------------------------------------------------------------------ axes, patch, intensities
def test_synth_patch_covers_plans_patch_in_multiples_of_32():
    plan = _plan()
    assert plan.anatosynth_patch() == (48, 32, 16)
    assert synth_patch(plan) == (64, 32, 32)


def test_network_input_permutes_to_nnunet_axes_and_crops_the_centre():
    plan = _plan()
    x = torch.arange(64 * 32 * 32, dtype=torch.float32).reshape(1, 1, 64, 32, 32)
    label = (x[:, 0] % 5).long()
    image, lab = network_input(x, label, plan)
    assert image.shape == (1, 1, 16, 32, 48) and lab.shape == (1, 16, 32, 48)
    # network axes (z, y, x) hold anatosynth (x, y, z) reversed, the centre of each
    expected = x[0, 0, 8:56, 0:32, 8:24].permute(2, 1, 0)
    assert torch.equal(lab[0], (expected % 5).long())
    z = (expected - expected.mean()) / expected.std(unbiased=False)
    torch.testing.assert_close(image[0, 0], z, atol=1e-4, rtol=0)


def test_zscore_per_patch():
    image = torch.rand(3, 1, 8, 8, 8) * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1, 1, 1) + 2
    out = normalise(image, torch.zeros(3, 8, 8, 8, dtype=torch.long), _plan())
    torch.testing.assert_close(out.mean(dim=(1, 2, 3, 4)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3, 4), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_ct_normalisation_matches_a_ct_foreground_after_nnunet():
    props = {"0": {"mean": 40.0, "std": 100.0, "percentile_00_5": -110.0, "percentile_99_5": 240.0}}
    plan = _plan(normalization=["CTNormalization"], intensity_properties=props)
    torch.manual_seed(0)
    image = torch.rand(2, 1, 16, 16, 16)
    label = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    label[:, 4:12, 4:12, 4:12] = 1
    out = normalise(image, label, plan)
    lo, hi = (-110 - 40) / 100, (240 - 40) / 100  # nnU-Net clips to the percentiles, then standardises
    assert out.min() >= lo - 1e-6 and out.max() <= hi + 1e-6
    fg = out[:, 0][label > 0].view(2, -1)
    # mean 0 and std 1 over the foreground before the clip (the clip at -1.5 / 2.0 sigma moves them a little)
    assert fg.mean(1).abs().max() < 0.05 and (fg.std(1) - 1).abs().max() < 0.1


def test_normalisation_agrees_with_nnunets_own_classes(data_dir):
    """Our z-score is nnU-Net's ZScoreNormalization; our CT range is what CTNormalization gives a real CT."""
    _needs("nnunetv2")
    import nibabel as nib
    import numpy as np
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        CTNormalization,
        ZScoreNormalization,
    )

    image = torch.rand(1, 1, 12, 10, 8) * 7 + 3
    ours = normalise(image, torch.zeros(1, 12, 10, 8, dtype=torch.long), _plan())
    theirs = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}).run(image[0].numpy().copy())
    np.testing.assert_allclose(ours[0].numpy(), theirs, atol=1e-5)

    ct = np.asarray(nib.load(data_dir / "openkbp" / "imagesTr" / "openkbp_001.nii.gz").dataobj, dtype=np.float32)
    props = {"mean": 30.0, "std": 180.0, "percentile_00_5": -160.0, "percentile_99_5": 1200.0}  # a soft-tissue CT
    normalised = CTNormalization(intensityproperties=props).run(ct[None].copy())
    synthetic = normalise(torch.rand(1, 1, 16, 16, 16), torch.ones(1, 16, 16, 16, dtype=torch.long),
                          _plan(normalization=["CTNormalization"], intensity_properties={"0": props}))
    assert synthetic.min() >= normalised.min() - 1e-5 and synthetic.max() <= normalised.max() + 1e-5
    assert normalised.min() == pytest.approx((-160 - 30) / 180) and normalised.max() == pytest.approx((1200 - 30) / 180)


def test_zscore_inside_the_mask_when_the_plans_say_so():
    image = torch.rand(1, 1, 8, 8, 8) + 5
    label = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    label[:, 2:6, 2:6, 2:6] = 3
    out = normalise(image, label, _plan(use_mask_for_norm=[True]))
    inside = out[0, 0][label[0] > 0]
    assert torch.all(out[0, 0][label[0] == 0] == 0)  # outside the region: 0, as nnU-Net leaves it
    assert abs(float(inside.mean())) < 1e-5 and abs(float(inside.std(unbiased=False)) - 1) < 1e-4
    empty = normalise(image, torch.zeros_like(label), _plan(use_mask_for_norm=[True]))  # no organ: the whole patch
    assert abs(float(empty.mean())) < 1e-5 and abs(float(empty.std(unbiased=False)) - 1) < 1e-4


def test_rescale_and_no_normalisation():
    image = torch.rand(2, 1, 4, 4, 4) * 3 + 1
    label = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    out = normalise(image, label, _plan(normalization=["RescaleTo01Normalization"]))
    assert torch.allclose(out.flatten(1).amin(1), torch.zeros(2)) and torch.allclose(out.flatten(1).amax(1),
                                                                                     torch.ones(2))
    assert torch.equal(normalise(image, label, _plan(normalization=["NoNormalization"])), image)


def test_unsupported_plans_are_refused_in_one_line(tmp_path):
    d = PretrainConfig(bank="builtin:phantom").to_dict()
    bad = _plan(normalization=["ZScoreNormalization", "ZScoreNormalization"]).to_dict()
    with pytest.raises(ConfigError, match="2 input channels"):
        PretrainConfig.from_dict({**d, "model": "nnunet", "nnunet": bad, "patch": [64, 32, 32]})
    with pytest.raises(ConfigError, match="not one anatosynth reproduces"):
        PretrainConfig.from_dict({**d, "model": "nnunet", "nnunet": _plan(normalization=["Foo"]).to_dict(),
                                  "patch": [64, 32, 32]})
    with pytest.raises(ConfigError, match="does not cover"):
        PretrainConfig.from_dict({**d, "model": "nnunet", "nnunet": _plan().to_dict(), "patch": [32, 32, 32]})
    with pytest.raises(ConfigError, match="cascade stage"):
        PretrainConfig.from_dict({**d, "model": "nnunet", "nnunet": _plan(previous_stage="3d_lowres").to_dict(),
                                  "patch": [64, 32, 32]})
    with pytest.raises(ConfigError, match="go together"):
        PretrainConfig.from_dict({**d, "model": "nnunet"})


# ------------------------------------------------------------------------------ deep supervision
def test_deep_supervision_weights_are_nnunets():
    assert DeepSupervisionLoss.weights(1) == [1.0]
    w = DeepSupervisionLoss.weights(4)
    assert w == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])


def test_deep_supervision_loss_on_nearest_downsampled_labels():
    base = torch.nn.CrossEntropyLoss()

    def ce(out, target):
        return base(out, target[:, 0].long())

    loss = DeepSupervisionLoss(ce)
    torch.manual_seed(1)
    label = torch.randint(0, 3, (2, 8, 16, 16))
    outs = [torch.randn(2, 3, 8, 16, 16), torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4)]
    half = F.interpolate(label[:, None].float(), size=(8, 8, 8), mode="nearest-exact")[:, 0].long()
    expected = (1 / 1.5) * base(outs[0], label) + (0.5 / 1.5) * base(outs[1], half)  # the lowest: weight 0
    torch.testing.assert_close(loss(outs, label), expected)


# ------------------------------------------------------------------------------ the network (the extra)
def test_build_network_matches_nnunets_own(monkeypatch):
    _needs("dynamic_network_architectures")
    plan = _plan()
    net = build_network(plan, 7)
    outs = net(torch.zeros(1, 1, *plan.patch_size))
    assert [tuple(o.shape) for o in outs] == [(1, 7, 16, 32, 48), (1, 7, 16, 16, 24)]  # one per decoder stage
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # the fallback without nnunetv2 builds the same network
    monkeypatch.setitem(sys.modules, "nnunetv2.utilities.get_network_from_plans", None)
    fallback = build_network(plan, 7)
    assert {k: v.shape for k, v in fallback.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_residual_encoder_plans_build_too():
    """nnU-Net's recommended ResEnc presets name ResidualEncoderUNet: built from the plans the same way."""
    _needs("dynamic_network_architectures")
    plan = _plan()
    kwargs = {k: v for k, v in plan.network_kwargs.items() if k != "n_conv_per_stage"}
    kwargs["n_blocks_per_stage"] = [1, 2, 2]
    resenc = _plan(network_class="dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                   network_kwargs=kwargs)
    net = build_network(resenc, 4)
    assert type(net).__name__ == "ResidualEncoderUNet"
    assert tuple(net(torch.zeros(1, 1, *plan.patch_size))[0].shape) == (1, 4, 16, 32, 48)


def test_a_plans_class_that_does_not_import_is_named():
    _needs("dynamic_network_architectures")
    kwargs = {**_plan().network_kwargs, "norm_op": "torch.nn.NoSuchNorm3d"}
    with pytest.raises(ConfigError, match="cannot import torch.nn.NoSuchNorm3d"):
        build_network(_plan(network_kwargs=kwargs), 3)


def test_missing_extra_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    monkeypatch.setitem(sys.modules, "nnunetv2.utilities.get_network_from_plans", None)
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)
    with pytest.raises(ConfigError, match="make nnunet"):
        build_network(_plan(), 3)


def _pretrain(out: Path, *extra: str) -> int:
    return main(["pretrain", "--bank", "builtin:phantom", "--nnunet-plans", str(PLANS), "--batch", "1",
                 "--steps", "2", "--warmup", "0", "--lr", "0.01", "--log-every", "1", "--checkpoint-every", "1",
                 "--image-every", "1", "--device", "cpu", "--threads", "1", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def nnunet_run(tmp_path_factory) -> Path:
    _needs("dynamic_network_architectures")
    out = tmp_path_factory.mktemp("nnunet") / "run"
    assert _pretrain(out) == 0
    return out


def test_pretrain_trains_the_plans_network_and_resumes_exactly(nnunet_run, tmp_path):
    meta = json.loads((nnunet_run / "metadata.json").read_text())
    assert meta["model"]["name"] == "nnunet" and meta["model"]["nnunet"]["plans_name"] == "nnUNetPlans_tiny"
    assert meta["spacing_mm"] == [1.5, 1.5, 2.0]  # the phantom's; the plans want 1.25 x 1.25 x 7.7
    log = (nnunet_run / "train.log").read_text()
    assert "PlainConvUNet of nnUNetPlans_tiny 3d_fullres" in log and "cropped to 16x32x48" in log
    assert "--spacing 1.25,1.25,7.7" in log  # the spacing warning names the bank option that fixes it
    # stopped after step 1, resumed to 2: the same weights as the straight run
    part = tmp_path / "part"
    from anatosynth.train.config import resolve_config
    from anatosynth.train.pretrain import pretrain, resume_config

    cfg = resolve_config(nnunet_run / "config.yaml", {"out": str(part)})
    pretrain(cfg, stop_at=1)
    pretrain(resume_config(part), resume=True)
    a = torch.load(nnunet_run / "model.pt", weights_only=True)
    b = torch.load(part / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_release_format_nnunet_loads_in_nnunet(nnunet_run, tmp_path, capsys):
    """nnU-Net's own load_pretrained_weights takes every key but the output layers from the release."""
    _needs("nnunetv2")
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    out = tmp_path / "weights"
    assert main(["release", str(nnunet_run), "--format", "nnunet", "--out", str(out)]) == 0
    assert "-pretrained_weights" in capsys.readouterr().out
    card = json.loads((out / "card.json").read_text())
    assert card["nnunet"]["plans_sha256"] == read_plans(PLANS).sha256
    assert "z-scored per patch" in card["nnunet"]["synthetic_images"]
    assert "nnUNetv2_train Dataset999_AnatosynthTest 3d_fullres" in (out / "README.md").read_text()
    saved = torch.load(out / NNUNET_WEIGHTS, weights_only=True)  # plain tensors and values only
    first = (out / NNUNET_WEIGHTS).read_bytes()  # released again: the same bytes (the card's sha256 reproduces)
    assert main(["release", str(nnunet_run), "--format", "nnunet", "--out", str(out)]) == 0
    assert (out / NNUNET_WEIGHTS).read_bytes() == first
    plain = tmp_path / "plain"  # released without --format nnunet: the card says how to get nnU-Net's file
    assert main(["release", str(nnunet_run), "--out", str(plain)]) == 0
    assert not (plain / NNUNET_WEIGHTS).exists() and "--format nnunet" in (plain / "README.md").read_text()
    assert "None" not in (plain / "README.md").read_text()

    config = PlansManager(str(PLANS)).get_configuration("3d_fullres")
    torch.manual_seed(0)
    network = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                     config.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=True)
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    load_pretrained_weights(network, str(out / NNUNET_WEIGHTS))
    loaded = network.state_dict()
    body = [k for k in loaded if ".seg_layers." not in k]
    assert len(body) > 20 and all(torch.equal(loaded[k], saved["network_weights"][k]) for k in body)
    assert all(torch.equal(loaded[k], fresh[k]) for k in loaded if ".seg_layers." in k)  # re-initialised by nnU-Net
    network.eval()
    x = torch.randn(1, 1, *config.patch_size)
    with torch.no_grad():
        pretrained_out = network(x)[0]
        network.load_state_dict(fresh)
        assert not torch.allclose(pretrained_out, network(x)[0])


def test_nnunet_weights_are_refused_by_finetune_and_release_needs_an_nnunet_run(nnunet_run, tmp_path, capsys,
                                                                                 data_dir):
    code = main(["finetune", "--data", str(data_dir / "chaos-t2"), "--init", str(nnunet_run), "--out",
                 str(tmp_path / "ft"), "--steps", "1", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nnUNetv2_train" in err and not (tmp_path / "ft").exists()


def test_cli_flags_that_contradict_the_plans(tmp_path, capsys):
    assert _pretrain(tmp_path / "a", "--patch", "64") == 2
    assert "--patch and --nnunet-plans exclude each other" in capsys.readouterr().err
    assert main(["pretrain", "--configuration", "3d_fullres", "--out", str(tmp_path / "b")]) == 2
    assert "give the plans file too" in capsys.readouterr().err
    assert main(["pretrain", "--nnunet-plans", str(tmp_path / "none.json"), "--out", str(tmp_path / "c")]) == 2
    assert "plans file not found" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
