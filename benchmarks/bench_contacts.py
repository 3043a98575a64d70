"""How anatomical are the synthetic bodies? Contacts, anchor distances, shifts and drops per setting.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_contacts.py --bank BANK [--patch 96,96,32] [--bodies 40] [--patches 64]

For each synthesis setting (the old and current defaults, and the steps between them) it draws
``--bodies`` layouts and ``--patches`` label patches (seed 0, anatomy mode) and reports:

- layout: organs placed and dropped per body, the share of organs that needed a redraw or a shift,
  the median shift, and the median distance of an organ's centre to its (body-scaled) anchor;
- patches: organs dropped at patch resolution per patch, organs in the patch, the share of carved
  organ voxels, and **contacts kept**: of the organ pairs that touch in most bank subjects
  (edge contact > 0.5) and both appear in a patch, the share that touch there (26-neighbourhood).

The bank's own subjects give the reference: their mean contact over those pairs, and their organs'
median distance to the anchor. Prints a Markdown table (and JSON with ``--json``).

``--switches`` prints instead what the anchors/graph switches do at the current defaults: the spread
(mean over organs of the norm of the per-axis std of the placed centre, body frame) and organs placed,
over ``--bodies`` bodies.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage

SETTINGS = [
    ("margin 1, no carving, no tolerance (the earlier defaults)",
     dict(collision_margin=1, max_carve=0.0, layout_tolerance=0.0)),
    ("margin 0, no carving", dict(collision_margin=0, max_carve=0.0, layout_tolerance=0.0)),
    ("margin 0, carve ≤ 25 %", dict(collision_margin=0, max_carve=0.25, layout_tolerance=0.0)),
    ("margin 0, carve ≤ 25 %, layout tolerance 10 % (current defaults)",
     dict(collision_margin=0, max_carve=0.25, layout_tolerance=0.1)),
    ("current defaults + subject_coherence 1", dict(subject_coherence=1.0)),
]


def contact_pairs(bank) -> list[tuple[int, int]]:
    names = [o.name for o in bank.organs]
    return [(names.index(e.a) + 1, names.index(e.b) + 1) for e in bank.edges
            if e.contact > 0.5 and e.a in names and e.b in names]


def draw_layouts(bank, config, bodies: int) -> list:
    """``bodies`` layouts of one seed-0 generator (the same bodies for every setting's comparison)."""
    from anatosynth.synth.placement import BodyModel

    model = BodyModel(bank, config)
    rng = np.random.default_rng(0)
    return [model.draw(rng) for _ in range(bodies)]


def layout_stats(bank, config, bodies: int) -> dict:
    layouts = draw_layouts(bank, config, bodies)
    placed = [p for layout in layouts for p in layout.placed]
    dropped = sum(len(layout.dropped) for layout in layouts)
    shifts = [p.shift_mm for p in placed if p.shift_mm > 0]
    return {"placed_per_body": len(placed) / bodies, "dropped_per_body": dropped / bodies,
            "moved_pct": 100.0 * float(np.mean([p.shift_mm > 0 or p.attempts > 1 for p in placed])),
            "median_shift_mm": float(np.median(shifts)) if shifts else 0.0,
            "median_anchor_distance_mm": float(np.median([p.anchor_distance_mm for p in placed]))}


def patch_stats(bank, config, patches: int, pairs) -> dict:
    from anatosynth.synth.generator import SyntheticStream

    stream = SyntheticStream(bank, config, seed=0)
    drops = in_patch = carved = voxels = touching = both = forbidden = 0
    t0 = time.perf_counter()
    for start in range(0, patches, 8):
        labels, logs = stream.labels([stream.draw(i) for i in range(start, min(start + 8, patches))])
        for label, log in zip(labels.numpy(), logs):
            drops += sum(1 for d in log["dropped"] if "patch resolution" in d["reason"])
            in_patch += log["organs_in_patch"]
            carved += sum(d.get("carved_voxels", 0) for d in log["placed"])
            voxels += sum(d["voxels_in_patch"] for d in log["placed"])
            forbidden += log["forbidden_overlap_voxels"]
            present = set(np.unique(label).tolist())
            for a, b in pairs:
                if a in present and b in present:
                    both += 1
                    touching += bool((ndimage.binary_dilation(label == a, np.ones((3, 3, 3), bool))
                                      & (label == b)).any())
    return {"patch_drops_per_patch": drops / patches, "organs_in_patch": in_patch / patches,
            "carved_pct": 100.0 * carved / max(voxels + carved, 1),
            "contacts_kept_pct": 100.0 * touching / max(both, 1), "contact_pairs_seen": both,
            "forbidden_overlap_voxels": forbidden,
            "ms_per_patch": 1000.0 * (time.perf_counter() - t0) / patches}


SWITCHES = [("anatomy (anchors + graph)", dict(mode="anatomy")),
            ("graph off", dict(mode="anatomy", graph=False)),
            ("anchors off", dict(mode="anatomy", anchors=False)),
            ("anchors and graph off", dict(mode="anatomy", anchors=False, graph=False)),
            ("random", dict(mode="random"))]


def switch_stats(bank, config, bodies: int) -> dict:
    centres: dict[int, list] = {}
    placed = 0
    for layout in draw_layouts(bank, config, bodies):
        placed += len(layout.placed)
        for p in layout.placed:
            centres.setdefault(p.organ, []).append(p.centre_mm)
    spread = np.mean([np.linalg.norm(np.std(np.array(c), axis=0)) for c in centres.values() if len(c) > 2])
    return {"spread_mm": float(spread), "placed_per_body": placed / bodies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", required=True, help="a .bank file (or builtin:phantom)")
    parser.add_argument("--patch", default="96,96,32")
    parser.add_argument("--bodies", type=int, default=40)
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--switches", action="store_true", help="the anchors/graph ablation table instead")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from anatosynth.bank import load_bank
    from anatosynth.options import parse_patch
    from anatosynth.synth.config import SynthConfig

    bank = load_bank(args.bank)
    if args.switches:
        print(f"bank {args.bank}, {args.bodies} bodies, seed 0, current defaults\n")
        print("| setting | spread (mm) | placed |\n|---|---|---|")
        for name, overrides in SWITCHES:
            r = switch_stats(bank, SynthConfig(patch=parse_patch(args.patch), **overrides), args.bodies)
            print(f"| {name} | {r['spread_mm']:.1f} | {r['placed_per_body']:.2f} |")
        return
    pairs = contact_pairs(bank)
    real_contact = float(np.mean([e.contact for e in bank.edges if e.contact > 0.5]))
    real_anchor = float(np.median([np.linalg.norm(np.asarray(s.centroid_mm) - np.asarray(o.anchor_mean_mm))
                                   for o in bank.organs for s in o.shapes]))
    rows = []
    for name, overrides in SETTINGS:
        cfg = SynthConfig(mode="anatomy", patch=parse_patch(args.patch), **overrides)
        rows.append({"setting": name, **layout_stats(bank, cfg, args.bodies),
                     **patch_stats(bank, cfg, args.patches, pairs)})
    result = {"bank": args.bank, "patch": args.patch, "bodies": args.bodies, "patches": args.patches,
              "contact_pairs": len(pairs), "bank_subjects_contact_pct": 100.0 * real_contact,
              "bank_subjects_median_anchor_distance_mm": real_anchor, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"bank {args.bank}: {len(pairs)} organ pairs touch in most subjects (on average in "
          f"{100 * real_contact:.0f} % of them); real organs lie a median {real_anchor:.1f} mm from their anchor\n")
    print("| setting | moved % | median shift mm | anchor dist mm | dropped/body | patch drops/patch | "
          "organs in patch | carved % | contacts kept % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['moved_pct']:.0f} | {r['median_shift_mm']:.0f} | "
              f"{r['median_anchor_distance_mm']:.1f} | {r['dropped_per_body']:.2f} | {r['patch_drops_per_patch']:.2f} | "
              f"{r['organs_in_patch']:.1f} | {r['carved_pct']:.2f} | {r['contacts_kept_pct']:.0f} |")


if __name__ == "__main__":
    main()
