"""Pre-training throughput vs the bare model step, both measured in one run.

``pretrain``: the real loop (:func:`anatosynth.train.pretrain.pretrain`: synthesis on the training
device, parameter-drawing workers, DiceCE, AdamW, bf16 autocast on CUDA), timed over its second
``--steps`` steps from its own log (the first ``--steps`` are warm-up).
``bare``: the same network, batch, loss, optimiser and autocast on random tensors already on the device.

Examples::

    # the issue's GPU target (>= 90% of bare): SwinUNETR f48, 96^3, batch 4
    python benchmarks/bench_pretrain.py --device cuda --steps 30
    # the demo configuration on the CPU
    python benchmarks/bench_pretrain.py --device cpu --feature-size 12 --patch 64 64 32 --batch 1 --steps 5
    # channels-last against contiguous weights on the CPU (the bare step only, rounds alternating)
    python benchmarks/bench_pretrain.py --device cpu --model unet --feature-size 12 --patch 96 96 32 \
        --batch 2 --classes 5 --steps 3 --compare-layouts 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_steps_per_s(spec, batch: int, steps: int, device: torch.device, amp: bool, lr: float = 1e-4,
                     placed: bool = True) -> float:
    """Steps/s of the model alone: random image and labels resident on the device. ``placed``: the
    training layout of :func:`~anatosynth.train.models.place_model` (channels-last on the CPU), else
    contiguous weights."""
    from monai.losses import DiceCELoss

    from anatosynth.train.models import build_model, place_model

    torch.manual_seed(0)
    model = place_model(build_model(spec), device) if placed else build_model(spec).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    image = torch.rand(batch, 1, *spec.patch, device=device)
    label = torch.randint(0, spec.out_channels, (batch, 1, *spec.patch), device=device)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(image)
        loss = loss_fn(logits.float(), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(steps):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - t0)


def pretrain_steps_per_s(args, out: Path) -> tuple[float, int]:
    """Steps/s of the real loop over steps ``steps+1 .. 2*steps`` (from its log history)."""
    from anatosynth.train.checkpoint import read_checkpoint
    from anatosynth.train.config import PretrainConfig
    from anatosynth.train.pretrain import pretrain

    cfg = PretrainConfig.from_dict(dict(
        bank=args.bank, mode=args.mode, render=args.render, model=args.model, feature_size=args.feature_size,
        patch=list(args.patch), batch=args.batch, steps=2 * args.steps, log_every=args.steps,
        checkpoint_every=10 ** 9, image_every=0, device=args.device, threads=args.threads,
        workers=args.workers, out=str(out)), "benchmark")
    result = pretrain(cfg, echo=False)
    history = read_checkpoint(out / "checkpoint.pt")["history"]
    return float(history[-1, 3]), len(result.class_names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="swinunetr")
    p.add_argument("--feature-size", type=int, default=48)
    p.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="warm-up steps, then as many timed steps")
    p.add_argument("--bank", default="builtin:phantom")
    p.add_argument("--mode", default="anatomy")
    p.add_argument("--render", default="shell")
    p.add_argument("--workers", type=int, default=None, help="draw workers (default: the loop's automatic choice)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--compare-layouts", type=int, default=0, metavar="ROUNDS",
                   help="only the bare step, placed (channels-last on the CPU) and contiguous, ROUNDS times each "
                        "in turn; needs --classes")
    p.add_argument("--classes", type=int, default=None, help="output classes of the bare step (--compare-layouts)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from anatosynth.train.models import ModelSpec

    device = torch.device(args.device)
    if args.compare_layouts:
        if not args.classes:
            p.error("--compare-layouts needs --classes")
        return _compare_layouts(args, ModelSpec(args.model, 1, args.classes, args.feature_size, tuple(args.patch)),
                                device, argv)
    with tempfile.TemporaryDirectory() as tmp:
        loop, classes = pretrain_steps_per_s(args, Path(tmp) / "run")
    spec = ModelSpec(args.model, 1, classes, args.feature_size, tuple(args.patch))
    amp = device.type == "cuda" and not args.no_amp
    bare = bare_steps_per_s(spec, args.batch, args.steps, device, amp)
    res = {
        "config": f"{args.model} f{args.feature_size} patch {'x'.join(map(str, args.patch))} batch {args.batch}, "
                  f"{args.mode}/{args.render}, {classes} classes, {'bf16 autocast' if amp else 'fp32'}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} torch threads",
        "pretrain_steps_per_s": round(loop, 4),
        "bare_steps_per_s": round(bare, 4),
        "pretrain_patches_per_s": round(loop * args.batch, 3),
        "ratio": round(loop / bare, 3),
        "timed_steps": args.steps,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _compare_layouts(args, spec, device: torch.device, argv) -> int:
    amp = device.type == "cuda" and not args.no_amp
    runs: dict[str, list[float]] = {"placed": [], "contiguous": []}
    for _ in range(args.compare_layouts):
        for name in runs:
            runs[name].append(bare_steps_per_s(spec, args.batch, args.steps, device, amp, placed=name == "placed"))
    mean = {k: sum(v) / len(v) for k, v in runs.items()}
    res = {"config": f"{args.model} f{args.feature_size} patch {'x'.join(map(str, args.patch))} batch {args.batch}, "
                     f"{args.classes} classes, {'bf16 autocast' if amp else 'fp32'}",
           "device": torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"CPU, {torch.get_num_threads()} torch threads",
           **{f"{k}_steps_per_s": [round(x, 4) for x in v] for k, v in runs.items()},
           "speed_up": round(mean["placed"] / mean["contiguous"], 3),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d", time.gmtime()),
           "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
