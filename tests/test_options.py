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


def test_help_does_not_import_torch():
    """`anatosynth --help` stays fast: no verb imports torch or MONAI until it runs."""
    code = ("import sys, anatosynth.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _actions(parser, path):
    """The argparse actions of the sub-command ``path`` (e.g. ``["synth", "bench"]``), by option name."""
    import argparse

    for word in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_verb_takes_its_choices_from_options():
    """Modes, renders, networks and post-processing choices are the tables themselves, not copies."""
    from anatosynth.cli import build_parser
    from anatosynth.options import MODELS, RENDERS, SYNTH_MODES
    from anatosynth.transforms.postprocess import POSTPROCESS_MODES

    parser = build_parser()
    verbs = [["synth", "preview"], ["synth", "export"], ["synth", "bench"], ["pretrain"]]
    for verb in verbs:
        actions = _actions(parser, verb)
        assert actions["--mode"].choices is SYNTH_MODES and actions["--render"].choices is RENDERS, verb
    assert _actions(parser, ["pretrain"])["--model"].choices is MODELS
    assert _actions(parser, ["finetune"])["--model"].choices is MODELS
    assert _actions(parser, ["evaluate"])["--postprocess"].choices is POSTPROCESS_MODES


def test_the_stages_check_against_the_same_tables():
    """What the CLIs offer is what the configs accept: every choice passes, anything else is refused."""
    from anatosynth.options import MODELS, RENDERS, SYNTH_MODES
    from anatosynth.synth.config import SynthConfig
    from anatosynth.train.models import ModelSpec, build_model

    for mode in SYNTH_MODES:
        for render in RENDERS:
            assert SynthConfig(mode=mode, render=render).render == render
    for bad in ({"mode": "Anatomy"}, {"render": "shell+texture"}):
        with pytest.raises(ConfigError):
            SynthConfig(**bad)
    for name in MODELS:
        assert type(build_model(ModelSpec(name, out_channels=2, feature_size=12, patch=(64, 64, 64)))).__name__
    with pytest.raises(ConfigError, match="unknown model"):
        build_model(ModelSpec("vnet"))


@pytest.mark.parametrize("spelling", [["64,64,32"], ["64x64x32"], ["64", "64", "32"], ["64X64X32"]])
def test_every_verb_reads_every_spelling_of_patch(spelling):
    """One ``--patch`` argument (options.add_patch_argument) in synth, pretrain and finetune."""
    from anatosynth.cli import build_parser
    from anatosynth.synth.config import check_patch
    from anatosynth.train.pretrain_cli import overrides_from_args

    parser = build_parser()
    for verb in (["synth", "preview", "--out", "x.png"], ["synth", "export", "--out", "x"], ["synth", "bench"]):
        assert check_patch(parser.parse_args([*verb, "--patch", *spelling]).patch) == (64, 64, 32)
    args = parser.parse_args(["pretrain", "--patch", *spelling])
    assert parse_patch(overrides_from_args(args)["patch"]) == (64, 64, 32)
    args = parser.parse_args(["finetune", "--data", "d", "--out", "o", "--patch", *spelling])
    assert parse_patch(args.patch) == (64, 64, 32)


@pytest.mark.parametrize("cores,load,expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 1.3, 1), (2, 3.7, 1), (16, 4.2, 12), (1, 0.0, 1), (4, -1.0, 4)])
def test_free_threads(cores, load, expected):
    """Threads = cores not kept busy by other work (1-min load), at least 1: 2 cores, one busy -> 1."""
    from anatosynth.options import free_threads

    assert free_threads(cores, load) == expected


def test_default_threads_follows_omp_num_threads_then_the_free_cores(monkeypatch):
    import os

    from anatosynth.options import default_threads, free_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_threads() == free_threads(2, 1.0) == 1


def test_help_shows_the_defaults_of_pretrain():
    """`pretrain --help` shows each default, and it is the one PretrainConfig uses."""
    import re

    from anatosynth.cli import build_parser
    from anatosynth.train.config import PretrainConfig

    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices["pretrain"]
    shown = {a.dest: re.search(r"\(default ([^);]+)[);]", a.help or "") for a in sub._actions}
    defaults = PretrainConfig()
    for dest in ("checkpoint_every", "log_every", "image_every", "steps", "batch", "feature_size", "model", "mode",
                 "render", "seed", "lr", "weight_decay", "bank", "out"):
        assert shown[dest], f"--{dest} does not show its default"
        assert shown[dest].group(1) == str(getattr(defaults, dest)), dest
    assert shown["patch"].group(1) == str(defaults.patch[0]) and len(set(defaults.patch)) == 1


def test_resolve_device_auto_and_bad_names():
    """One ``resolve_device`` for every verb: auto → the GPU when there is one; bad names are one-line errors."""
    import torch

    from anatosynth.options import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    for bad, message in (("tpu", "unknown device"), ("meta", "unsupported device")):
        with pytest.raises(ConfigError, match=message):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_progress_bars_stay_out_of_log_files():
    """A bar is shown on a terminal only: redirected to a file (nohup ... > log) it writes nothing."""
    import io

    from tqdm import tqdm

    from anatosynth.options import bar_disable

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, written in ((io.StringIO(), False), (Terminal(), True)):
        for _ in tqdm(range(3), file=stream, disable=bar_disable(True)):
            pass
        assert bool(stream.getvalue()) == written
    quiet = Terminal()
    for _ in tqdm(range(3), file=quiet, disable=bar_disable(False)):
        pass
    assert quiet.getvalue() == ""
