"""CPU fine-tuning speed: optimiser steps per second on real scans (CHAOS T2), validation excluded.

Runs ``finetune`` twice, with ``--steps A`` and ``--steps B`` (same config otherwise), and reports
``(B - A) / (t_B - t_A)``: preprocessing, start-up and the final validation cancel out. Also in CPU
seconds of this process (steadier than wall time on a machine shared with other jobs).

    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "chaos-t2"


def _time(steps: int, args, root: Path) -> tuple[float, float]:
    from anatosynth.train.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(data=str(args.data), out=str(root / f"run{steps}"), model=args.model,
                         feature_size=args.feature_size, patch=(args.patch,) * 3, steps=steps, train_cases=2,
                         val_cases=["chaos_01"], seed=0, spacing=args.spacing, val_every=10_000,
                         val_max_cases=1, overlap=0.0, crops=args.crops, device="cpu")
    start, cpu = time.perf_counter(), time.process_time()
    finetune(cfg, progress=False)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--model", default="unet")
    p.add_argument("--feature-size", type=int, default=8)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--crops", type=int, default=2)
    p.add_argument("--spacing", type=lambda t: tuple(float(v) for v in t.split(",")), default=(3.0, 3.0, 3.0),
                   help="target spacing in mm (default 3,3,3; the fine-tuning default is 1.5,1.5,2)")
    p.add_argument("--steps", default="5,45", help="A,B step counts")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    a, b = (int(s) for s in args.steps.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        (ta, ca), (tb, cb) = _time(a, args, Path(tmp)), _time(b, args, Path(tmp))
    print(f"{args.model} f{args.feature_size} patch {args.patch}^3 crops {args.crops} at {args.spacing} mm, "
          f"{args.threads} thread(s): "
          f"{(b - a) / (tb - ta):.3f} steps/s wall, {(b - a) / (cb - ca):.3f} steps per CPU-s "
          f"({b - a} steps in {tb - ta:.1f} s wall, {cb - ca:.1f} CPU-s; runs {ta:.1f} s and {tb:.1f} s)")


if __name__ == "__main__":
    main()
