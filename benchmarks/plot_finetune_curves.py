"""Validation Dice against fine-tuning step, one curve per run (the convergence check behind cpu-long).

    python benchmarks/plot_finetune_curves.py RUN [RUN ...] --labels A B ... --out docs/figures/cpu-long/curves.png

Reads each run's ``train.log`` (the lines fine-tuning writes at every validation) and prints the table too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anatosynth.experiment.runner import validation_curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", nargs="+", default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="scratch fine-tuning: validation Dice (4 validation cases)")
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
