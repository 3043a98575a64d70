"""Which synthetic samples a pre-training step uses, and the DataLoader that draws them.

Stream position: sample ``i`` of seed ``s`` is bit-identical whatever batch it lands in, so the position
is one integer, ``next_index``. At each step rank ``r`` of ``W`` takes samples ``next_index + r*B + k``
(k < B) and ``next_index`` grows by ``W*B``; with ``samples=N`` sample ``i`` is replaced by
``pool_index(i)``, a fresh permutation of the fixed pool ``0..N-1`` on every pass (the pool is not cached:
samples are re-rendered from their index, bit-identical, so memory does not grow with N).

:func:`step_loader` draws over :class:`~anatosynth.synth.dataset.SyntheticParamsDataset` with a
``torch.utils.data.DataLoader`` whose batches come from :class:`StepBatches`, step by step from the current
position: workers (spawned) draw the sample parameters (numpy placement, CPU) ahead of the step, one task
per synthetic body, and the training process renders each batch on its device in one batched ``apply``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from anatosynth.train.config import PretrainConfig

__all__ = ["batch_indices", "pool_index", "StepBatches", "step_loader", "auto_workers", "load_bank_for",
           "build_stream"]


def batch_indices(next_index: int, rank: int, batch: int) -> list[int]:
    """Stream indices of this rank's batch at stream position ``next_index`` (see the module docstring)."""
    start = next_index + rank * batch
    return list(range(start, start + batch))


@functools.lru_cache(maxsize=8)
def _pool_permutation(samples: int, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0x9001]))
    return rng.permutation(samples)


def pool_index(index: int, samples: int | None, seed: int) -> int:
    """Map a stream index onto the fixed pool ``0..samples-1``: each pass over the pool is a new permutation."""
    if samples is None:
        return int(index)
    epoch, pos = divmod(int(index), int(samples))
    return int(_pool_permutation(int(samples), int(seed), epoch)[pos])


class StepBatches(Sampler[list[int]]):
    """Batch sampler: this rank's sample indices for ``steps`` steps from stream position ``next_index``."""

    def __init__(self, next_index: int, rank: int, world_size: int, batch: int, steps: int,
                 samples: int | None = None, seed: int = 0):
        self.next_index, self.rank, self.world_size = int(next_index), int(rank), int(world_size)
        self.batch, self.steps, self.samples, self.seed = int(batch), max(0, int(steps)), samples, int(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for t in range(self.steps):
            start = self.next_index + t * self.world_size * self.batch
            yield [pool_index(i, self.samples, self.seed) for i in batch_indices(start, self.rank, self.batch)]


def step_loader(stream, sampler: StepBatches, workers: int) -> Iterable[list]:
    """The draw loader of a run: lists of :class:`~anatosynth.synth.generator.SampleParams`, one per step,
    drawn by ``workers`` spawned processes ahead of the step, one task per synthetic body (0: by the
    training process, when asked); see :func:`~anatosynth.synth.dataset.params_loader`."""
    from anatosynth.synth.dataset import SyntheticParamsDataset, params_loader

    return params_loader(SyntheticParamsDataset.from_stream(stream), sampler, workers)


def auto_workers(cfg: PretrainConfig, device: torch.device, world_size: int) -> int:
    """Worker processes that draw sample parameters: none on the CPU (they would compete with the
    training threads), up to 4 per process on CUDA (placement is CPU work, rendering runs on the GPU)."""
    if cfg.workers is not None:
        return int(cfg.workers)
    if device.type != "cuda":
        return 0
    return int(max(1, min(4, (os.cpu_count() or 2) // max(1, world_size) - 1)))


def load_bank_for(cfg: PretrainConfig):
    """The bank this run synthesises from (None for ``primitives``)."""
    if cfg.mode == "primitives" or cfg.bank is None:
        return None
    from anatosynth.bank import load_bank

    return load_bank(cfg.bank)


def build_stream(cfg: PretrainConfig, bank):
    """The synthetic stream of this run, and its config (``cfg.synth``, with the run's mode, render, patch)."""
    from anatosynth.synth.generator import SyntheticStream

    synth = cfg.nested_synth()
    return SyntheticStream(bank, synth, cfg.seed), synth
