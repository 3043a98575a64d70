"""The README's CPU quick start runs as written (issue 28): each command of its marked block, in order."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```\s*<!-- /quickstart -->", text, re.S)
    assert block, "README.md has no marked quick-start block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_the_quick_start_is_small_and_writes_only_under_runs():
    commands = quickstart_commands()
    assert [shlex.split(c)[1] for c in commands] == ["bank", "synth", "pretrain", "finetune", "evaluate"]
    for c in commands:
        outs = [a for a in shlex.split(c) if a.startswith("runs/")]
        assert outs and all(o.startswith("runs/quickstart/") for o in outs), c


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(tmp_path):
    """Every command as written, with runs/quickstart/ moved to a temporary folder (the repository stays clean)."""
    for command in quickstart_commands():
        argv = [a.replace("runs/quickstart", str(tmp_path / "quickstart")) for a in shlex.split(command)]
        assert argv[0] == "anatosynth"
        done = subprocess.run([sys.executable, "-m", "anatosynth", *argv[1:]], cwd=ROOT, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    summary = (tmp_path / "quickstart" / "report" / "summary.md").read_text()
    assert "**Test Dice:" in summary and (tmp_path / "quickstart" / "preview.png").stat().st_size > 1000


def test_the_nnunet_section_commands_parse():
    """Every anatosynth command of the README's nnU-Net blocks parses with the CLI as it is (running them needs
    the nnU-Net extra and minutes: BENCHMARKS.md "For nnU-Net" records a fresh clone's run)."""
    from anatosynth.cli import build_parser, parse

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Use with nnU-Net"):text.index("## Pre-trained weights")]
    lines = [ln for block in re.findall(r"```bash\n(.*?)```", section, re.S) for ln in block.splitlines()
             if ln.startswith("anatosynth ")]
    assert len(lines) >= 5, lines
    for line in lines:
        argv = shlex.split(line.replace("$nnUNet_preprocessed", "PRE").replace("$nnUNet_raw", "RAW"))[1:]
        args = parse(build_parser(), argv)
        assert callable(args.func), line
    nnunet_lines = [ln for ln in section.splitlines() if ln.startswith("nnUNetv2_train")]
    assert all("-pretrained_weights runs/nnunet/weights" in ln for ln in nnunet_lines) and nnunet_lines
