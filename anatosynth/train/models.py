"""Networks from MONAI (or nnU-Net's, from a plans file), built from a small spec saved with every run.

``model.pt`` files hold a plain state_dict of the MONAI network, so a SwinUNETR checkpoint loads into
``monai.networks.nets.SwinUNETR(in_channels, out_channels, feature_size=F)`` with ``strict=True``. A spec
named ``nnunet`` carries the plans configuration it was built from (:mod:`anatosynth.train.nnunet`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from anatosynth.errors import ConfigError
from anatosynth.options import MODELS

__all__ = ["ModelSpec", "build_model", "place_model", "MODELS", "NNUNET"]

NNUNET = "nnunet"  # the spec name of a network built from an nnU-Net plans configuration


@dataclass
class ModelSpec:
    """What is needed to rebuild a network: architecture, channels, width and (UNETR only) patch size; for
    ``name="nnunet"``, ``nnunet`` holds the plans configuration (:class:`~anatosynth.io.nnunet.NnUNetPlan`)."""

    name: str = "swinunetr"
    in_channels: int = 1
    out_channels: int = 2
    feature_size: int = 48
    patch: tuple[int, int, int] = (96, 96, 96)
    nnunet: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"] = list(self.patch)
        if d["nnunet"] is None:  # MONAI specs read as they always did
            del d["nnunet"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        d = dict(d)
        d["patch"] = tuple(d.get("patch", (96, 96, 96)))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """Build a MONAI network from ``spec``, checking MONAI 1.6's size constraints with clear errors."""
    from monai.networks import nets

    if spec.name == NNUNET:
        from anatosynth.io.nnunet import NnUNetPlan
        from anatosynth.train.nnunet import build_network

        if not spec.nnunet:
            raise ConfigError("an nnunet network needs its plans configuration (pretrain --nnunet-plans)")
        return build_network(NnUNetPlan.from_dict(spec.nnunet), spec.out_channels)
    if spec.name not in MODELS:
        raise ConfigError(f"unknown model {spec.name!r}; choose one of {', '.join(MODELS)}")
    patch = tuple(int(p) for p in spec.patch)
    if spec.name in ("swinunetr", "unetr") and any(p % 32 for p in patch):
        raise ConfigError(f"{spec.name} needs a patch size divisible by 32, got {patch}")
    if spec.name == "swinunetr":
        if spec.feature_size % 12:
            raise ConfigError(f"swinunetr feature size must be a multiple of 12, got {spec.feature_size}")
        if all(p == 32 for p in patch):
            raise ConfigError("swinunetr with instance norm needs a patch larger than 32^3 (e.g. 64^3 or 96x96x32)")
        return nets.SwinUNETR(in_channels=spec.in_channels, out_channels=spec.out_channels,
                              feature_size=spec.feature_size, spatial_dims=3, use_checkpoint=False)
    if spec.name == "unetr":
        wide = spec.feature_size >= 48  # ViT-B; narrower specs get a small transformer
        return nets.UNETR(in_channels=spec.in_channels, out_channels=spec.out_channels, img_size=patch,
                          feature_size=max(spec.feature_size // 3, 8), hidden_size=768 if wide else 192,
                          mlp_dim=3072 if wide else 768, num_heads=12 if wide else 4)
    f = spec.feature_size
    if spec.name == "unet":
        return nets.UNet(spatial_dims=3, in_channels=spec.in_channels, out_channels=spec.out_channels,
                         channels=(f, 2 * f, 4 * f, 8 * f, 16 * f), strides=(2, 2, 2, 2), num_res_units=2,
                         norm="instance")
    return nets.DynUNet(spatial_dims=3, in_channels=spec.in_channels, out_channels=spec.out_channels,
                        kernel_size=[3, 3, 3, 3, 3], strides=[1, 2, 2, 2, 2], upsample_kernel_size=[2, 2, 2, 2],
                        filters=[f, 2 * f, 4 * f, 8 * f, 16 * f], norm_name="instance", res_block=True)


def place_model(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Move ``model`` to ``device`` for training; on the CPU its 5-D (convolution) weights go channels-last.

    oneDNN's 3-D convolutions train faster in the ``channels_last_3d`` layout: a UNet f12 step on one
    thread takes about 1.4-1.5x less time (BENCHMARKS.md, "Channels-last on the CPU"). Only the memory
    layout changes, not the values, keys or shapes of the state_dict (``save_model`` writes it
    contiguous); the arithmetic order does, as it does between CPUs, so runs are not bit-identical to
    runs made before it. Call it before building the optimiser (parameters keep their identity).
    """
    device = torch.device(device)
    model.to(device)
    if device.type == "cpu":
        for p in model.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    return model
