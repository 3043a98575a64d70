"""Benchmark the shape bank: phantom build, 5-subject FLARE22 build, file size, load time.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_bank.py [--data ../shared/data] [--subjects 5] [--seed 0]

Prints one JSON object. Timings are wall-clock seconds on whatever machine runs it; the build is
single-process (NumPy/edt threads as the libraries choose).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from anatosynth.bank import load_bank, save_bank
    from anatosynth.bank.build import build_bank
    from anatosynth.bank.phantom import phantom_bank

    result: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    t0 = time.perf_counter()
    phantom_bank()
    result["phantom_build_s"] = round(time.perf_counter() - t0, 2)

    flare = Path(args.data) / "labels" / "flare22"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bank = build_bank([flare], subjects=args.subjects, seed=args.seed, progress=False)
        result["flare_build_s"] = round(time.perf_counter() - t0, 2)
        path = save_bank(bank, Path(tmp) / "flare.bank")
        result["flare_bank_mb"] = round(path.stat().st_size / 1e6, 3)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            load_bank(path)
            times.append(time.perf_counter() - t0)
        result["flare_load_s_best_of_5"] = round(min(times), 4)
        result["organs"] = len(bank.organs)
        result["subjects"] = len(bank.subjects)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
