"""Benchmark the synthetic stream: patches/s in memory, per mode, render and device.

Usage::

    .venv/bin/python benchmarks/bench_synth.py --device cpu --n 32 --threads 2
    .venv/bin/python benchmarks/bench_synth.py --device cuda --n 512 --batch 32 --workers 12 --modes anatomy

Prints one JSON object per setting (see :func:`anatosynth.synth.bench.run_bench`); record the numbers,
the command and the machine in BENCHMARKS.md. Targets (issue 4): anatomy mode, 96^3, >= 10 patches/s
on 2 CPU cores, >= 300 patches/s on one H100/H200-class GPU, peak memory < 2 GB on CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", default="builtin:phantom")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patch", default="96")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--workers", type=int, default=0, help="processes drawing parameters")
    parser.add_argument("--modes", default="anatomy,random,primitives")
    parser.add_argument("--renders", default="shell")
    parser.add_argument("--patches-per-body", type=int, default=None)
    args = parser.parse_args()

    import torch

    from anatosynth.bank import load_bank
    from anatosynth.synth import SynthConfig, SyntheticStream
    from anatosynth.synth.bench import run_bench
    from anatosynth.synth.config import check_patch

    if args.threads:
        torch.set_num_threads(args.threads)
    bank = load_bank(args.bank)
    for mode in args.modes.split(","):
        for render in args.renders.split(","):
            extra = {} if args.patches_per_body is None else {"patches_per_body": args.patches_per_body}
            cfg = SynthConfig(mode=mode, render=render, patch=check_patch(args.patch), **extra)
            stream = SyntheticStream(bank, cfg, seed=0)
            result = run_bench(stream, n=args.n, batch=args.batch, device=args.device, workers=args.workers)
            result["date"] = datetime.date.today().isoformat()
            result["bank"] = args.bank
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
