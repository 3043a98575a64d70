"""Command line: ``anatosynth VERB ...``. A thin layer; each stage registers its own verbs.

Every stage module ``anatosynth/<stage>/cli.py`` has ``register(subparsers)`` that adds its parser(s)
and sets ``func`` to a function taking the parsed arguments. Heavy imports (torch, MONAI) happen
inside those functions so that ``anatosynth --help`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from anatosynth.errors import AnatosynthError, Interrupted
from anatosynth.version import __version__

__all__ = ["main", "build_parser"]

# stage modules, in pipeline order; each registers the verbs named beside it
STAGES = [
    ("anatosynth.bank.cli", "check, bank"),
    ("anatosynth.synth.cli", "synth"),
    ("anatosynth.train.cli", "pretrain, finetune, release"),
    ("anatosynth.evaluate.cli", "evaluate"),
    ("anatosynth.experiment.cli", "experiment, demo"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anatosynth",
        description="Synthetic, anatomy-informed pre-training for 3D medical segmentation.")
    parser.add_argument("--version", action="version", version=f"anatosynth {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for module, _ in STAGES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except AnatosynthError as err:
        print(f"anatosynth {args.verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # e.g. `anatosynth check DATA | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    except Interrupted as err:
        print(f"anatosynth {args.verb}: {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print(f"anatosynth {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
