"""CLI of ``anatosynth release``: a finished pre-training run as a small, shippable weights folder."""

from __future__ import annotations

__all__ = ["register"]


def _run(args) -> int:
    import shlex
    import sys

    from anatosynth.train.release import read_card, release

    if args.resumable:
        from anatosynth.train.archive import write_archive

        info = write_archive(args.run, args.out)
        print(f"archived {args.run} at step {info['step']} of {info['steps']} -> {args.out} "
              f"({info['archive_bytes'] / 1e6:.1f} MB; continue with: anatosynth pretrain --resume {args.out} "
              f"--out RUN)")
        return 0
    command = args.command or "anatosynth " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = release(args.run, args.out, command=command, name=args.name, job_key=args.job_key,
                  nnunet=args.format == "nnunet")
    info = read_card(out) or {}
    print(f"released {args.run} -> {out} ({info['weights_bytes'] / 1e6:.1f} MB float16, "
          f"sha256 {info['weights_sha256'][:12]}; model card {out / 'README.md'})")
    if args.format == "nnunet":
        nn = info["nnunet"]
        print(f"for nnU-Net: nnUNetv2_train {nn['dataset_name'] or 'DATASET'} {nn['configuration']} FOLD -p "
              f"{nn['plans_name']} -pretrained_weights {out / nn['weights_file']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "release", help="turn a pre-training run into shippable weights (half precision + model card)",
        description="Write RUN's weights as OUT/model.safetensors (float16) with OUT/metadata.json and a model "
                    "card (OUT/card.json, OUT/README.md). 'anatosynth finetune --init OUT' fine-tunes from it. "
                    "With --format nnunet (a run of 'pretrain --nnunet-plans'), also OUT/nnunet_pretrained.pth "
                    "(float32) for 'nnUNetv2_train -pretrained_weights'. "
                    "With --resumable: an unfinished run as one file that 'pretrain --resume' continues "
                    "bit-exact on another machine.")
    p.add_argument("run", help="pre-training run folder: finished (model.pt, metadata.json), or unfinished with "
                                "--resumable")
    p.add_argument("--out", required=True, help="released-weights folder to write (e.g. weights/NAME); with "
                                                "--resumable, the archive file (e.g. resume/NAME.resume)")
    p.add_argument("--resumable", action="store_true",
                   help="archive an unfinished run instead (checkpoint, optimiser, RNG state, config, log; one "
                        "compact file, replaced by the next archive of the run) for 'pretrain --resume FILE' "
                        "on another machine")
    p.add_argument("--format", choices=("anatosynth", "nnunet"), default="anatosynth",
                   help="nnunet: also write nnunet_pretrained.pth for 'nnUNetv2_train -pretrained_weights' (a run "
                        "of 'pretrain --nnunet-plans')")
    p.add_argument("--name", default=None, help="name on the model card (default: the folder's name)")
    p.add_argument("--command", default=None,
                   help="the pre-training command to record on the card (default: this release command)")
    p.add_argument("--job-key", default=None, help="experiment job key to record on the card (set by 'experiment')")
    p.set_defaults(func=_run)
