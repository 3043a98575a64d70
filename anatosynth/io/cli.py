"""CLI verb of the io stage: ``anatosynth dataset init`` (onboarding a folder of scans and label maps)."""

from __future__ import annotations

import argparse

from anatosynth.io.onboard import PAIRING_RULES

__all__ = ["register"]


def _init(args) -> int:
    from anatosynth.io.datasets import read_dataset
    from anatosynth.io.onboard import init_dataset

    out, record = init_dataset(args.folder, labels=args.labels, modality=args.modality, overwrite=args.overwrite)
    read_dataset(out)  # what every verb will read: checked now
    names = ", ".join(v for k, v in record["labels"].items() if k != "0")
    print(f"wrote {out}: {record['numTraining']} paired cases ({record['layout']} layout); labels {names} "
          f"({record['label_source']}){'' if args.modality else '; no modality: give --modality CT or MR'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("dataset", help="onboard a dataset: write its dataset.json from the files",
                       description="Datasets for finetune, evaluate, check and bank build.")
    verbs = p.add_subparsers(dest="dataset_verb", metavar="ACTION")
    i = verbs.add_parser("init", help="pair images with label maps and write FOLDER/dataset.json (MSD layout)",
                         description="Pair each image with its label map and write FOLDER/dataset.json (MSD "
                                     "layout), so that finetune, evaluate and check read the folder.",
                         epilog=PAIRING_RULES, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("folder", help="imagesTr/ + labelsTr/ folder, or a flat folder of paired files")
    i.add_argument("--labels", help="labels.json (id→name) naming the label ids (default: FOLDER/labels.json, "
                                    "else label_N for each id present)")
    i.add_argument("--modality", choices=("CT", "MR"), type=str.upper,
                   help="imaging modality written to dataset.json (ct and mr are read as CT and MR)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing dataset.json")
    i.set_defaults(func=_init)
    p.set_defaults(func=lambda args: p.print_help() or 2)
