"""CLI verbs of the synthesis stage: ``anatosynth synth preview|export|bench``.

Examples::

    anatosynth synth preview --bank builtin:phantom --mode anatomy --render shell --n 8 --seed 0 --out preview.png
    anatosynth synth export --bank bank.npz --n 500 --out synthetic_ds
    anatosynth synth bench --device cpu --patch 96 --n 32 --json
"""

from __future__ import annotations

import argparse
import json

from anatosynth.errors import ConfigError
from anatosynth.options import RENDERS, SYNTH_MODES, THREADS_HELP, add_patch_argument
from anatosynth.synth.config import check_patch

__all__ = ["register", "stream_from_args"]


def _load_config(path: str | None) -> dict:
    if not path:
        return {}
    from pathlib import Path

    import yaml

    from anatosynth.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(p, "synth config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(p, f"not a readable YAML/JSON file ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise InputError(p, "synth config must be a mapping of SynthConfig fields")
    return data.get("synth", data) if isinstance(data.get("synth"), dict) else data


def stream_from_args(args: argparse.Namespace):
    """The :class:`~anatosynth.synth.SyntheticStream` the options describe (bank loaded, config checked)."""
    from anatosynth.synth import SynthConfig, SyntheticStream

    d = _load_config(getattr(args, "config", None))
    # flags win over the config file, which wins over the defaults (as in pretrain)
    d["mode"] = args.mode or d.get("mode", "anatomy")
    d["render"] = args.render or d.get("render", "shell")
    d["patch"] = check_patch(args.patch) if args.patch is not None else d.get("patch", 96)
    if args.no_anchors:
        d["anchors"] = False
    if args.no_graph:
        d["graph"] = False
    try:
        cfg = SynthConfig.from_dict(d)
    except ConfigError as err:
        if not getattr(args, "config", None):
            raise
        raise ConfigError(f"{args.config}: {err}") from None
    bank = None
    if cfg.mode != "primitives" or args.bank:
        from anatosynth.bank import load_bank

        bank = load_bank(args.bank or "builtin:phantom")
    return SyntheticStream(bank, cfg, seed=args.seed)


def _check_device(device: str, threads: int | None = None) -> str:
    """The checked device (``auto``: the GPU when there is one); applies ``--threads`` (default: the free cores)."""
    from anatosynth.options import apply_threads, resolve_device

    checked = str(resolve_device(device))
    apply_threads(threads)
    return checked


def _preview(args: argparse.Namespace) -> int:
    from anatosynth.synth.preview import save_preview

    if args.n < 1 or args.n > 64:
        raise ConfigError(f"--n {args.n}: preview shows 1 to 64 samples")
    from anatosynth.io.volume import check_output_file

    check_output_file(args.out)
    device = _check_device(args.device, args.threads)
    stream = stream_from_args(args)
    batch = stream.batch(range(args.n), device)
    cfg = stream.config
    title = f"{cfg.mode} / {cfg.render}, seed {stream.seed}, {'x'.join(map(str, cfg.patch))} @ " \
            f"{'x'.join(f'{v:g}' for v in stream.spacing)} mm"
    out = save_preview(batch.image[:, 0].cpu().numpy(), batch.label.cpu().numpy(), stream.class_names,
                       stream.spacing, args.out, title)
    print(f"wrote {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from anatosynth.synth.export import export_dataset

    if args.n < 1:
        raise ConfigError(f"--n {args.n}: export at least one sample")
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch}: must be at least 1")
    from anatosynth.io.volume import check_output_dir

    check_output_dir(args.out)
    device = _check_device(args.device, args.threads)
    stream = stream_from_args(args)
    out = export_dataset(stream, args.n, args.out, device, batch_size=args.batch)
    print(f"wrote {args.n} cases to {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from anatosynth.synth.bench import run_bench

    if args.n < 1:
        raise ConfigError(f"--n {args.n}: benchmark at least one sample")
    if args.workers < 0 or args.render_workers < 0 or args.batch < 1:
        raise ConfigError(f"--workers {args.workers} / --render-workers {args.render_workers} / --batch "
                          f"{args.batch}: need workers >= 0, render workers >= 0 and batch >= 1")
    device = _check_device(args.device, args.threads)
    if args.render_workers and (device != "cpu" or args.workers):
        raise ConfigError("--render-workers renders whole samples in CPU processes: use it with --device cpu "
                          "and without --workers")
    stream = stream_from_args(args)
    result = run_bench(stream, n=args.n, batch=args.batch, device=device, workers=args.workers,
                       render_workers=args.render_workers)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        where = (f"{args.render_workers} render worker process(es)" if args.render_workers else
                 f"draw {result['draw_ms_per_patch']:.1f}, apply {result['apply_ms_per_patch']:.1f}")
        print(f"{result['patches_per_s']:.2f} patches/s ({result['ms_per_patch']:.1f} ms/patch: {where}) on "
              f"{result['device']}; organs placed {result['organs_placed_mean']:.2f}, forbidden overlap voxels "
              f"{result['forbidden_overlap_voxels']}, peak RSS {result['peak_rss_mb']:.0f} MB")
    return 0


def _common(p: argparse.ArgumentParser, n_default: int) -> None:
    p.add_argument("--bank", default=None, help="bank file or builtin:phantom (default; not needed for primitives)")
    p.add_argument("--mode", default=None, choices=SYNTH_MODES, help="default: --config's, else anatomy")
    p.add_argument("--render", default=None, choices=RENDERS, help="default: --config's, else shell")
    add_patch_argument(p, None, "patch size, multiples of 32 (default: --config's, else 96)")
    p.add_argument("--n", type=int, default=n_default, help=f"number of samples (default {n_default})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--no-anchors", action="store_true", help="ablation: ignore spatial anchors")
    p.add_argument("--no-graph", action="store_true", help="ablation: ignore the topological graph")
    p.add_argument("--config", default=None, help="YAML/JSON file of further SynthConfig fields")


def register(sub) -> None:
    p = sub.add_parser("synth", help="preview, export and benchmark synthetic patches")
    verbs = p.add_subparsers(dest="synth_verb", metavar="SYNTH_VERB")
    verbs.required = True

    pv = verbs.add_parser("preview", help="PNG of orthogonal slices with label overlay")
    _common(pv, 8)
    pv.add_argument("--out", required=True, help="output PNG")
    pv.set_defaults(func=_preview)

    pe = verbs.add_parser("export", help="write an MSD/nnU-Net dataset of synthetic patches")
    _common(pe, 100)
    pe.add_argument("--out", required=True, help="new (or empty) output folder")
    pe.add_argument("--batch", type=int, default=4, help="patches made per step")
    pe.set_defaults(func=_export)

    pb = verbs.add_parser("bench", help="patches per second of the in-memory stream")
    _common(pb, 32)
    pb.add_argument("--batch", type=int, default=8, help="batch size")
    pb.add_argument("--workers", type=int, default=0, help="processes drawing parameters (0: main process)")
    pb.add_argument("--render-workers", type=int, default=0,
                    help="CPU processes of one thread each that draw and render whole samples (SyntheticDataset "
                         "with num_workers; the way to several cores; 0: this process applies)")
    pb.add_argument("--json", action="store_true", help="print JSON")
    pb.set_defaults(func=_bench)
