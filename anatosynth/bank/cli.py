"""CLI verbs of the bank stage: ``anatosynth bank build|merge|inspect|audit``."""

from __future__ import annotations

from anatosynth.errors import AnatosynthError


def _not_yet(args):
    raise AnatosynthError(f"'{args.verb}' is not implemented yet")


def register(sub) -> None:
    p = sub.add_parser("bank", help="build, merge, inspect and audit shape banks")
    p.set_defaults(func=_not_yet)
