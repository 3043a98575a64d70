"""CLI verbs of the experiment stage: ``anatosynth experiment`` and ``anatosynth demo``."""

from __future__ import annotations

from anatosynth.experiment import demo
from anatosynth.options import counted


def run_experiment(args) -> int:
    from pathlib import Path

    from anatosynth.errors import ConfigError
    from anatosynth.experiment.protocol import expand, load_protocol, subset
    from anatosynth.experiment.runner import run_protocol, write_reports

    raw = load_protocol(args.protocol)
    protocol = expand(raw, str(args.protocol))
    if args.arms or args.seeds or args.datasets:
        seeds = _names(args.seeds)
        if seeds and not all(s.lstrip("-").isdigit() for s in seeds):
            raise ConfigError(f"--seeds: expected whole numbers separated by commas, got {args.seeds!r}")
        protocol = subset(protocol, _names(args.arms), [int(s) for s in seeds] if seeds else None, str(args.protocol),
                          _names(args.datasets))
    out = Path(args.out)
    if args.save_resumable:
        from anatosynth.experiment.runner import Runner

        said = Runner(out, protocol).save_resumable()
        print("\n".join(said) if said else f"no unfinished pre-training with a checkpoint under {out}")
        return 0
    _sigterm_stops()
    print(f"protocol {protocol.name}: {counted(len(protocol.banks), 'bank')}, "
          f"{counted(len(protocol.pretrains), 'pre-training run')}, "
          f"{counted(len(protocol.finetunes), 'fine-tune+evaluate run')} -> {out}")
    rows = run_protocol(protocol, out, dry_run=args.dry_run, progress=not args.quiet, threads=args.threads,
                        jobs=args.jobs, report_only=args.report_only)
    if args.dry_run:
        print("dry run: nothing was run or written")
        return 0
    if not rows:
        print("no finished fine-tune runs to report yet")
        return 0
    paths = write_reports(rows, out, protocol)
    print(paths["table"].read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _sigterm_stops() -> None:
    """SIGTERM (a scheduler, the end of a session) stops the grid as Ctrl-C does: the running jobs are told
    to checkpoint and stop, and the same command later continues them."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run a protocol: arms x seeds x labelled-set sizes, with tables and plots")
    p.add_argument("protocol", help="protocol YAML (see protocols/)")
    p.add_argument("--out", required=True, help="experiment folder; re-running reuses finished jobs")
    p.add_argument("--dry-run", action="store_true", help="only list the commands the protocol would run")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per job (OMP_NUM_THREADS; default: the cores not busy with other work, "
                        "shared among --jobs)")
    p.add_argument("--jobs", type=int, default=1,
                   help="fine-tune+evaluate runs at a time (default 1); on 2 cores: --jobs 2 --threads 1")
    p.add_argument("--arms", default=None,
                   help="run only these arms, comma-separated (a pilot; its jobs are the full grid's own)")
    p.add_argument("--seeds", default=None, help="run only these seeds, comma-separated, e.g. 0")
    p.add_argument("--datasets", default=None,
                   help="run only these settings, comma-separated: a dataset name, or NAME:CASES for one "
                        "labelled-set size (e.g. chaos-t2:4)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: tables and plots from the jobs finished so far (a result kept in the "
                        "protocol's results: folder before test Dice existed gains it from its run folder under "
                        "--out, if that is there)")
    p.add_argument("--save-resumable", action="store_true",
                   help="run nothing: archive each unfinished pre-training (checkpoint, optimiser, RNG, log) into "
                        "the protocol's resume: folder, to commit before a session ends; a later run on a new "
                        "machine continues from it bit-exact")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_experiment)
    demo.register(sub)
