"""Draw the random parameters of upcoming samples in worker processes, render on the training device.

A synthetic sample is made in two steps (:mod:`anatosynth.synth.generator`): ``draw(i)`` (all randomness;
numpy placement on the CPU) and ``apply(params, device)`` (deterministic rendering, batched, on the
training device). The CPU-bound draw is what can stall a GPU step, so :class:`ParamPrefetcher` runs it
for the next few batches in a small pool of spawned processes while the current step trains; the
training process only renders. Sample ``i`` depends only on ``(seed, i)``, so the bytes are the same
with or without workers.
"""

from __future__ import annotations

import collections
import multiprocessing as mp

__all__ = ["ParamPrefetcher"]

_STREAM = None  # the worker process's own stream


def _init_worker(bank, synth: dict, seed: int) -> None:
    """Build the stream once per worker (single-threaded torch: workers only run numpy placement)."""
    global _STREAM
    import torch

    from anatosynth.synth import SynthConfig, SyntheticStream

    torch.set_num_threads(1)
    _STREAM = SyntheticStream(bank, SynthConfig.from_dict(synth), seed)


def _draw(index: int):
    return _STREAM.draw(int(index))


class ParamPrefetcher:
    """Sample parameters for batches scheduled ahead of time.

    Args:
        stream: the training process's stream (its bank, config and seed are sent to the workers).
        workers: worker processes; 0 draws in the training process when asked (no prefetch).
    """

    def __init__(self, stream, workers: int):
        self.stream = stream
        self.workers = int(workers)
        self.pending: collections.deque = collections.deque()
        self.pool = None
        if self.workers > 0:
            ctx = mp.get_context("spawn")  # safe with CUDA and with torch's thread pools
            self.pool = ctx.Pool(self.workers, initializer=_init_worker,
                                 initargs=(stream.bank, stream.config.to_dict(), int(stream.seed)))

    def schedule(self, indices: list[int]) -> None:
        """Start drawing the samples of a future batch (no-op without workers)."""
        if self.pool is not None:
            self.pending.append((tuple(indices), self.pool.map_async(_draw, list(indices), chunksize=1)))

    @property
    def scheduled(self) -> int:
        return len(self.pending)

    def params(self, indices: list[int]) -> list:
        """Parameters of ``indices``: from the workers when scheduled, else drawn here."""
        key = tuple(indices)
        while self.pending and self.pending[0][0] != key:  # stale (e.g. a schedule that was not consumed)
            self.pending.popleft()
        if self.pending:
            return list(self.pending.popleft()[1].get())
        return [self.stream.draw(int(i)) for i in indices]

    def batch(self, indices: list[int], device):
        """The rendered batch of ``indices`` on ``device``."""
        return self.stream.apply(self.params(indices), device)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
        self.pending.clear()
