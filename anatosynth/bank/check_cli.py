"""CLI verb ``anatosynth check DATASET``: validate a dataset before you use it.

Reading and geometry checks come from :mod:`anatosynth.io`; the anatomical invariants on organ centroids
(liver right of spleen, ...) from :mod:`anatosynth.bank.orientation`, which is why the verb lives in the bank
stage rather than in ``io`` (``io`` imports nothing above it).
"""

from __future__ import annotations

import sys

from anatosynth.options import bar_disable

__all__ = ["register", "run_check"]

_HINT = "fix the header or pass --fix-orientation to bank build"


def run_check(args) -> int:
    """Load every case of a dataset, validate it and print one line per case with its geometry."""
    import numpy as np
    from tqdm import tqdm

    from anatosynth.bank.names import canonical_name
    from anatosynth.bank.orientation import OrientationError, check_centroids, label_centroids, named
    from anatosynth.io.datasets import read_dataset
    from anatosynth.io.volume import check_pair, load_image, load_label

    ds = read_dataset(args.data, labels=args.labels)
    organs = {k: canonical_name(v) for k, v in ds.foreground.items()}
    flipped: list[str] = []
    print(f"{ds.root}: {ds.layout} layout, {len(ds.cases)} cases, modality {ds.modality or 'n/a'}, "
          f"labels {', '.join(f'{k}={v}' for k, v in ds.foreground.items())}")
    for case in tqdm(ds.cases, desc="check", unit="case", disable=bar_disable(not args.quiet)):
        label = load_label(case.label, require_foreground=args.require_foreground, names=ds.labels) \
            if case.label else None
        image = load_image(case.image) if case.image else None
        if image is not None and label is not None:
            check_pair(image, label, case.image, case.label)
        ref = label if label is not None else image
        assert ref is not None  # read_dataset gives every case an image, a label map or both
        centroids = label_centroids(label) if label is not None else {}
        present = sorted(centroids)
        if label is not None:  # anatomical invariants on the organ centroids (see anatosynth.bank.orientation)
            finding = check_centroids(named(centroids, organs))
            if finding.explained and not args.ignore_orientation:
                flipped.append(finding.message(str(case.label), _HINT))
            elif not finding.ok:
                tqdm.write(f"warning: {finding.message(str(case.label), _HINT)}", file=sys.stderr)
        if not args.quiet:
            tqdm.write(f"  {case.name}: shape {ref.shape}, spacing {np.round(ref.spacing, 3).tolist()}, "
                       f"{ref.orientation}, labels {present}")
    if flipped:
        raise OrientationError(flipped)
    print(f"ok: {len(ds.cases)} cases valid")
    return 0


def register(sub) -> None:
    p = sub.add_parser("check", help="validate a dataset (MSD, nnU-Net, datalist or label folder)")
    p.add_argument("data", help="dataset folder, dataset.json/datalist JSON, or folder of label maps")
    p.add_argument("--labels", help="labels.json (id->name) overriding the dataset's label names")
    p.add_argument("--require-foreground", action="store_true", help="reject label maps with no foreground")
    p.add_argument("--ignore-orientation", action="store_true",
                   help="only warn when a label map's organs look flipped or swapped (default: exit 2)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=run_check)
