"""Torch datasets over the synthetic stream (map-style, iterable and sharded, params + batched render).

See :mod:`anatosynth.data.dataset`. Names are resolved lazily (PEP 562): importing this package does not
import torch.
"""

from __future__ import annotations

import importlib

__all__ = ["SyntheticDataset", "SyntheticIterableDataset", "SyntheticParamsDataset", "RenderBatch",
           "shard_bodies", "dist_rank_world"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("anatosynth.data.dataset"), name)
    raise AttributeError(f"module 'anatosynth.data' has no attribute {name!r}")
