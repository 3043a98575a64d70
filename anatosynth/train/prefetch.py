"""Draw the random parameters of upcoming samples in worker processes, render on the training device.

A synthetic sample is made in two steps (:mod:`anatosynth.synth.generator`): ``draw(i)`` (all randomness;
numpy placement on the CPU) and ``apply(params, device)`` (deterministic rendering, batched, on the
training device). The CPU-bound draw is what can stall a GPU step, so :class:`ParamPrefetcher` runs it
for the next few batches in a small pool of spawned processes while the current step trains, one task
per synthetic body (the samples of a body share its layout, so one worker lays it out once). On CUDA
it also renders batch t+1 on a side stream, from a background thread, while step t runs; the step waits
on an event, not on the host. A worker that dies raises :class:`WorkerError` instead of hanging. Sample
``i`` depends only on ``(seed, i)``, so the bytes are the same with or without workers.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import threading

__all__ = ["ParamPrefetcher", "WorkerError", "WORKER_TIMEOUT_S"]

WORKER_TIMEOUT_S = 600.0  # a body's draw that takes longer than this is treated as a hung worker
_POLL_S = 0.5

_STREAM = None  # the worker process's own stream


class WorkerError(RuntimeError):
    """A draw worker died or stopped answering."""


def _init_worker(bank, synth: dict, seed: int) -> None:
    """Build the stream once per worker (single-threaded torch: workers only run numpy placement)."""
    global _STREAM
    import torch

    from anatosynth.synth import SynthConfig, SyntheticStream

    torch.set_num_threads(1)
    _STREAM = SyntheticStream(bank, SynthConfig.from_dict(synth), seed)


def _draw_body(indices: list[int]) -> list:
    """The samples of one body (pickled together, so they share one layout object on arrival)."""
    return [_STREAM.draw(int(i)) for i in indices]


def by_body(indices: list[int], patches_per_body: int) -> list[list[int]]:
    """``indices`` grouped by synthetic body (``index // patches_per_body``), in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(int(i) // patches_per_body, []).append(int(i))
    return list(groups.values())


class ParamPrefetcher:
    """Sample parameters (and, on CUDA, rendered batches) for batches scheduled ahead of time.

    Args:
        stream: the training process's stream (its bank, config and seed are sent to the workers).
        workers: worker processes; 0 draws in the training process when asked (no prefetch).
        timeout: seconds a body's draw may take before the workers count as hung.
    """

    def __init__(self, stream, workers: int, timeout: float = WORKER_TIMEOUT_S):
        self.stream = stream
        self.workers = int(workers)
        self.timeout = float(timeout)
        self.pending: collections.deque = collections.deque()
        self.pool = None
        self._pids: set[int] = set()
        self._ahead: tuple | None = None  # (indices, thread, result holder, CUDA event)
        if self.workers > 0:
            ctx = mp.get_context("spawn")  # safe with CUDA and with torch's thread pools
            self.pool = ctx.Pool(self.workers, initializer=_init_worker,
                                 initargs=(stream.bank, stream.config.to_dict(), int(stream.seed)))
            self._pids = {p.pid for p in self.pool._pool}

    def schedule(self, indices: list[int]) -> None:
        """Start drawing the samples of a future batch, one task per body (no-op without workers)."""
        if self.pool is not None:
            groups = by_body(list(indices), self.stream.config.patches_per_body)
            tasks = [(g, self.pool.apply_async(_draw_body, (g,))) for g in groups]
            self.pending.append((tuple(indices), tasks))

    @property
    def scheduled(self) -> int:
        return len(self.pending)

    def _dead(self) -> bool:
        """A worker exited (the pool replaces it, but the task it held is lost)."""
        procs = list(getattr(self.pool, "_pool", []))
        return any(p.exitcode is not None for p in procs) or {p.pid for p in procs} != self._pids

    def _get(self, result):
        waited = 0.0
        while True:
            try:
                return result.get(timeout=_POLL_S)
            except mp.TimeoutError:
                waited += _POLL_S
                if self._dead():
                    raise WorkerError("a synthesis draw worker died (out of memory or killed?); its samples "
                                      "are lost, so the run stops instead of waiting") from None
                if waited >= self.timeout:
                    raise WorkerError(f"no answer from the synthesis draw workers for {self.timeout:g} s") from None

    def params(self, indices: list[int]) -> list:
        """Parameters of ``indices``: from the workers when scheduled, else drawn here."""
        key = tuple(indices)
        while self.pending and self.pending[0][0] != key:  # stale (e.g. a schedule that was not consumed)
            self.pending.popleft()
        if self.pending:
            drawn = {}
            for group, result in self.pending.popleft()[1]:
                drawn.update(zip(group, self._get(result)))
            return [drawn[int(i)] for i in indices]
        return [self.stream.draw(int(i)) for i in indices]

    def batch(self, indices: list[int], device):
        """The rendered batch of ``indices`` on ``device``."""
        return self.stream.apply(self.params(indices), device)

    def next_batch(self, indices: list[int], device, upcoming: list[int] | None = None):
        """The batch of ``indices``; on CUDA, also start rendering ``upcoming`` on a side stream.

        On the CPU this is :meth:`batch` (rendering in a thread would only compete with the step for
        the same cores). On CUDA a background thread draws/collects and renders the next batch on its own
        stream; the training stream waits on that batch's event before it uses it."""
        import torch

        dev = torch.device(device)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == tuple(indices):
            ahead[1].join()
            if "error" in ahead[2]:
                raise ahead[2]["error"]
            batch = ahead[2]["batch"]
            current = torch.cuda.current_stream(dev)
            current.wait_event(ahead[3])
            for t in (batch.image, batch.label):
                t.record_stream(current)  # the allocator must not reuse them before this stream is done
        else:
            batch = self.batch(indices, dev)
        if upcoming is not None and dev.type == "cuda":
            self._render_ahead(list(upcoming), dev)
        return batch

    def _render_ahead(self, indices: list[int], dev) -> None:
        import torch

        side = torch.cuda.Stream(dev)
        event = torch.cuda.Event()
        holder: dict = {}

        def work():
            try:
                with torch.cuda.stream(side):
                    holder["batch"] = self.batch(indices, dev)
                    event.record(side)
            except BaseException as err:  # re-raised in the training thread
                holder["error"] = err

        thread = threading.Thread(target=work, name="synth-render-ahead", daemon=True)
        thread.start()
        self._ahead = (tuple(indices), thread, holder, event)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].join()
            self._ahead = None
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
        self.pending.clear()
