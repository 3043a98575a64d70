"""CLI of ``anatosynth pretrain``."""

from __future__ import annotations

from anatosynth.errors import AnatosynthError


def _not_yet(args):
    raise AnatosynthError(f"'{args.verb}' is not implemented yet")


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a network")
    p.set_defaults(func=_not_yet)
