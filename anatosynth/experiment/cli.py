"""CLI verbs of the experiment stage: ``anatosynth experiment`` and ``anatosynth demo``."""

from __future__ import annotations

from anatosynth.errors import AnatosynthError
from anatosynth.experiment import demo


def _not_yet(args):
    raise AnatosynthError(f"'{args.verb}' is not implemented yet")


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run a protocol: arms x seeds x labelled-set sizes")
    p.set_defaults(func=_not_yet)
    demo.register(sub)
