"""CLI verbs of the training stage: ``anatosynth pretrain`` and ``anatosynth finetune``."""

from __future__ import annotations

from anatosynth.errors import AnatosynthError


def _not_yet(args):
    raise AnatosynthError(f"'{args.verb}' is not implemented yet")


def register(sub) -> None:
    for verb, text in [("pretrain", "pre-train a network on the synthetic stream"),
                       ("finetune", "fine-tune a (pre-trained) network on a real dataset")]:
        p = sub.add_parser(verb, help=text)
        p.set_defaults(func=_not_yet)
