"""Fine-tuning's crops and augmentations (MONAI dictionary transforms, seeded, resumable): what one step
trains on. Used by :mod:`anatosynth.train.finetune_loop`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anatosynth.errors import ConfigError
from anatosynth.train.finetune_config import FinetuneConfig
from anatosynth.transforms.preprocess import PreparedCase

__all__ = ["lateralised"]

def lateralised(names: list[str]) -> bool:
    """True when some class is one side of a pair (its name says left or right)."""
    return any(w in ("left", "right") for n in names for w in n.lower().replace("-", "_").replace(" ", "_").split("_"))


def _augmentations(cfg: FinetuneConfig, seed: int, flip_left_right: bool = True):
    """The BTCV-recipe crop and augmentation pipeline (MONAI dictionary transforms), seeded.

    Works on :func:`_crop_source` dictionaries (padded volumes with precomputed foreground/background
    indices). ``flip_left_right=False`` drops flips along the first (RAS left-right) axis, which would
    turn a left organ into a right one while its label still says left.
    """
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        Transform,
    )

    keys = ["image", "label"]
    steps: list[Transform] = [RandCropByPosNegLabeld(keys, label_key="label", spatial_size=cfg.patch, pos=1, neg=1,
                                                num_samples=cfg.crops, allow_smaller=False,
                                                fg_indices_key="fg_indices", bg_indices_key="bg_indices"),
                              *([RandFlipd(keys, prob=0.2, spatial_axis=0)] if flip_left_right else []),
                              RandFlipd(keys, prob=0.2, spatial_axis=1), RandFlipd(keys, prob=0.2, spatial_axis=2)]
    if cfg.patch[0] == cfg.patch[1]:
        steps.append(RandRotate90d(keys, prob=0.2, max_k=3, spatial_axes=(0, 1)))
    steps += [RandScaleIntensityd("image", factors=0.1, prob=0.1),
              RandShiftIntensityd("image", offsets=0.1, prob=0.1)]
    pipeline = Compose(steps)  # padding is not random: done once per case in _crop_source
    pipeline.set_random_state(seed=seed)
    return pipeline


def _plain(x):
    """A MONAI MetaTensor (or array) as a plain torch tensor."""
    import torch

    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _crop_source(case: PreparedCase, patch) -> dict:
    """A case padded to at least ``patch`` with its foreground/background voxel indices, computed once.

    The same indices ``RandCropByPosNegLabeld`` would compute from the label at every step, so the crops
    are unchanged; the per-step cost no longer grows with the volume.
    """
    import torch
    from monai.transforms import SpatialPadd
    from monai.transforms.utils import map_binary_to_indices

    assert case.label is not None, case.name  # training cases come with their label maps
    # MONAI's transforms take numpy arrays as well (NdarrayOrTensor); the signature only names Tensor
    padded = SpatialPadd(["image", "label"], spatial_size=patch, mode="constant")(
        {"image": case.image[None], "label": case.label[None].astype(np.float32)})  # type: ignore[dict-item]

    image, label = _plain(padded["image"]).contiguous(), _plain(padded["label"]).contiguous()
    # on the float map, as MONAI would (not on integers: there its `~` is a bitwise not and every voxel would
    # count as background); tensors in, tensors out
    fg, bg = map(torch.as_tensor, map_binary_to_indices(label, None, 0.0))
    small = torch.uint8 if int(case.label.max(initial=0)) < 256 else torch.int16  # memory per case
    if label.numel() < 2**31:
        fg, bg = fg.to(torch.int32), bg.to(torch.int32)
    return {"image": image, "label": label.to(small), "fg_indices": fg, "bg_indices": bg}


def _batch(pipeline, source: dict):
    """Crops of one case (a :func:`_crop_source`) as (N,1,...) image and label tensors."""
    import torch

    samples = pipeline(dict(source))
    if isinstance(samples, dict):
        samples = [samples]

    image = torch.stack([_plain(s["image"]) for s in samples]).float()
    label = torch.stack([_plain(s["label"]) for s in samples]).round().long()
    return image, label


# ------------------------------------------------------------------------------------------- RNG states
def _randomizables(pipeline) -> list:
    """Every MONAI ``Randomizable`` of the pipeline (transforms and the randomisers they hold), in a fixed order."""
    from monai.transforms import Randomizable

    found = []
    for t in pipeline.transforms:
        if isinstance(t, Randomizable):
            found.append(t)
        found += [v for _, v in sorted(vars(t).items()) if isinstance(v, Randomizable)]
    return found


def _sampler_state(pipeline) -> list[dict]:
    """The numpy RandomState of each randomiser, as tensors and numbers (loadable with weights_only)."""
    import torch

    out = []
    for r in _randomizables(pipeline):
        _, keys, pos, has_gauss, gauss = r.R.get_state()
        out.append({"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                    "gauss": float(gauss)})
    return out


def _set_sampler_state(pipeline, states: list[dict], path: Path) -> None:
    found = _randomizables(pipeline)
    if len(found) != len(states):
        raise ConfigError(f"{path}: checkpoint holds {len(states)} crop/augmentation RNG states, this run has "
                          f"{len(found)} (different augmentation pipeline)")
    for r, s in zip(found, states):
        r.R.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))


# ------------------------------------------------------------------------------------------- validation
