"""CLI verb of the evaluation stage: ``anatosynth evaluate``."""

from __future__ import annotations

from anatosynth.options import THREADS_HELP, counted
from anatosynth.transforms.postprocess import POSTPROCESS_MODES

__all__ = ["register"]


def _run(args) -> int:
    from anatosynth.evaluate.evaluate import evaluate
    from anatosynth.options import apply_threads

    apply_threads(args.threads)
    cases = [c for c in args.cases.split(",") if c] if args.cases else None
    summary = evaluate(args.data, args.model, args.out, cases=cases, overlap=args.overlap, sw_batch=args.sw_batch,
                       save_predictions=not args.no_predictions, progress=not args.quiet,
                       device=args.device, postprocess=args.postprocess, overwrite=args.overwrite,
                       labels=args.labels)
    mean = summary.get("mean_dice")
    print(f"evaluated {counted(summary['n_cases'], 'case')} ({summary['cases_from']}); mean Dice "
          f"{'n/a' if mean is None else f'{100 * mean:.1f} %'}; reports in {args.out} (summary.md, summary.json "
          "with Dice in [0, 1], per_case.csv)")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="sliding-window inference and Dice/HD95 reports",
        description="Predict a dataset's cases with a fine-tuned run (predictions in each case's original "
                    "geometry and label ids) and report per-class Dice and HD95.")
    p.add_argument("--data", required=True, help="dataset folder, dataset.json or datalist JSON")
    p.add_argument("--labels", default=None,
                   help="labels.json (id→name) overriding the dataset's label names, as in bank build")
    p.add_argument("--model", required=True,
                   help="fine-tuned run folder (its best-on-validation model_best.pt) or a weights file in it "
                        "(RUN/model.pt: the final weights)")
    p.add_argument("--postprocess", default="auto", choices=POSTPROCESS_MODES,
                   help="keep the largest connected component per class: auto (default) where the run's "
                        "postprocessing.json says it helped on validation, none, or largest (every class)")
    p.add_argument("--out", required=True, help="report folder (summary.json, per_case.csv, summary.md, predictions/)")
    p.add_argument("--cases", default=None,
                   help="comma-separated case names (default: the run's evaluation split, else all cases)")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="sliding-window overlap (default 0.25, MONAI's default; the BTCV recipe uses 0.5)")
    p.add_argument("--sw-batch", type=int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--no-predictions", action="store_true", help="do not write prediction NIfTI files")
    p.add_argument("--overwrite", action="store_true",
                   help="clear an existing, non-empty --out first (without it such a folder is refused, so no "
                        "stale prediction sits beside a new summary)")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
