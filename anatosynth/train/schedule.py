"""Learning-rate schedule: linear warm-up, then cosine decay to zero (the SwinUNETR/BTCV recipe)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["warmup_cosine", "build_scheduler"]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Rises linearly over ``warmup`` steps (starting above zero so step 0 already learns), then follows
    half a cosine from 1 down to 0 at ``total``.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, total - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                    extra: list[Callable[[int], float]] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step.

    The first parameter group follows :func:`warmup_cosine`; ``extra`` gives the multipliers of further
    groups (e.g. pre-trained tensors with their own rate). The multipliers are closures, so the
    scheduler's state_dict keeps only the step count and learning rates (``lr_lambdas`` is stored as
    ``None``): a resumed run takes ``warmup``/``total`` from its config.
    """
    warmup, total = int(warmup), int(total)

    def main(step: int) -> float:
        return warmup_cosine(step, warmup, total)

    if not extra:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, main)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [main, *extra])
