"""Pre-training loss curves of released weights, read from their model cards, on one plot.

The x axis counts synthetic patches seen (steps x batch), so runs of different budgets line up; each curve
is labelled with its folder name, budget and final loss. Example (docs/figures/cpu-long/budget_pretrain_loss.png)::

    python benchmarks/plot_card_losses.py weights/cpu-long-anatomy weights/cpu-long-anatomy-30k \
        --out docs/figures/cpu-long/budget_pretrain_loss.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", nargs="+", type=Path, help="released folders (each with card.json)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="pre-training loss (DiceCE) against synthetic patches seen")
    args = p.parse_args(argv)
    for folder in args.weights:
        if not (folder / "card.json").is_file():
            p.error(f"{folder}: no card.json (not a released weights folder)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for folder in args.weights:
        card = json.loads((folder / "card.json").read_text())
        steps, loss = zip(*card["loss_curve"])
        device = "GPU" if "+cu" in card["versions"]["torch"] else "CPU"
        ax.plot([s * card["batch"] for s in steps], loss, lw=1.2,
                label=f"{folder.name}: {card['samples_seen']:,} patches, {device}, final {card['final_loss']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("synthetic patches seen (log)")
    ax.set_ylabel("DiceCE")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
