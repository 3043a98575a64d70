"""Validation Dice against fine-tuning step, one curve per run (the convergence check behind cpu-long).

    python benchmarks/plot_finetune_curves.py RUN [RUN ...] --labels A B ... --out docs/figures/cpu-long/curves.png

Reads each run's ``train.log`` (the lines fine-tuning writes at every validation) and prints the table too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anatosynth.experiment.runner import validation_curve


def _keep(run: Path, label: str, curve: list, folder: Path) -> None:
    import json
    import re

    import yaml

    from anatosynth.experiment.runner import read_report, validation_cases

    cfg_path = next((run / n for n in ("config.yaml", "config.json") if (run / n).is_file()), None)
    options = yaml.safe_load(cfg_path.read_text()) if cfg_path else {}
    record = {"run": run.name, "label": label, "validation": curve,
              "options": {k: v for k, v in options.items() if k not in ("data", "out", "val_cases")}}
    if (run / "report" / "summary.json").is_file():
        record["held_out"] = read_report(run / "report", validation_cases(run))  # with test Dice
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run.name)
    (folder / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", nargs="+", default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="scratch fine-tuning: validation Dice (4 validation cases)")
    ap.add_argument("--save-json", type=Path, default=None,
                    help="also keep each run's metrics (validation curve, held-out Dice if RUN/report exists, "
                         "options) as FOLDER/<label>.json, e.g. results/cpu-long-pilot")
    args = ap.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run, label in zip(args.runs, labels):
        curve = validation_curve(run)
        if not curve:
            print(f"{run}: no validation lines yet")
            continue
        steps, dice = [c[0] for c in curve], [100 * c[2] for c in curve]
        if args.save_json:
            _keep(run, label, curve, args.save_json)
        ax.plot(steps, dice, marker="o", ms=3, label=label)
        print(f"{label}: " + ", ".join(f"{s}:{d:.1f}" for s, d in zip(steps, dice)))
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("mean foreground Dice % (validation)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
