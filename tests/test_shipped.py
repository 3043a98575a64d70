"""What the repository ships for issue 12: released weights in weights/ and kept results in results/.

A fresh clone must be able to fine-tune from the weights and re-draw the cpu-long tables from the results
without running anything; these tests read the committed files themselves.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RELEASES = sorted(p.parent for p in (ROOT / "weights").glob("*/card.json"))
LOCAL_PATH = re.compile(r"""(^|[\s='"])(/|~/|[A-Za-z]:[\\/])""")  # an absolute path in a string


def test_weights_folder_fits_its_budget():
    """weights/ holds at most 50 MB (the developers' guide; the confirm protocol's four releases and the 30k
    primitives fit beside the cpu-long ones: about 49 MB at 5.4–5.5 MB each)."""
    total = sum(f.stat().st_size for f in (ROOT / "weights").rglob("*") if f.is_file())
    assert RELEASES and total <= 50 * 10**6


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize("folder", RELEASES, ids=[p.name for p in RELEASES])
def test_shipped_weights_match_their_card_and_transfer_into_a_new_task(folder):
    from anatosynth.train.models import ModelSpec, build_model
    from anatosynth.train.release import WEIGHTS_FILE, load_release, read_card
    from anatosynth.train.transfer import transfer_weights

    card = read_card(folder)
    assert hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest() == card["weights_sha256"]
    assert not [v for v in _strings(card) if LOCAL_PATH.search(v)]  # no local paths
    state, meta = load_release(folder)
    spec = meta["model"]
    assert len(meta["class_names"]) == spec["out_channels"]
    # the pre-training network takes the weights whole; a 5-class network (CHAOS-T2) all but its head
    same = build_model(ModelSpec(**{**spec, "patch": tuple(spec["patch"])}))
    same.load_state_dict(state, strict=True)
    chaos = ["background", "liver", "right_kidney", "left_kidney", "spleen"]
    model = build_model(ModelSpec(**{**spec, "out_channels": 5, "patch": tuple(spec["patch"])}))
    report = transfer_weights(model, folder, spec={**spec, "out_channels": 5}, new_class_names=chaos)
    assert report.head_reinitialised
    assert len(report.transferred) == len(state) - len(report.skipped) >= len(state) - 4


@pytest.mark.slow
def test_a_fresh_clone_redraws_the_cpu_long_tables_from_results(tmp_path, monkeypatch):
    """--report-only on an empty folder: every kept cpu-long result is reported, nothing is run."""
    from anatosynth.cli import main
    from anatosynth.experiment.protocol import expand, load_protocol

    monkeypatch.chdir(ROOT)  # protocol paths (results/, weights/) are relative to the project root
    protocol = expand(load_protocol("protocols/cpu-long.yaml"))
    kept = {json.loads(f.read_text())["key"] for f in (ROOT / "results" / "cpu-long").glob("*.json")}
    expected = [j.key for j in protocol.finetunes if j.key in kept]
    assert expected  # scratch's finished jobs at least
    out = tmp_path / "report"
    assert main(["experiment", "protocols/cpu-long.yaml", "--out", str(out), "--report-only", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "cpu-long" / "results.csv")))
    assert [r["job"] for r in rows] == expected
    assert all(r["test_dice"] for r in rows)  # every kept result knows its test Dice
    assert (out / "cpu-long" / "dice_per_arm.png").stat().st_size > 1000
    log = out / "experiment.log"
    assert not log.exists() or "$ anatosynth" not in log.read_text()
