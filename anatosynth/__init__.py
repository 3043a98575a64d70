"""anatosynth: synthetic, anatomy-informed supervised pre-training for 3D medical segmentation.

Pipeline, one sub-package per stage:
``io`` (volumes, datasets, canonical geometry) → ``bank`` (de-identified organ shapes, anchors, graph)
→ ``synth`` (anatomy-placed synthetic patches) → ``train`` (pre-training, fine-tuning)
→ ``evaluate`` (sliding-window inference, Dice/HD95) → ``experiment`` (protocols, ablations, scaling).
The command line (``anatosynth.cli``) is a thin layer on top.

The Python API is the few names below (README, "Python API"); each is imported on first use, so
``import anatosynth`` stays cheap (no torch)::

    import anatosynth
    bank = anatosynth.build_bank(["labels/"], subjects=5)          # or anatosynth.load_bank("bank.npz")
    ds = anatosynth.SyntheticDataset(bank, seed=0, patch=96, length=1000)   # a torch Dataset of dicts
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from anatosynth.version import __version__ as __version__  # defined once, in version.py

__all__ = ["load_bank", "build_bank", "save_bank", "SyntheticDataset", "SyntheticIterableDataset",
           "SyntheticParamsDataset", "SynthConfig", "pretrain", "finetune", "evaluate", "__version__"]

# classes resolved lazily (PEP 562): name -> module
_LAZY = {"SyntheticDataset": "anatosynth.synth.dataset", "SyntheticIterableDataset": "anatosynth.synth.dataset",
         "SyntheticParamsDataset": "anatosynth.synth.dataset", "SynthConfig": "anatosynth.synth.config"}

if TYPE_CHECKING:
    from anatosynth.synth.config import SynthConfig
    from anatosynth.synth.dataset import SyntheticDataset, SyntheticIterableDataset, SyntheticParamsDataset


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anatosynth' has no attribute {name!r}")


def load_bank(spec, spacing=(1.5, 1.5, 2.0)):
    """A shape bank from a bank file, or the built-in ``"builtin:phantom"``
    (:func:`anatosynth.bank.load_bank`).

    Example::

        bank = anatosynth.load_bank("banks/flare22.bank")
        print(bank.class_names)        # ['background', 'liver', ...]
    """
    from anatosynth.bank import load_bank as _load_bank

    return _load_bank(spec, spacing)


def save_bank(bank, path):
    """Write a shape bank to a single file (labels only: organ masks and relations, no intensities)
    (:func:`anatosynth.bank.save_bank`).

    Example::

        anatosynth.save_bank(anatosynth.build_bank("labels/", subjects=5), "flare22.bank")
    """
    from anatosynth.bank import save_bank as _save_bank

    return _save_bank(bank, path)


def build_bank(sources, *args, **kwargs):
    """A shape bank built from label maps: folders, files or MSD/nnU-Net datasets
    (:func:`anatosynth.bank.build.build_bank`, whose signature has every option).

    Args (the common ones):
        sources: a folder, file or dataset, or a list of them.
        subjects: how many subjects to take (default 5), picked by ``seed``.
        spacing: the bank's voxel size in mm, three numbers (default 1.5, 1.5, 2.0).
        labels: a labels.json naming the label ids, when the maps do not come with one.
        progress: show progress bars (default True).

    Example::

        bank = anatosynth.build_bank("../shared/data/labels/flare22", subjects=5, spacing=(1.5, 1.5, 2.0))
        anatosynth.save_bank(bank, "flare22.bank")
    """
    from anatosynth.bank.build import build_bank as _build_bank

    return _build_bank(sources, *args, **kwargs)


def pretrain(config=None, **options):
    """Pre-train a network on the synthetic stream (:func:`anatosynth.train.pretrain.pretrain`).

    ``config`` is a :class:`~anatosynth.train.config.PretrainConfig`, a dict of its fields, or None with
    the fields as keyword arguments; returns a :class:`~anatosynth.train.pretrain.PretrainResult`.

    Example::

        result = anatosynth.pretrain(bank="flare22.bank", model="unet", feature_size=16, patch=96,
                                     steps=2000, out="runs/pre")
        print(result.out / "model.pt")
    """
    from anatosynth.train.config import PretrainConfig
    from anatosynth.train.pretrain import pretrain as _pretrain

    if isinstance(config, PretrainConfig):
        if options:
            raise TypeError("give a PretrainConfig or keyword options, not both")
        cfg = config
    else:
        cfg = PretrainConfig.from_dict({**(config or {}), **options}, "pretrain()")
    return _pretrain(cfg)


def finetune(config=None, **options):
    """Fine-tune on real labelled scans, from scratch or from pre-trained weights
    (:func:`anatosynth.train.finetune.finetune`); returns the run folder.

    ``config`` is a :class:`~anatosynth.train.finetune.FinetuneConfig`, a dict of its fields, or None with
    the fields as keyword arguments.

    Example::

        run = anatosynth.finetune(data="../shared/data/chaos-t2", init="runs/pre", model="unet",
                                  feature_size=16, patch=96, train_cases=4, steps=1000, out="runs/ft")
    """
    from anatosynth.train.finetune import FinetuneConfig
    from anatosynth.train.finetune import finetune as _finetune

    if isinstance(config, FinetuneConfig):
        if options:
            raise TypeError("give a FinetuneConfig or keyword options, not both")
        cfg = config
    else:
        from dataclasses import fields

        from anatosynth.options import reject_unknown_keys

        given = {**(config or {}), **options}
        reject_unknown_keys(given, [f.name for f in fields(FinetuneConfig)], "finetune()")
        cfg = FinetuneConfig(**given)
    return _finetune(cfg)


def evaluate(data, run, out, **options):
    """Sliding-window inference of a fine-tuned run on a dataset, with Dice/HD95 reports
    (:func:`anatosynth.evaluate.evaluate.evaluate`); returns the summary dict.

    Example::

        summary = anatosynth.evaluate("../shared/data/chaos-t2", "runs/ft", "runs/ft/eval", cases=["chaos_02"])
        print(summary)
    """
    from anatosynth.evaluate.evaluate import evaluate as _evaluate

    return _evaluate(data, run, out, **options)
