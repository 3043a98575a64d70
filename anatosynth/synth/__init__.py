"""Synthesis: a shape bank in, an endless seeded stream of labelled 3D patches out.

``SyntheticStream(bank, SynthConfig(...), seed).batch(indices, device)`` gives a :class:`SynthBatch`
(image [B, 1, X, Y, Z] float32 in [0, 1], label [B, X, Y, Z] int64, per-sample placement logs).
Names are resolved lazily (PEP 562), so importing ``anatosynth.synth.cli`` for ``anatosynth --help``
does not import torch.
"""

from __future__ import annotations

import importlib

__all__ = ["SynthConfig", "SyntheticStream", "SynthBatch", "SampleParams", "SyntheticDataset",
           "SyntheticIterableDataset", "SyntheticParamsDataset"]

_WHERE = {"SynthConfig": "config", "SyntheticStream": "generator", "SynthBatch": "generator",
          "SampleParams": "generator", "SyntheticDataset": "dataset", "SyntheticIterableDataset": "dataset",
          "SyntheticParamsDataset": "dataset"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"anatosynth.synth.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'anatosynth.synth' has no attribute {name!r}")
