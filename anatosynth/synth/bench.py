"""In-memory throughput of the synthetic stream (``anatosynth synth bench`` and benchmarks/bench_synth.py)."""

from __future__ import annotations

import functools
import multiprocessing
import platform
import resource
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

from anatosynth.options import resolve_device
from anatosynth.synth.dataset import (
    WORKER_TIMEOUT_S,
    SyntheticDataset,
    SyntheticParamsDataset,
    _single_thread,
    params_loader,
)

__all__ = ["run_bench"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _warm_and_timed(n: int, batch: int) -> tuple[list[int], list[list[int]]]:
    """One warm-up batch of indices far from the timed ones, and the timed samples ``0..n-1`` in batches."""
    warm = [10_000_000 + i for i in range(min(batch, n))]
    return warm, [list(range(start, min(n, start + batch))) for start in range(0, n, batch)]


def run_bench(stream, n: int = 32, batch: int = 8, device: str = "cpu", workers: int = 0,
              render_workers: int = 0) -> dict:
    """Make samples ``0..n-1`` in batches and time drawing (CPU) and applying (device) separately.

    With ``render_workers`` > 0 the samples are instead rendered whole (drawn and applied) on the CPU by
    that many DataLoader worker processes of one torch thread each, :class:`SyntheticDataset` with
    ``num_workers``: parallelism over samples, the way to several CPU cores (:func:`_bench_render_workers`).

    One warm-up batch (indices far from the timed ones) fills the per-device caches first. With
    ``workers`` > 0, the DataLoader of :func:`~anatosynth.synth.dataset.params_loader` draws the parameters
    in spawned workers while this process applies, as pre-training does; its first batch (a warm-up one,
    untimed) waits for the workers to start; ``draw_ms_per_patch`` is then the time spent waiting for them.

    Returns:
        JSON-ready dict: ``patches_per_s``, ``ms_per_patch``, ``draw_ms_per_patch``,
        ``apply_ms_per_patch``, ``forbidden_overlap_voxels`` (sum), ``organs_placed_mean``,
        ``organs_dropped_mean``, ``organs_in_patch_mean``, ``peak_rss_mb`` and the setting.
    """
    if render_workers > 0:
        return _bench_render_workers(stream, n, batch, render_workers)
    dev = resolve_device(device)
    warm, batches = _warm_and_timed(n, batch)
    stream.apply([stream.draw(i) for i in warm], dev)
    _sync(dev)
    drawn = iter(params_loader(SyntheticParamsDataset.from_stream(stream), [warm, *batches], workers))
    next(drawn)  # the warm-up batch: the workers are up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    draw_s = apply_s = 0.0
    logs = []
    for _ in batches:
        t0 = time.perf_counter()
        params = next(drawn)
        t1 = time.perf_counter()
        out = stream.apply(params, dev)
        _sync(dev)
        t2 = time.perf_counter()
        draw_s += t1 - t0
        apply_s += t2 - t1
        logs.extend(out.logs)
    del drawn  # stops the workers
    result = _summary(stream, logs, n, draw_s + apply_s)
    result.update({"draw_ms_per_patch": 1000 * draw_s / n, "apply_ms_per_patch": 1000 * apply_s / n,
                   "batch": batch, "workers": workers, "device": str(dev), "torch_threads": torch.get_num_threads()})
    if dev.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
        result["gpu"] = torch.cuda.get_device_name(dev)
    return result


def _summary(stream, logs: list[dict], n: int, seconds: float) -> dict:
    """Speed, the placement logs' means and the setting, shared by both routes."""
    cfg = stream.config
    return {
        "patches_per_s": n / seconds,
        "ms_per_patch": 1000 * seconds / n,
        "forbidden_overlap_voxels": int(sum(log["forbidden_overlap_voxels"] for log in logs)),
        "organs_placed_mean": float(np.mean([log["organs_placed"] for log in logs])),
        "organs_dropped_mean": float(np.mean([len(log["dropped"]) for log in logs])),
        "organs_in_patch_mean": float(np.mean([log["organs_in_patch"] for log in logs])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n": n, "mode": cfg.mode, "render": cfg.render, "patch": list(cfg.patch),
        "patches_per_body": cfg.patches_per_body, "anchors": cfg.anchors, "graph": cfg.graph,
        "machine": platform.processor() or platform.machine(),
    }


def _stack(items: list[dict]) -> dict:
    """Collate of the render workers: image and label batched by ``default_collate`` (which stacks straight
    into shared memory in a worker, saving a copy), the logs as a list."""
    batch = default_collate([{"image": it["image"], "label": it["label"]} for it in items])
    batch["log"] = [it["log"] for it in items]
    return batch


def _warm_then_wait(barrier, warm: list[int], worker_id: int) -> None:
    """worker_init_fn: one torch thread, the stream's caches filled by a warm-up batch, then wait for all."""
    _single_thread(worker_id)
    info = get_worker_info()
    assert info is not None and isinstance(info.dataset, SyntheticDataset)
    info.dataset._items(warm)  # indices beyond the timed ones: no length check
    barrier.wait()


def _bench_render_workers(stream, n: int, batch: int, render_workers: int) -> dict:
    """``render_workers`` spawned processes render whole batches of ``SyntheticDataset`` on the CPU.

    Each worker warms its caches on a batch of far-away indices, then all wait at a barrier with this
    process, so the clock starts with every worker ready and none ahead; it stops when the last of the
    ``n`` samples (one task per batch of ``batch``) has reached this process, as a training loop gets them.
    """
    data = SyntheticDataset.from_stream(stream, length=n, log=True)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(render_workers + 1)
    warm, batches = _warm_and_timed(n, batch)
    loader = DataLoader(data, batch_sampler=batches, collate_fn=_stack, num_workers=render_workers,
                        multiprocessing_context=context, prefetch_factor=1,
                        worker_init_fn=functools.partial(_warm_then_wait, barrier, warm))
    batches_out = iter(loader)
    barrier.wait(timeout=WORKER_TIMEOUT_S)
    t0 = time.perf_counter()
    logs = [log for out in batches_out for log in out["log"]]
    seconds = time.perf_counter() - t0
    del batches_out  # the workers exit
    result = _summary(stream, logs, n, seconds)
    result.update({"batch": batch, "render_workers": render_workers, "device": "cpu", "torch_threads": 1,
                   "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024})
    return result
