"""Anatomical invariants on real label maps: do they hold, and how well is a wrong header diagnosed?

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_orientation.py [--data ../shared/data] [--out margins.json]

For every label map of FLARE22, AMOS, CHAOS-T2 and OpenKBP: the organ centroids (as ``anatosynth
check`` computes them), the invariants checked and violated, and the diagnosis of each of the 47
non-identity signed axis permutations applied to the centroids (what a header with that error would
give). Prints one JSON object: per data set the subjects with violations (should be none), the
smallest margin per invariant, and how often single flips, single swaps and all 47 transforms are
diagnosed exactly.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    import numpy as np

    from anatosynth.bank.names import canonical_name
    from anatosynth.bank.orientation import (_TRANSFORMS, INVARIANTS, check_centroids, describe_transform,
                                             label_centroids, named)
    from anatosynth.io import load_label, read_dataset

    data = Path(args.data)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sets": {}}
    for key, src in [("flare22", data / "labels" / "flare22"), ("amos", data / "labels" / "amos"),
                     ("chaos-t2", data / "chaos-t2"), ("openkbp", data / "openkbp")]:
        ds = read_dataset(src)
        organs = {k: canonical_name(v) for k, v in ds.foreground.items()}
        margins: dict[str, float] = {}
        violating, exact, kinds = [], {}, {}
        for case in ds.cases:
            cents = named(label_centroids(load_label(case.label)), organs)
            finding = check_centroids(cents)
            if not finding.ok:
                violating.append(case.name)
            for inv in finding.checked:
                margins[inv.name] = min(margins.get(inv.name, np.inf), inv.margin(cents))
            for t in _TRANSFORMS[1:]:
                kind = describe_transform(t)
                kind = "single flip" if kind.endswith("looks flipped") else \
                    "single swap" if kind.endswith("look swapped") else "other"
                got = check_centroids({k: t @ v for k, v in cents.items()})
                hit = got.transform is not None and not got.alternatives and np.array_equal(got.transform, t)
                exact[kind] = exact.get(kind, 0) + int(hit)
                kinds[kind] = kinds.get(kind, 0) + 1
        result["sets"][key] = {
            "maps": len(ds.cases), "maps_with_violations": violating,
            "smallest_margin_mm": {inv.name: round(margins[inv.name], 1) for inv in INVARIANTS if inv.name in margins},
            "diagnosed_exactly": {k: f"{exact[k]}/{kinds[k]}" for k in kinds}}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
