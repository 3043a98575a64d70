"""CLI verbs of the io stage: ``anatosynth dataset init`` (onboarding a folder of scans and label maps) and
``anatosynth dataset nnunet`` (writing a dataset as nnU-Net v2 raw data)."""

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


def _nnunet(args) -> int:
    from anatosynth.io.datasets import read_dataset
    from anatosynth.io.nnunet import export_nnunet_raw
    from anatosynth.io.splits import load_split

    dataset = read_dataset(args.data, labels=args.labels).require_images("dataset nnunet")
    split = load_split(args.split, [c.name for c in dataset.cases]) if args.split else None
    folder = export_nnunet_raw(dataset, args.out, args.id, args.name, split, progress=not args.quiet)
    n_test = len(split.test) if split is not None else 0
    print(f"wrote {folder}: {len(dataset.cases) - n_test} training case(s) in imagesTr"
          + (f", {n_test} test case(s) in imagesTs" if n_test else "")
          + f"; next: nnUNetv2_plan_and_preprocess -d {args.id} -c 3d_fullres (with nnUNet_raw={args.out})")
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
    n = verbs.add_parser("nnunet", help="write a dataset as nnU-Net v2 raw data (DatasetXXX_Name)",
                         description="Write a dataset as nnU-Net v2 raw data: OUT/DatasetXXX_Name with imagesTr "
                                     "({case}_0000.nii.gz, float32), labelsTr (unsigned integers) and dataset.json. "
                                     "With --split, the split's test cases go to imagesTs/labelsTs.")
    n.add_argument("data", help="dataset folder (MSD or nnU-Net layout) or dataset.json")
    n.add_argument("--out", required=True, help="the nnUNet_raw folder to write into")
    n.add_argument("--id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    n.add_argument("--name", help="dataset name after the id (default: the dataset's own, letters and digits)")
    n.add_argument("--split", help="split file (test/validation/pool): test cases go to imagesTs, never trained on")
    n.add_argument("--labels", help="labels.json (id→name) overriding the dataset's label names")
    n.add_argument("--quiet", action="store_true", help="no progress bar")
    n.set_defaults(func=_nnunet)
    p.set_defaults(func=lambda args: p.print_help() or 2)
