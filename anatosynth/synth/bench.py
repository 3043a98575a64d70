"""In-memory throughput of the synthetic stream (``anatosynth synth bench`` and benchmarks/bench_synth.py)."""

from __future__ import annotations

import platform
import resource
import time

import numpy as np
import torch

from anatosynth.options import resolve_device
from anatosynth.synth.dataset import SyntheticParamsDataset, params_loader

__all__ = ["run_bench"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_bench(stream, n: int = 32, batch: int = 8, device: str = "cpu", workers: int = 0) -> dict:
    """Make samples ``0..n-1`` in batches and time drawing (CPU) and applying (device) separately.

    One warm-up batch (indices far from the timed ones) fills the per-device caches first. With
    ``workers`` > 0, the DataLoader of :func:`~anatosynth.synth.dataset.params_loader` draws the parameters
    in spawned workers while this process applies, as pre-training does; its first batch (a warm-up one,
    untimed) waits for the workers to start; ``draw_ms_per_patch`` is then the time spent waiting for them.

    Returns:
        JSON-ready dict: ``patches_per_s``, ``ms_per_patch``, ``draw_ms_per_patch``,
        ``apply_ms_per_patch``, ``forbidden_overlap_voxels`` (sum), ``organs_placed_mean``,
        ``organs_dropped_mean``, ``organs_in_patch_mean``, ``peak_rss_mb`` and the setting.
    """
    dev = resolve_device(device)
    warm = [10_000_000 + i for i in range(min(batch, n))]
    stream.apply([stream.draw(i) for i in warm], dev)
    _sync(dev)
    batches = [list(range(start, min(n, start + batch))) for start in range(0, n, batch)]
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
    total = draw_s + apply_s
    cfg = stream.config
    result = {
        "patches_per_s": n / total,
        "ms_per_patch": 1000 * total / n,
        "draw_ms_per_patch": 1000 * draw_s / n,
        "apply_ms_per_patch": 1000 * apply_s / n,
        "forbidden_overlap_voxels": int(sum(log["forbidden_overlap_voxels"] for log in logs)),
        "organs_placed_mean": float(np.mean([log["organs_placed"] for log in logs])),
        "organs_dropped_mean": float(np.mean([len(log["dropped"]) for log in logs])),
        "organs_in_patch_mean": float(np.mean([log["organs_in_patch"] for log in logs])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n": n, "batch": batch, "workers": workers, "device": str(dev), "torch_threads": torch.get_num_threads(),
        "mode": cfg.mode, "render": cfg.render, "patch": list(cfg.patch),
        "patches_per_body": cfg.patches_per_body, "anchors": cfg.anchors, "graph": cfg.graph,
        "machine": platform.processor() or platform.machine(),
    }
    if dev.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
        result["gpu"] = torch.cuda.get_device_name(dev)
    return result
