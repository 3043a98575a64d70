"""Shared option parsing: every verb reads a patch size the same way."""

from __future__ import annotations

import subprocess
import sys

import pytest

from anatosynth.errors import ConfigError
from anatosynth.options import parse_patch


@pytest.mark.parametrize("value", [96, "96", [96], "96,96,96", "96x96x96", [96, 96, 96], "96 96 96"])
def test_cube_forms(value):
    assert parse_patch(value) == (96, 96, 96)


@pytest.mark.parametrize("value", ["96,96,32", "96x96x32", ["96", "96", "32"], [96, 96, 32], ("96,96,32",)])
def test_anisotropic_forms(value):
    assert parse_patch(value) == (96, 96, 32)


@pytest.mark.parametrize("value,kwargs,message", [
    ("96,96", {}, "one or three"),
    ("a", {}, "whole numbers"),
    ("4", {}, "at least 8"),
    ("96,96,40", {"multiple": 32}, "multiple of 32"),
    (True, {}, "N or X,Y,Z"),
])
def test_errors(value, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        parse_patch(value, **kwargs)


def test_the_three_verbs_agree():
    from anatosynth.synth.cli import parse_patch as synth_patch
    from anatosynth.train.config import parse_patch as pretrain_patch
    from anatosynth.train.finetune_cli import parse_patch as finetune_patch

    for text in ("96,96,32", "96x96x32"):
        assert synth_patch(text) == pretrain_patch(text) == finetune_patch(text) == (96, 96, 32)


def test_help_does_not_import_torch():
    """`anatosynth --help` stays fast: no verb imports torch or MONAI until it runs."""
    code = ("import sys, anatosynth.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
