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
    ("anatosynth.io.cli", "dataset"),
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


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the verb (and sub-verb) the command line chose: its usage is the one to show."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if not subs or chosen not in subs[0].choices:
            return parser
        parser = subs[0].choices[chosen]


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """``--step`` must not silently mean ``--steps``: abbreviations are refused by every verb."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _no_abbreviations(sub)


def _closest_option(parser: argparse.ArgumentParser, word: str) -> str:
    """``; did you mean --steps?`` for a mistyped option of ``parser`` (or where its options are listed)."""
    import difflib

    options = [o for a in parser._actions for o in a.option_strings]
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6) if word.startswith("-") else []
    return f"; did you mean {close[0]}?" if close else f" ({parser.prog} --help lists its options)"


def _typos_first(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A mistyped verb or option is named (with the closest one) before argparse reports what is missing:
    ``evaluate --modle x`` is about ``--modle``, not about the ``--model`` it then lacks."""
    import difflib

    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and not token.startswith("-"):
            if token not in subs[0].choices:
                close = difflib.get_close_matches(token, list(subs[0].choices), n=1, cutoff=0.6)
                if close:
                    what = str(subs[0].metavar or "verb").lower()
                    parser.error(f"unknown {what} {token!r}; did you mean {close[0]}?")
                return  # argparse's own message lists the choices
            parser = subs[0].choices[token]
            continue
        word = token.split("=", 1)[0]
        if token.startswith("--") and not subs and word not in parser._option_string_actions:
            parser.error(f"unrecognised option {word}{_closest_option(parser, word)}")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown option is reported by the verb's own parser (its usage, not the top-level
    one) with the closest option it has, e.g. ``--stpes``: "did you mean --steps?"."""
    _no_abbreviations(parser)
    _typos_first(parser, sys.argv[1:] if argv is None else list(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:  # what the first pass leaves: stray positional words, single-dash options
        verb = _chosen_parser(parser, args)
        word = extra[0].split("=", 1)[0]
        what = f"option {word}" if word.startswith("-") else \
            f"argument{'s' if len(extra) > 1 else ''} {' '.join(extra)}"
        verb.error(f"unrecognised {what}{_closest_option(verb, word)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    verb = _chosen_parser(parser, args).prog  # e.g. "anatosynth bank build", not just "anatosynth bank"
    try:
        result = args.func(args)
    except AnatosynthError as err:
        print(f"{verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # e.g. `anatosynth check DATA | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    except Interrupted as err:
        print(f"{verb}: {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print(f"{verb}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
