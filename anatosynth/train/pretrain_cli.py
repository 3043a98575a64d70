"""CLI of ``anatosynth pretrain``: flags over an optional YAML config, or ``--resume RUN``.

Examples::

    anatosynth pretrain --bank bank.npz --mode anatomy --render shell --model swinunetr \\
        --feature-size 48 --patch 96 --batch 4 --steps 50000 --out runs/swin48
    anatosynth pretrain --config run.yaml --steps 1000     # flags override the file
    anatosynth pretrain --resume runs/swin48               # after a crash or kill -9
    anatosynth release runs/swin48 --resumable --out resume/swin48.resume   # before a machine change ...
    anatosynth pretrain --resume resume/swin48.resume --out runs/swin48     # ... continued on the next one
    torchrun --nproc_per_node 4 -m anatosynth pretrain --config run.yaml
    anatosynth pretrain --bank bank.npz --nnunet-plans nnUNet_preprocessed/Dataset501_X/nnUNetPlans.json \
        --configuration 3d_fullres --steps 2000 --out runs/nnunet   # the network nnU-Net will build
"""

from __future__ import annotations

import argparse

from anatosynth.options import MODELS, RENDERS, SYNTH_MODES, THREADS_HELP, add_patch_argument

__all__ = ["register", "overrides_from_args"]

# flag dest -> config key (all flags default to None = "not given")
_KEYS = ("bank", "mode", "render", "model", "feature_size", "patch", "batch", "steps", "samples", "lr",
         "weight_decay", "warmup", "seed", "minutes", "checkpoint_every", "log_every", "image_every",
         "device", "threads", "workers", "out")


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The options given on the command line (None for those left out)."""
    over = {k: getattr(args, k, None) for k in _KEYS}
    if getattr(args, "amp", None) is not None:
        over["amp"] = args.amp
    if getattr(args, "deterministic", False):
        over["deterministic"] = True
    if getattr(args, "trace_indices", False):
        over["trace_indices"] = True
    synth = {}
    if getattr(args, "no_anchors", False):
        synth["anchors"] = False
    if getattr(args, "no_graph", False):
        synth["graph"] = False
    over["synth"] = synth or None
    patch = over.get("patch")
    if patch is not None:
        over["patch"] = list(patch)
    if getattr(args, "nnunet_plans", None):
        over.update(_nnunet_overrides(args, over))
    elif getattr(args, "configuration", None):
        from anatosynth.errors import ConfigError

        raise ConfigError("--configuration names a configuration of --nnunet-plans; give the plans file too")
    return over


def _nnunet_overrides(args: argparse.Namespace, over: dict) -> dict:
    """``--nnunet-plans``/``--configuration``: the plans configuration, model ``nnunet`` and the stream's patch."""
    from anatosynth.errors import ConfigError
    from anatosynth.io.nnunet import read_plans
    from anatosynth.train.nnunet import check_plan, synth_patch

    for flag, key in (("--model", "model"), ("--feature-size", "feature_size"), ("--patch", "patch")):
        if over.get(key) is not None:
            raise ConfigError(f"{flag} and --nnunet-plans exclude each other: the plans choose the network and patch")
    plan = read_plans(args.nnunet_plans, args.configuration or "3d_fullres")
    check_plan(plan, str(args.nnunet_plans))
    return {"model": "nnunet", "feature_size": None, "patch": list(synth_patch(plan)), "nnunet": plan.to_dict()}


def _archived_out(archive: str) -> str:
    """The run folder an archive's config names (where the run was when it was archived)."""
    import zipfile

    import yaml

    from anatosynth.train.archive import read_archive

    read_archive(archive)
    with zipfile.ZipFile(archive) as z:
        out = (yaml.safe_load(z.read("config.yaml")) or {}).get("out")
    if not out:
        from anatosynth.errors import ConfigError

        raise ConfigError(f"{archive}: the archived config names no run folder; give --out RUN")
    return str(out)


def _run(args: argparse.Namespace) -> int:
    from anatosynth.train.archive import is_archive, unpack_archive
    from anatosynth.train.config import resolve_config
    from anatosynth.train.pretrain import pretrain, resume_config

    over = overrides_from_args(args)
    if args.resume:
        if args.config:
            from anatosynth.errors import ConfigError

            raise ConfigError("--resume takes the run's saved config.yaml; do not give --config with it")
        run = args.resume
        if is_archive(args.resume):  # a resumable archive: unpacked into --out (default: the run's own folder)
            run = args.out or _archived_out(args.resume)
            manifest = unpack_archive(args.resume, run)
            print(f"unpacked {args.resume} (step {manifest['step']} of {manifest['steps']}) into {run}")
            over["out"] = None
        cfg = resume_config(run, over)
        result = pretrain(cfg, resume=True)
    else:
        cfg = resolve_config(args.config, over)
        result = pretrain(cfg)
    print(f"pre-trained to step {result.step} ({result.steps_per_s:.3f} steps/s, last loss {result.last_loss:.4f})")
    print(f"weights:  {result.out / 'model.pt'}")
    print(f"curves:   {result.out / 'progress.png'}  (tensorboard --logdir {result.out / 'tensorboard'})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train a network on the synthetic stream",
                       description="Supervised pre-training on synthetic, anatomy-placed patches. "
                                   "Options come from defaults, then --config YAML, then flags.")
    p.add_argument("--config", help="YAML file of options (same names as the flags, with underscores)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint, or "
                                                   "from a resumable archive file ('release --resumable'), "
                                                   "unpacked into --out (default: the folder it was archived from)")
    p.add_argument("--out", help="run folder (default runs/pretrain)")
    g = p.add_argument_group("data")
    g.add_argument("--bank", help="shape bank path or builtin:phantom (default builtin:phantom)")
    g.add_argument("--mode", choices=SYNTH_MODES, help="(default anatomy)")
    g.add_argument("--render", choices=RENDERS, help="(default shell)")
    add_patch_argument(g, None, "synthetic patch size (default 96)")
    g.add_argument("--samples", type=int, help="train on a fixed pool of N samples instead of the endless stream")
    g.add_argument("--no-anchors", action="store_true", help="ablation: place organs without spatial anchors")
    g.add_argument("--no-graph", action="store_true", help="ablation: ignore the topological graph")
    g.add_argument("--seed", type=int, help="seeds the network and the synthetic stream (default 0)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--model", choices=MODELS, help="(default swinunetr)")
    g.add_argument("--feature-size", type=int, dest="feature_size", help="network width (default 48)")
    g.add_argument("--nnunet-plans", dest="nnunet_plans", metavar="PLANS",
                   help="pre-train the network nnU-Net v2 builds from this plans file (nnUNetPlans.json): its "
                        "architecture, patch, axis order and intensity normalisation (needs 'make nnunet'); the "
                        "plans choose network and patch, so --model, --feature-size and --patch are refused with "
                        "it; --batch stays this pre-training's own")
    g.add_argument("--configuration", help="with --nnunet-plans: the plans configuration (default 3d_fullres)")
    g.add_argument("--batch", type=int, help="patches per step and per process (default 4)")
    g.add_argument("--steps", type=int, help="optimiser steps to reach (default 1000)")
    g.add_argument("--minutes", type=float, help="stop after this many minutes (checkpoint and model.pt written)")
    g.add_argument("--lr", type=float, help="peak learning rate of AdamW (default 0.0001)")
    g.add_argument("--weight-decay", type=float, dest="weight_decay", help="AdamW weight decay (default 1e-05)")
    g.add_argument("--warmup", type=int, help="warm-up steps (default 5%% of steps, at most 500)")
    g.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="no bf16 autocast on CUDA")
    g = p.add_argument_group("run")
    g.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, help=f"{THREADS_HELP}; --threads 1 makes model.pt bit-identical")
    g.add_argument("--workers", type=int, help="processes drawing sample parameters ahead (default: 0 on CPU, "
                                               "up to 4 per GPU)")
    g.add_argument("--checkpoint-every", type=int, dest="checkpoint_every",
                   help="steps between checkpoints (default 200; Ctrl-C or SIGTERM also saves one at the next step)")
    g.add_argument("--log-every", type=int, dest="log_every", help="steps between log lines (default 10)")
    g.add_argument("--image-every", type=int, dest="image_every",
                   help="steps between TensorBoard slices, 0: never (default 200)")
    g.add_argument("--deterministic", action="store_true", help="deterministic torch algorithms")
    g.add_argument("--trace-indices", action="store_true", dest="trace_indices", help=argparse.SUPPRESS)
    p.set_defaults(func=_run)
