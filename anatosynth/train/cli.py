"""CLI verbs of the training stage: ``anatosynth pretrain``, ``finetune`` and ``release``."""

from __future__ import annotations

from anatosynth.train import finetune_cli, pretrain_cli, release_cli


def register(sub) -> None:
    pretrain_cli.register(sub)
    finetune_cli.register(sub)
    release_cli.register(sub)
