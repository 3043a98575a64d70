"""``anatosynth demo``: the main job, offline (grows as bank, synthesis and pre-training land)."""

from __future__ import annotations

from anatosynth.errors import AnatosynthError


def _not_yet(args):
    raise AnatosynthError(f"'{args.verb}' is not implemented yet")


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job, offline: bank, preview, short pre-training")
    p.add_argument("--out", default="demo_run")
    p.set_defaults(func=_not_yet)
