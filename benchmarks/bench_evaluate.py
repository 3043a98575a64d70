"""Time ``anatosynth evaluate`` on one CHAOS T2 volume (256x256x~40 MR) with a SwinUNETR feature size 12.

The network has random weights (speed does not depend on them); the run folder is written to a temporary
directory with the default preprocessing (MR, 1.5x1.5x2.0 mm) and patch 96^3. Reports the end-to-end
time per overlap and a breakdown (preprocessing, sliding window, back to the original grid, metrics).

Usage: .venv/bin/python benchmarks/bench_evaluate.py [--case chaos_01] [--overlap 0.5 0.25] [--threads 2] [--breakdown]

On a machine shared with other busy processes, use --threads 1: OpenMP threads that wait for each other
while descheduled can make a 2-thread run many times slower than a 1-thread run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path


def cpu_seconds() -> float:
    """User + system CPU time of this process (less sensitive than wall time to other busy processes)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "chaos-t2"


def make_run(folder: Path, feature_size: int, patch: int) -> Path:
    """A fine-tuned-run folder with random SwinUNETR weights and CHAOS classes."""
    import torch

    from anatosynth.io import read_dataset
    from anatosynth.train.checkpoint import save_model, write_json
    from anatosynth.train.models import ModelSpec, build_model
    from anatosynth.transforms.preprocess import ClassMap, PreprocessConfig

    classes = ClassMap.from_labels(read_dataset(DATA).labels)
    spec = ModelSpec("swinunetr", 1, classes.num_classes, feature_size, (patch, patch, patch))
    torch.manual_seed(0)
    save_model(folder / "model.pt", build_model(spec))
    write_json(folder / "metadata.json", {"kind": "finetune", "model": spec.to_dict(), "class_names": classes.names,
                                          "label_ids": classes.ids, "preprocess": PreprocessConfig("MR").to_dict()})
    return folder


def breakdown(run_dir: Path, case_name: str, overlap: float) -> dict:
    """Seconds spent in each stage for one case."""
    from anatosynth.evaluate.inference import load_run
    from anatosynth.evaluate.metrics import case_scores
    from anatosynth.io import load_image, load_label, read_dataset
    from anatosynth.transforms.inferer import sliding_probs
    from anatosynth.transforms.preprocess import prepare_image, to_original_grid

    run = load_run(run_dir)
    case = read_dataset(DATA).select([case_name]).cases[0]
    t = {}
    t0, c0 = time.time(), cpu_seconds()
    image = load_image(case.image)
    prepared = prepare_image(case.name, image, run.preprocess)
    t["preprocess"], t["preprocess_cpu"] = time.time() - t0, cpu_seconds() - c0
    t0, c0 = time.time(), cpu_seconds()
    probs = sliding_probs(run.model, prepared.image, run.patch, overlap, 1)
    t["sliding_window"], t["sliding_window_cpu"] = time.time() - t0, cpu_seconds() - c0
    t0, c0 = time.time(), cpu_seconds()
    index = to_original_grid(probs, prepared.affine, prepared.original_shape, prepared.original_affine)
    t["to_original_grid"], t["to_original_grid_cpu"] = time.time() - t0, cpu_seconds() - c0
    label = load_label(case.label)
    t0, c0 = time.time(), cpu_seconds()
    case_scores(run.classes.to_ids(index), label.array, dict(zip(run.classes.names[1:], run.classes.ids[1:])),
                image.spacing)
    t["metrics"], t["metrics_cpu"] = time.time() - t0, cpu_seconds() - c0
    t["canonical_shape"] = list(prepared.image.shape)
    t["original_shape"] = list(image.shape)
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in t.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="chaos_01")
    parser.add_argument("--overlap", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--feature-size", type=int, default=12)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true", help="also time each stage (runs the case again)")
    args = parser.parse_args()

    import torch

    from anatosynth.evaluate.evaluate import evaluate

    torch.set_num_threads(args.threads)
    results = {"machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "case": args.case, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp) / "run", args.feature_size, args.patch)
        for overlap in args.overlap:
            start, cpu0 = time.time(), cpu_seconds()
            evaluate(DATA, run_dir, Path(tmp) / f"report_{overlap}", cases=[args.case], overlap=overlap,
                     progress=False)
            total, cpu = time.time() - start, cpu_seconds() - cpu0
            entry = {"overlap": overlap, "evaluate_seconds": round(total, 1), "evaluate_cpu_seconds": round(cpu, 1)}
            if args.breakdown:
                entry["breakdown"] = breakdown(run_dir, args.case, overlap)
            results["runs"].append(entry)
            print(json.dumps(results["runs"][-1]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
