"""CLI verbs of the synthesis stage: ``anatosynth synth preview|export|bench``."""

from __future__ import annotations

from anatosynth.errors import AnatosynthError


def _not_yet(args):
    raise AnatosynthError(f"'{args.verb}' is not implemented yet")


def register(sub) -> None:
    p = sub.add_parser("synth", help="preview, export and benchmark synthetic patches")
    p.set_defaults(func=_not_yet)
