"""The public Python API: ``import anatosynth`` is cheap, and the README's "Python API" example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLARE = ROOT / ".." / "shared" / "data" / "labels" / "flare22"

# The README example, scaled down so that it runs in the suite: each (text, replacement) must occur in
# the example exactly once, so a README edit that the test no longer fits fails here instead of rotting.
SCALE_DOWN = [("subjects=5", "subjects=2"),      # 2 FLARE label maps in the bank
              ("patch=96", "patch=32"),          # 32^3 patches
              ("length=200", "length=4")]        # 4 patches: 2 optimiser steps of batch 2


def readme_example() -> str:
    """The first ```python block of README.md's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README.md: no python example in the Python API section"
    return blocks[0]


def test_import_is_cheap_and_exports_the_api():
    code = ("import sys, anatosynth; print('torch' in sys.modules); "
            "print(all(callable(getattr(anatosynth, n)) and getattr(anatosynth, n).__doc__ and "
            "'Example' in getattr(anatosynth, n).__doc__ for n in "
            "['load_bank', 'build_bank', 'save_bank', 'SyntheticDataset', 'pretrain', 'finetune', 'evaluate']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_pretrain_takes_keyword_options(tmp_path):
    import anatosynth
    from anatosynth.train.config import PretrainConfig

    result = anatosynth.pretrain(mode="primitives", model="unet", feature_size=4, patch=32, batch=1, steps=1,
                                 warmup=0, device="cpu", threads=1, image_every=0, out=str(tmp_path / "pre"))
    assert result.step == 1 and (result.out / "model.pt").is_file()
    with pytest.raises(TypeError, match="not both"):
        anatosynth.pretrain(PretrainConfig(), steps=3)


@pytest.mark.skipif(not FLARE.is_dir(), reason="needs ../shared/data/labels/flare22")
def test_readme_python_api_example_runs_scaled_down():
    code = readme_example()
    for old, new in SCALE_DOWN:
        assert code.count(old) == 1, f"README Python API example no longer contains {old!r} once"
        code = code.replace(old, new)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    match = re.search(r"(\d+) synthetic patches, last loss ([0-9.]+)", run.stdout)
    assert match and match.group(1) == "4" and 0 < float(match.group(2)) < 10, run.stdout


@pytest.mark.parametrize("call, message", [
    (lambda a: a.load_bank(42), r"load_bank: spec must be a bank file.*got int 42"),
    (lambda a: a.build_bank(42, subjects=1), r"build_bank: sources must be"),
    (lambda a: a.build_bank(str(FLARE), subjects="two"), r"subjects must be a whole number, got 'two'"),
    (lambda a: a.build_bank(str(FLARE), subjects=1, spacing=1.5), r"spacing must be three numbers"),
    (lambda a: a.save_bank(None, 3), r"save_bank: path must be"),
    (lambda a: a.finetune(data="x", out="y", stesp=2), r"finetune\(\): unknown option\(s\) stesp; known: .*steps"),
])
def test_wrong_argument_types_name_the_argument(call, message):
    import anatosynth
    from anatosynth.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        call(anatosynth)


def test_finetune_reads_a_patch_as_every_verb_does(tmp_path):
    from anatosynth.train.finetune import FinetuneConfig

    for spelling in (32, "32", "32,32,32", [32, 32, 32]):
        assert FinetuneConfig(data="d", out="o", patch=spelling).patch == (32, 32, 32)
    assert FinetuneConfig(data="d", out="o", patch="96x96x32").patch == (96, 96, 32)


def test_evaluate_names_a_missing_run(tmp_path):
    from anatosynth.errors import InputError
    from anatosynth.evaluate.inference import load_run

    with pytest.raises(InputError, match="nope: run folder or weights file not found"):
        load_run(tmp_path / "nope")
