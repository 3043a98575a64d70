"""CLI of ``anatosynth finetune``: train on real labelled scans, from scratch or from pre-trained weights."""

from __future__ import annotations

from anatosynth.errors import ConfigError
from anatosynth.options import MODELS, THREADS_HELP, add_patch_argument, apply_threads, parse_patch

__all__ = ["register", "parse_pair"]


def parse_pair(text: str) -> tuple[float, float]:
    """``-175,250`` → (-175.0, 250.0)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--window must be LOW,HIGH (two numbers), got {text!r}") from None
    return lo, hi


DEFAULT_MODEL, DEFAULT_WIDTH, DEFAULT_PATCH = "swinunetr", 48, "96"  # without --init metadata

# options that describe what a run trains: fixed once the run exists (--resume refuses to change them)
_TRAINING = ("data", "out", "init", "model", "feature_size", "patch", "steps", "train_cases", "val_cases", "split",
             "labels", "val_every", "val_max_cases", "seed", "spacing", "modality", "window", "lr", "weight_decay",
             "warmup", "pretrained_lr_scale", "freeze_pretrained_steps", "crops",
             "overlap", "sw_batch", "checkpoint_every", "log_every", "overwrite")


def _config(args):
    from anatosynth.io.canonical import parse_spacing
    from anatosynth.train.finetune import FinetuneConfig

    if not args.data or not args.out:
        raise ConfigError("finetune needs --data and --out (or --resume RUN to continue a run)")
    model, feature_size, patch = _network(args)
    return FinetuneConfig(
        data=args.data, out=args.out, init=args.init, model=model, feature_size=feature_size,
        patch=parse_patch(patch, what="--patch"), steps=args.steps, train_cases=args.train_cases,
        val_cases=[c for c in args.val_cases.split(",") if c] if args.val_cases else None, split=args.split,
        labels=args.labels,
        seed=args.seed,
        spacing=parse_spacing(args.spacing), modality=args.modality, window=parse_pair(args.window), lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, pretrained_lr_scale=args.pretrained_lr_scale,
        freeze_pretrained_steps=args.freeze_pretrained_steps, crops=args.crops, val_every=args.val_every,
        val_max_cases=args.val_max_cases, overlap=args.overlap, sw_batch=args.sw_batch,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, device=args.device,
        overwrite=args.overwrite)


def _network(args) -> tuple[str, int, object]:
    """``--model``, ``--feature-size`` and ``--patch``, each taken from the ``--init`` weights' metadata when not
    given (anatosynth runs and releases record their network), else the defaults; a given value that
    contradicts the weights is refused here, before any preprocessing."""
    from anatosynth.train.transfer import init_network

    saved = init_network(args.init) or {}
    if saved.get("name") == "nnunet":
        raise ConfigError(f"--init {args.init} holds weights pre-trained for nnU-Net; fine-tune them with nnU-Net: "
                          "anatosynth release RUN --format nnunet, then nnUNetv2_train ... -pretrained_weights "
                          "OUT/nnunet_pretrained.pth")
    for flag, given, have in (("--model", args.model, saved.get("name")),
                              ("--feature-size", args.feature_size, saved.get("feature_size"))):
        if given is not None and have is not None and given != have:
            raise ConfigError(f"{flag} {given}, but --init {args.init} holds a {saved.get('name')} of feature size "
                              f"{saved.get('feature_size')}; drop {flag} to use the network the weights were made for")
    model = args.model or saved.get("name") or DEFAULT_MODEL
    width = args.feature_size or saved.get("feature_size") or DEFAULT_WIDTH
    patch = args.patch or saved.get("patch") or DEFAULT_PATCH
    if saved and not (args.model and args.feature_size and args.patch):
        shown = "x".join(str(p) for p in patch) if isinstance(patch, (list, tuple)) else patch
        print(f"finetune: network {model} f{width}, patch {shown} (what --init {args.init} was made with, where "
              "not given)")
    return model, int(width), patch


def _resume_config(args, parser):
    """The run's saved config; a training option given on the command line is refused, not ignored."""
    from anatosynth.train.finetune import resume_config

    given = [name for name in _TRAINING if getattr(args, name) != parser.get_default(name)]
    if given:
        raise ConfigError(f"--resume {args.resume} continues the run as it was configured (config.yaml); "
                          f"drop {', '.join('--' + n.replace('_', '-') for n in given)} "
                          f"(only --device, --threads and --quiet may be given)")
    cfg = resume_config(args.resume)
    if args.device != parser.get_default("device"):  # otherwise the device the run was started with
        cfg.device = args.device
    return cfg


def _run(args) -> int:
    from anatosynth.train.finetune import finetune

    cfg = _resume_config(args, args.parser) if args.resume else _config(args)
    apply_threads(args.threads)
    out = finetune(cfg, progress=not args.quiet, resume=bool(args.resume))
    print(f"fine-tuned run written to {out} (model_best.pt = best on validation, model.pt = final; "
          f"evaluate uses model_best.pt and the post-processing in postprocessing.json)")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a network on real labelled scans (from scratch or pre-trained weights)",
        description="Fine-tune a MONAI network on a labelled dataset (MSD, nnU-Net or datalist layout). "
                    "Classes come from the dataset's label names; --init RUN/model.pt transfers weights by "
                    "name and shape (output head re-initialised when the classes differ). The run folder "
                    "holds config.yaml, checkpoint.pt (resume with --resume RUN), model_best.pt (best on "
                    "validation), model.pt (final), postprocessing.json and progress.png.")
    p.add_argument("--data", default=None, help="dataset folder, dataset.json or datalist JSON (required)")
    p.add_argument("--out", default=None, help="run folder to create (required)")
    p.add_argument("--labels", default=None,
                   help="labels.json (id→name) overriding the dataset's label names, as in bank build")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in RUN from its checkpoint.pt, with its saved config.yaml")
    p.add_argument("--init", default="none",
                   help="'none' (from scratch), an anatosynth RUN/model.pt, a released folder (anatosynth release; "
                        "the project ships weights/NAME), or a MONAI/SwinUNETR checkpoint "
                        "(incl. SSL model_swinvit.pt / ssl_pretrained_weights.pth)")
    p.add_argument("--model", default=None, choices=MODELS,
                   help=f"MONAI network (default: the one --init names, else {DEFAULT_MODEL})")
    p.add_argument("--feature-size", type=int, default=None,
                   help=f"network width (default: that of --init, else {DEFAULT_WIDTH})")
    add_patch_argument(p, None, f"training/inference patch (default: that of --init, else {DEFAULT_PATCH})")
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    p.add_argument("--train-cases", type=int, default=None,
                   help="number of training cases drawn by --seed (default: all but ~20%% held out)")
    p.add_argument("--split", default=None, metavar="FILE",
                   help="split file: JSON with 'test', 'validation' and 'pool' lists of case names (default: made "
                        "from the case names, 30%% test, 15%% validation; see docs/method.md 'Splits')")
    p.add_argument("--val-cases", default=None,
                   help="comma-separated case names forming the evaluation set, instead of --split (the earlier "
                        "split: the first --val-max-cases of them also choose the checkpoint)")
    p.add_argument("--val-every", type=int, default=100, help="validate every N steps (default 100)")
    p.add_argument("--val-max-cases", type=int, default=4, help="evaluation cases used for validation (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and crops")
    p.add_argument("--spacing", default="1.5,1.5,2.0", help="target spacing in mm (default 1.5,1.5,2.0)")
    p.add_argument("--modality", default=None, help="CT or MR (default: from dataset.json)")
    p.add_argument("--window", default="-175,250", help="CT window in HU, LOW,HIGH (default -175,250)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of AdamW (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=1e-5, help="AdamW weight decay (default 1e-5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default min(steps/10, 100))")
    p.add_argument("--pretrained-lr-scale", type=float, default=1.0,
                   help="learning-rate multiplier of the tensors transferred from --init (default 1; e.g. 0.1 "
                        "keeps pre-trained features closer to where pre-training left them)")
    p.add_argument("--freeze-pretrained-steps", type=int, default=0, metavar="N",
                   help="train only the tensors not transferred from --init (the new output head) for the first "
                        "N steps, then all (linear probing, then fine-tuning; default 0)")
    p.add_argument("--crops", type=int, default=2, help="crops per step from one case (default 2; BTCV uses 4)")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap for validation (default 0.25)")
    p.add_argument("--sw-batch", type=int, default=1, help="windows per forward pass in validation (default 1)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="steps between resumable checkpoints, checkpoint.pt (default 100)")
    p.add_argument("--log-every", type=int, default=10, help="steps between logged mean losses (default 10)")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--overwrite", action="store_true", help="allow writing into a folder that holds a run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run, parser=p)
