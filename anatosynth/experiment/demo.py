"""``anatosynth demo``: the main job, offline, in a few minutes on a laptop CPU.

1. Build or load the shape bank (``builtin:phantom`` unless ``--bank`` names one).
2. Write a preview PNG of synthetic patches (orthogonal slices with label overlays).
3. Pre-train a small SwinUNETR (feature 12, 64x64x32 patches, batch 1) on the synthetic stream on the CPU,
   for at most ``--minutes`` minutes.
4. Print where the preview, the curves and the weights are.

Running it again continues the same run folder (``--resume``) instead of failing or overwriting it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["register", "run_demo", "DEMO_DEFAULTS"]

# the demo's pre-training run: small enough for ~4 minutes on 2 CPU cores (see docs/method.md, "Pre-training");
# one worker process draws the next samples' placements while the current step trains
DEMO_DEFAULTS = dict(mode="anatomy", render="shell", model="swinunetr", feature_size=12, patch=[64, 64, 32],
                     batch=1, steps=200, lr=2e-4, warmup=10, checkpoint_every=25, log_every=5, image_every=25,
                     device="cpu", seed=0, workers=1)


def _write_preview(bank, cfg, path: Path, n: int = 3) -> Path:
    """The synthesis stage's preview of the first ``n`` training samples (the ones step 1.. will see)."""
    from anatosynth.synth.preview import save_preview
    from anatosynth.train.pretrain import build_stream

    stream, _ = build_stream(cfg, bank)
    batch = stream.batch(list(range(n)), "cpu")
    title = f"{cfg.mode} / {cfg.render}, {'x'.join(map(str, cfg.patch))} patches, seed {cfg.seed}"
    return save_preview(batch.image[:, 0].numpy(), batch.label.numpy(), stream.class_names, stream.spacing,
                        path, title=title)


def run_demo(out: str | Path = "demo_run", bank: str | None = None, minutes: float = 4.0,
             steps: int | None = None, threads: int | None = None, echo: bool | None = None) -> dict:
    """Bank → preview → short CPU pre-training; returns the paths it wrote.

    Args:
        out: demo folder (``preview.png`` and the run folder ``pretrain/`` go inside).
        bank: shape bank path; ``None`` builds the procedural ``builtin:phantom``.
        minutes: wall-clock cap on the pre-training.
        steps: optimiser steps to reach (default 200; the time cap usually ends the run first on slow CPUs).
        threads: torch CPU threads (default: the cores not busy with other work, see
            :func:`anatosynth.options.default_threads`).
    """
    from anatosynth.bank import load_bank
    from anatosynth.io.volume import check_output_dir, ensure_writable_dir
    from anatosynth.train.config import PretrainConfig
    from anatosynth.train.pretrain import RunPaths, pretrain, resume_config

    out = check_output_dir(out)
    source = bank or "builtin:phantom"
    t0 = time.perf_counter()
    print(f"[1/3] shape bank: {source}", flush=True)
    shape_bank = load_bank(source)
    print(f"      {len(shape_bank.organs)} organs from {len(shape_bank.subjects)} subjects "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    ensure_writable_dir(out)
    run_dir = out / "pretrain"
    over = {"steps": steps, "minutes": float(minutes), "threads": threads, "out": str(run_dir)}
    if RunPaths(run_dir).checkpoint.is_file():
        cfg = resume_config(run_dir, over)
        if cfg.bank != source:
            from anatosynth.errors import ConfigError

            raise ConfigError(f"{run_dir} was pre-trained on {cfg.bank}, not {source}; choose another --out")
        resume = True
    else:
        d = dict(DEMO_DEFAULTS, bank=source, **{k: v for k, v in over.items() if v is not None})
        cfg = PretrainConfig.from_dict(d, "demo")
        resume = False
    preview = out / "preview.png"
    _write_preview(shape_bank, cfg, preview)
    print(f"[2/3] preview of synthetic patches: {preview}", flush=True)
    from anatosynth.options import default_threads

    print(f"[3/3] pre-training {cfg.model} f{cfg.feature_size} on {'x'.join(map(str, cfg.patch))} patches, "
          f"batch {cfg.batch}, up to {cfg.steps} steps or {cfg.minutes:g} min on "
          f"{cfg.threads or default_threads()} CPU thread(s)"
          + (" (continuing the earlier run)" if resume else ""), flush=True)
    result = pretrain(cfg, resume=resume, bank=shape_bank, echo=echo)
    paths = RunPaths(run_dir)
    files = {"preview": preview, "curves": paths.progress, "tensorboard": paths.tensorboard,
             "weights": paths.model, "metadata": paths.metadata, "log": paths.log}
    print(f"\ndone in {(time.perf_counter() - t0) / 60:.1f} min: step {result.step}, "
          f"{result.steps_per_s:.2f} steps/s, last loss {result.last_loss:.3f}")
    print(f"  preview:     {preview}")
    print(f"  curves:      {paths.progress}  (tensorboard --logdir {paths.tensorboard})")
    print(f"  weights:     {paths.model}  (loads into monai SwinUNETR(in_channels=1, "
          f"out_channels={len(result.class_names)}, feature_size={cfg.feature_size}), strict)")
    print(f"  metadata:    {paths.metadata}")
    print(f"  continue it: {_command()} pretrain --resume {run_dir} --steps {cfg.steps * 2}")
    return {k: Path(v) for k, v in files.items()}


def _command() -> str:
    """How to call anatosynth again without an activated venv: the script beside this Python, if there."""
    import shutil
    import sys

    script = Path(sys.executable).with_name("anatosynth")
    if shutil.which("anatosynth") == str(script) or not script.exists():
        return "anatosynth" if shutil.which("anatosynth") else f"{sys.executable} -m anatosynth"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _run(args: argparse.Namespace) -> int:
    run_demo(out=args.out, bank=args.bank, minutes=args.minutes, steps=args.steps, threads=args.threads)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job, offline: bank, preview, short pre-training",
                       description="Build or load a shape bank, preview synthetic patches and pre-train a "
                                   "small SwinUNETR on the CPU for a few minutes.")
    p.add_argument("--out", default="demo_run", help="demo folder (default demo_run)")
    p.add_argument("--bank", help="shape bank file (default: the procedural builtin:phantom)")
    p.add_argument("--minutes", type=float, default=4.0, help="cap on pre-training time (default 4)")
    p.add_argument("--steps", type=int, help="optimiser steps (default 200)")
    from anatosynth.options import THREADS_HELP

    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.set_defaults(func=_run)
