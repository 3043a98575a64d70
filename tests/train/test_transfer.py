"""Weight transfer: by name and shape, head re-initialisation, wrappers, SSL layouts, bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from anatosynth.errors import InputError
from anatosynth.train.models import ModelSpec, build_model
from anatosynth.train.transfer import load_checkpoint, transfer_weights


def _unet(out_channels: int = 3, in_channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(out_channels + 10 * in_channels)
    return build_model(ModelSpec("unet", in_channels, out_channels, 4, (32, 32, 32)))


def _rebuild(n: int) -> torch.nn.Module:
    return build_model(ModelSpec("unet", 1, n, 4, (32, 32, 32)))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def test_head_is_reinitialised_when_classes_differ(tmp_path):
    src = _unet(5)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    (tmp_path / "metadata.json").write_text(json.dumps({"class_names": ["background", "a", "b", "c", "d"]}))
    dst = _unet(3)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = transfer_weights(dst, tmp_path / "model.pt", rebuild=_rebuild, new_class_names=["background", "x", "y"])
    assert report.head_reinitialised
    head = [k for k, why in report.skipped.items() if "output head" in why]
    assert head, report.skipped
    state = dst.state_dict()
    for k in head:
        assert _same(state[k], before[k])  # untouched (fresh initialisation kept)
    for k in report.transferred:
        assert _same(state[k], src.state_dict()[k])
    assert len(report.transferred) + len(report.not_initialised) == len(state)
    assert "transferred" in report.summary()


def test_same_classes_by_metadata_keep_everything(tmp_path):
    src = _unet(3)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    (tmp_path / "metadata.json").write_text(json.dumps({"class_names": ["background", "x", "y"]}))
    dst = _unet(3, 1)
    torch.manual_seed(99)
    dst = build_model(ModelSpec("unet", 1, 3, 4, (32, 32, 32)))
    report = transfer_weights(dst, tmp_path / "model.pt", rebuild=_rebuild, new_class_names=["background", "x", "y"])
    assert not report.skipped and not report.not_initialised and not report.head_reinitialised
    assert all(_same(v, src.state_dict()[k]) for k, v in dst.state_dict().items())


def test_same_shape_but_other_class_names_reinitialises_head(tmp_path):
    torch.save(_unet(3).state_dict(), tmp_path / "model.pt")
    (tmp_path / "metadata.json").write_text(json.dumps({"class_names": ["background", "liver", "spleen"]}))
    report = transfer_weights(_unet(3), tmp_path / "model.pt", rebuild=_rebuild,
                              new_class_names=["background", "kidney", "spleen"])
    assert report.head_reinitialised and any("output head" in w for w in report.skipped.values())


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module", "nested"])
def test_wrapped_and_prefixed_checkpoints(tmp_path, wrap):
    src = _unet(3).state_dict()
    if wrap == "module":
        obj = {f"module.{k}": v for k, v in src.items()}
    elif wrap == "nested":
        obj = {"model": {"state_dict": src}, "epoch": 3}
    else:
        obj = {wrap: src, "epoch": 3}
    torch.save(obj, tmp_path / "ckpt.pth")
    dst = _unet(3)
    report = transfer_weights(dst, tmp_path / "ckpt.pth", rebuild=_rebuild)
    assert len(report.transferred) == len(src) and not report.skipped
    assert all(_same(v, src[k]) for k, v in dst.state_dict().items())


def _swin():
    torch.manual_seed(0)
    return build_model(ModelSpec("swinunetr", 1, 4, 12, (64, 64, 64)))


@pytest.mark.parametrize("layout", ["research-contributions", "monai-ssl"])
def test_swinunetr_ssl_layouts(tmp_path, layout):
    src = _swin().state_dict()
    encoder = {k: v for k, v in src.items() if k.startswith("swinViT.")}
    if layout == "research-contributions":  # model_swinvit.pt: {"state_dict": {"module.<encoder key>": ...}}
        obj = {"state_dict": {"module." + k[len("swinViT."):]: v for k, v in encoder.items()}}
        obj["state_dict"]["module.rotation_head.weight"] = torch.zeros(4, 8)
    else:  # ssl_pretrained_weights.pth: {"model": {"encoder.layers1.0.0.blocks...": ...}}
        def ssl_key(k: str) -> str:
            rest = k[len("swinViT."):]
            return "encoder." + rest if rest.startswith("patch_embed") else "encoder." + rest[:10] + "0." + rest[10:]
        obj = {"model": {ssl_key(k): v for k, v in encoder.items()}}
        obj["model"]["encoder.mask_token"] = torch.zeros(1, 1, 12)
    torch.save(obj, tmp_path / "ssl.pth")
    torch.manual_seed(5)
    dst = build_model(ModelSpec("swinunetr", 1, 4, 12, (64, 64, 64)))
    report = transfer_weights(dst, tmp_path / "ssl.pth")
    assert set(report.transferred) == set(encoder)
    assert all(_same(dst.state_dict()[k], v) for k, v in encoder.items())
    assert any(k.startswith("decoder") or k.startswith("encoder1") for k in report.not_initialised)
    assert len(report.skipped) == 1 and list(report.skipped.values()) == ["not in network"]
    assert report.layout != "plain"


def test_input_channel_mismatch_is_a_clear_error(tmp_path):
    torch.save(_unet(3, in_channels=2).state_dict(), tmp_path / "model.pt")
    with pytest.raises(InputError, match="2 input channel.*network has 1"):
        transfer_weights(_unet(3), tmp_path / "model.pt", rebuild=_rebuild)


def test_unrelated_checkpoint_is_refused(tmp_path):
    torch.save({"foo.weight": torch.zeros(3, 3)}, tmp_path / "model.pt")
    with pytest.raises(InputError, match="no tensor of this checkpoint matches"):
        transfer_weights(_unet(3), tmp_path / "model.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


@pytest.mark.parametrize("content", ["garbage", "pickle"])
def test_unreadable_checkpoints(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:
        torch.save({"x": _Evil()}, path)
    with pytest.raises(InputError, match="bad.pt: cannot read checkpoint"):
        load_checkpoint(path)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_run_folder_and_architecture_mismatch(tmp_path):
    torch.save(_unet(3).state_dict(), tmp_path / "model.pt")
    (tmp_path / "metadata.json").write_text(json.dumps({"model": {"name": "unet", "feature_size": 4}}))
    report = transfer_weights(_unet(3), tmp_path, rebuild=_rebuild)  # the run folder itself
    assert report.source == str(tmp_path) and report.transferred
    with pytest.raises(InputError, match="checkpoint is a unet with feature size 4.*swinunetr with feature size 12"):
        transfer_weights(_swin(), tmp_path, spec={"name": "swinunetr", "feature_size": 12})
