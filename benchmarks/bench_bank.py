"""Benchmark the shape bank: phantom build, 5-subject FLARE22 build, file size, load time, orientation check.

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


def _orientation_check(flare: Path, bank) -> dict:
    """Cost of the anatomical-invariant check: on a bank's stored centroids (what ``bank build`` and
    ``bank merge`` pay) and on raw label maps (what ``anatosynth check`` pays, reading excluded)."""
    from anatosynth.bank.build import collect_cases
    from anatosynth.bank.orientation import check_centroids, check_shapes, label_centroids, named
    from anatosynth.io import load_label

    t0 = time.perf_counter()
    for sid in bank.subjects:
        assert check_shapes(bank.shapes_of(sid)).ok
    per_subject = (time.perf_counter() - t0) / len(bank.subjects)
    read, centroids = [], []
    for case in collect_cases([flare])[:5]:
        t0 = time.perf_counter()
        vol = load_label(case.path)
        read.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert check_centroids(named(label_centroids(vol), case.organs)).ok
        centroids.append(time.perf_counter() - t0)
    return {"orientation_check_bank_ms_per_subject": round(per_subject * 1e3, 2),
            "orientation_check_map_s_mean_of_5": round(sum(centroids) / 5, 3),
            "label_map_read_s_mean_of_5": round(sum(read) / 5, 3)}


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
    result.update(_orientation_check(flare, bank))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
