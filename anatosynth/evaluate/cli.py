"""CLI verb of the evaluation stage: ``anatosynth evaluate``."""

from __future__ import annotations

from anatosynth.errors import AnatosynthError


def _not_yet(args):
    raise AnatosynthError(f"'{args.verb}' is not implemented yet")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="sliding-window inference and Dice/HD95 reports")
    p.set_defaults(func=_not_yet)
