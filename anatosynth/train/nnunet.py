"""Pre-training the network nnU-Net v2 will build, and weights in the form ``nnUNetv2_train`` loads.

``anatosynth pretrain --nnunet-plans nnUNetPlans.json --configuration 3d_fullres`` trains exactly the network
of that plans configuration (class, kwargs, input channels: :func:`build_network`, through nnunetv2's own
``get_network_from_plans`` when it is installed) on the synthetic stream. Three things make the synthetic
batch look like nnU-Net's preprocessed training batch (:func:`network_input`):

- **axes**: the batch is permuted into nnU-Net's axis order (SimpleITK's z, y, x, then ``transpose_forward``),
  so that anisotropic kernels (``[1, 3, 3]``) meet the axis they were planned for;
- **patch**: the stream renders at a multiple of 32 that covers the plans' patch (the synthesiser's grid);
  the centre is cropped to the plans' patch exactly;
- **intensities**: normalised per patch with the plans' scheme, as nnU-Net normalises each image
  (:func:`normalise`): z-score (with ``use_mask_for_norm``, inside the organs only, the background 0, as
  nnU-Net z-scores inside the nonzero region and zeroes the rest); CT percentiles by making the patch's
  foreground mean 0 and standard deviation 1, then clipping at the plans' 0.5 / 99.5 foreground percentiles
  in the same units (the values a target CT's foreground takes after ``CTNormalization``); min-max for
  ``RescaleTo01Normalization``.

Deep supervision as nnU-Net trains it (:class:`DeepSupervisionLoss`): the loss on every decoder output,
weights ``1/2^i`` from full resolution down, the lowest output weighted 0, labels nearest-downsampled.

``anatosynth release RUN --format nnunet`` adds ``nnunet_pretrained.pth`` (written by
:func:`~anatosynth.train.checkpoint.save_nnunet_weights`): ``{"network_weights": ...}`` in float32 with the
card's facts, which ``nnUNetv2_train DATASET CONFIG FOLD -pretrained_weights FILE`` loads (every key but
``.seg_layers.``, which nnU-Net re-initialises for the target's classes).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from anatosynth.errors import ConfigError
from anatosynth.io.nnunet import NnUNetPlan

__all__ = ["build_network", "network_input", "normalise", "DeepSupervisionLoss", "synth_patch",
           "check_plan", "NORMALISATIONS", "NNUNET_WEIGHTS", "EXTRA_HINT", "to_anatosynth_axes"]

NNUNET_WEIGHTS = "nnunet_pretrained.pth"  # the file release --format nnunet writes for -pretrained_weights
EXTRA_HINT = "install the nnU-Net extra with 'make nnunet' (it keeps the CPU torch)"
# nnU-Net's intensity schemes anatosynth reproduces on synthetic patches (the others it refuses by name)
NORMALISATIONS = ("ZScoreNormalization", "CTNormalization", "RescaleTo01Normalization", "NoNormalization")


def synth_patch(plan: NnUNetPlan) -> tuple[int, int, int]:
    """The stream's patch (x, y, z): each axis of the plans' patch rounded up to a multiple of 32."""
    px, py, pz = (-(-p // 32) * 32 for p in plan.anatosynth_patch())
    return (px, py, pz)


def check_plan(plan: NnUNetPlan, source: str = "plans") -> None:
    """One line for a plan anatosynth cannot pre-train for: a cascade stage, several input channels, an
    unknown intensity scheme."""
    if plan.previous_stage:
        raise ConfigError(f"{source}: configuration {plan.configuration!r} is a cascade stage (it takes "
                          f"{plan.previous_stage!r}'s segmentations as extra input channels); pre-train for "
                          f"{plan.previous_stage!r} or 3d_fullres instead")
    if plan.in_channels != 1:
        raise ConfigError(f"{source}: the plans expect {plan.in_channels} input channels; synthetic images have "
                          "one (pre-train for a one-channel configuration)")
    if plan.normalization[0] not in NORMALISATIONS:
        raise ConfigError(f"{source}: normalisation {plan.normalization[0]!r} is not one anatosynth reproduces "
                          f"({', '.join(NORMALISATIONS)})")
    if plan.normalization[0] == "CTNormalization":
        props = plan.intensity_properties.get("0", {})
        missing = [k for k in ("mean", "std", "percentile_00_5", "percentile_99_5") if k not in props]
        if missing:
            raise ConfigError(f"{source}: CTNormalization needs foreground_intensity_properties_per_channel['0'] "
                              f"with {', '.join(missing)}")


def _locate(name: str):
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        hint = f"; {EXTRA_HINT}" if module.startswith("dynamic_network_architectures") else ""
        raise ConfigError(f"cannot import {name} named by the nnU-Net plans ({err.__class__.__name__}){hint}") from None


def build_network(plan: NnUNetPlan, out_channels: int, deep_supervision: bool = True) -> torch.nn.Module:
    """The network nnU-Net builds for ``plan``, with ``out_channels`` outputs and He initialisation.

    Uses ``nnunetv2.utilities.get_network_from_plans`` when nnunetv2 is installed, else the same steps
    (import the class and the kwargs that name classes, build, ``network.apply(network.initialize)``).
    """
    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    except ImportError:
        get_network_from_plans = None
    if get_network_from_plans is not None:
        for name in [plan.network_class] + [plan.network_kwargs[k] for k in plan.network_kwargs_import
                                            if plan.network_kwargs.get(k) is not None]:
            _locate(name)  # nnunetv2's pydoc.locate gives None for a bad name, and a puzzling error later
        return get_network_from_plans(plan.network_class, dict(plan.network_kwargs), plan.network_kwargs_import,
                                      plan.in_channels, out_channels, allow_init=True,
                                      deep_supervision=deep_supervision)
    try:
        importlib.import_module("dynamic_network_architectures")
    except ImportError:
        raise ConfigError(f"pre-training for nnU-Net needs dynamic-network-architectures: {EXTRA_HINT}") from None
    kwargs = dict(plan.network_kwargs)
    for key in plan.network_kwargs_import:
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(kwargs[key])
    network = _locate(plan.network_class)(input_channels=plan.in_channels, num_classes=out_channels,
                                          deep_supervision=deep_supervision, **kwargs)
    if hasattr(network, "initialize"):
        network.apply(network.initialize)
    return network


def _centre_crop(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    starts = [(s - p) // 2 for s, p in zip(x.shape[-3:], size)]
    return x[..., starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1], starts[2]:starts[2] + size[2]]


def _or_whole_patch(mask: torch.Tensor) -> torch.Tensor:
    """A boolean [B, 1, ...] mask, the whole patch for a sample whose mask is empty (a patch without organs)."""
    return mask | ~mask.flatten(1).any(1).view(-1, *([1] * (mask.dim() - 1)))


def _masked_stats(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and (population) std of ``x`` [B, 1, ...] over a non-empty boolean ``mask``."""
    mask = mask.to(x.dtype)
    n = mask.flatten(1).sum(1).view(-1, 1, 1, 1, 1)
    mean = (x * mask).flatten(1).sum(1).view(-1, 1, 1, 1, 1) / n
    var = (((x - mean) ** 2) * mask).flatten(1).sum(1).view(-1, 1, 1, 1, 1) / n
    return mean, var.sqrt()


def normalise(image: torch.Tensor, label: torch.Tensor, plan: NnUNetPlan) -> torch.Tensor:
    """Synthetic ``image`` [B, 1, ...] in the units nnU-Net's preprocessing gives the target's images."""
    scheme = plan.normalization[0]
    x = image.float()
    if scheme == "ZScoreNormalization" and plan.use_mask_for_norm and plan.use_mask_for_norm[0]:
        inside = _or_whole_patch((label > 0).unsqueeze(1))  # the organs; nnU-Net's: the nonzero region
        mean, std = _masked_stats(x, inside)
        return torch.where(inside, (x - mean) / std.clamp_min(1e-8), torch.zeros_like(x))
    if scheme == "ZScoreNormalization":
        mean, std = _masked_stats(x, torch.ones_like(x, dtype=torch.bool))
        return (x - mean) / std.clamp_min(1e-8)
    if scheme == "CTNormalization":
        p = plan.intensity_properties["0"]
        mean, std = _masked_stats(x, _or_whole_patch((label > 0).unsqueeze(1)))
        sd = max(float(p["std"]), 1e-8)
        lo, hi = ((float(p[k]) - float(p["mean"])) / sd for k in ("percentile_00_5", "percentile_99_5"))
        return ((x - mean) / std.clamp_min(1e-8)).clamp(lo, hi)
    if scheme == "RescaleTo01Normalization":
        low = x.flatten(1).amin(1).view(-1, 1, 1, 1, 1)
        high = x.flatten(1).amax(1).view(-1, 1, 1, 1, 1)
        return (x - low) / (high - low).clamp_min(1e-8)
    return x  # NoNormalization


def network_input(image: torch.Tensor, label: torch.Tensor, plan: NnUNetPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic batch (image [B, 1, X, Y, Z], label [B, X, Y, Z]) in nnU-Net's axes, patch and intensities."""
    image = image.permute(0, 1, *(2 + a for a in plan.axes))
    label = label.permute(0, *(1 + a for a in plan.axes))
    image, label = _centre_crop(image, plan.patch_size), _centre_crop(label, plan.patch_size)
    return normalise(image, label, plan).contiguous(), label.contiguous()


def to_anatosynth_axes(x: torch.Tensor, plan: NnUNetPlan) -> torch.Tensor:
    """A tensor in nnU-Net's axes (the last three) back in anatosynth's (x, y, z): for pictures of the batch."""
    lead = x.dim() - 3
    return x.permute(*range(lead), *(lead + plan.axes.index(a) for a in range(3)))


class DeepSupervisionLoss(torch.nn.Module):
    """``base`` on every output nnU-Net trains: weights 1/2^i (full resolution first), the last 0, sum 1."""

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base

    @staticmethod
    def weights(n: int) -> list[float]:
        if n == 1:
            return [1.0]
        w = [1 / 2 ** i for i in range(n)]
        w[-1] = 0.0
        return [v / sum(w) for v in w]

    def forward(self, outputs, label: torch.Tensor) -> torch.Tensor:
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(self.weights(len(outputs)), outputs):
            if w == 0:
                continue
            target = label[:, None].float()
            if tuple(out.shape[2:]) != tuple(label.shape[1:]):
                target = F.interpolate(target, size=out.shape[2:], mode="nearest-exact")
            total = total + w * self.base(out.float(), target)
        return total
