"""Banks from real label maps: FLARE22 (13 organs) and AMOS (15 classes, other ids), merged by name.

Anatomical relations are asserted from what the data show, not from the code: the relations are
computed from the masks, and the test checks them against textbook anatomy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from anatosynth.bank import load_bank
from anatosynth.bank.audit import audit_bank
from anatosynth.bank.names import VOCABULARY
from anatosynth.cli import main

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
FLARE = DATA / "labels" / "flare22"
AMOS = DATA / "labels" / "amos"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    if not FLARE.is_dir():
        pytest.fail(f"real data folder missing: {FLARE}")
    out = tmp_path_factory.mktemp("real")
    t0 = time.perf_counter()
    assert main(["bank", "build", str(FLARE), "--subjects", "5", "--seed", "0", "--spacing", "1.5,1.5,2.0",
                 "--out", str(out / "flare.bank"), "--quiet"]) == 0
    build_s = time.perf_counter() - t0
    assert main(["bank", "build", str(AMOS), "--subjects", "1", "--out", str(out / "amos.bank"), "--quiet"]) == 0
    assert main(["bank", "merge", str(out / "flare.bank"), str(out / "amos.bank"), "--out", str(out / "both.bank"),
                 "--quiet"]) == 0
    return out, build_s


def test_flare_bank_builds_fast_small_and_loads_fast(banks):
    out, build_s = banks
    assert build_s < 60, f"build took {build_s:.1f} s"
    assert (out / "flare.bank").stat().st_size < 20e6
    t0 = time.perf_counter()
    bank = load_bank(out / "flare.bank")
    assert time.perf_counter() - t0 < 1.0
    assert [o.name for o in bank.organs] == list(VOCABULARY[:13])  # FLARE22 ids == bank labels
    assert len(bank.subjects) == 5 and all(len(o.shapes) == 5 for o in bank.organs)
    assert len(bank.edges) == 13 * 12 // 2
    assert audit_bank(out / "flare.bank") == []


def test_flare_relations_match_anatomy(banks):
    bank = load_bank(banks[0] / "flare.bank")
    liver_from_spleen = bank.relation("spleen", "liver")
    assert liver_from_spleen.direction[0] > 0.7 and liver_from_spleen.consistency > 0.9  # liver to the right
    above = bank.relation("kidney_right", "liver")
    assert above.offset_mean_mm[2] > 0 and above.contact >= 0.6                       # above, touching
    assert bank.relation("kidney_left", "kidney_right").direction[0] > 0.9
    assert bank.relation("aorta", "inferior_vena_cava").offset_mean_mm[0] > 0          # IVC right of aorta
    assert bank.edge("liver", "gallbladder").contact >= 0.8
    assert bank.edge("kidney_left", "gallbladder").contact == 0.0
    assert bank.relation("kidney_right", "adrenal_gland_right").offset_mean_mm[2] > 0  # adrenal on top
    assert all(e.overlap == "forbidden" for e in bank.edges)                           # one-label maps
    vols = {o.name: np.mean([s.volume_ml for s in o.shapes]) for o in bank.organs}
    assert 800 < vols["liver"] < 3000 and 50 < vols["spleen"] < 600


def test_amos_merges_with_flare_by_name(banks):
    out = banks[0]
    amos = load_bank(out / "amos.bank")
    assert len(amos.organs) == 15 and amos.organs[0].name == "liver"  # AMOS id 6 becomes label 1
    assert {"urinary_bladder", "prostate_uterus"} <= {o.name for o in amos.organs}
    both = load_bank(out / "both.bank")
    assert len(both.subjects) == 6 and len(both.organs) == 15
    assert len(both.organ("liver").shapes) == 6 and len(both.organ("urinary_bladder").shapes) == 1
    # the AMOS subject's liver sits where FLARE livers sit in the shared body frame
    flare = load_bank(out / "flare.bank")
    d = np.abs(amos.organ("liver").anchor_mean_mm - flare.organ("liver").anchor_mean_mm)
    assert np.all(d < 60), d
    assert audit_bank(out / "both.bank") == []


def test_inspect_png_and_json(banks, capsys):
    out = banks[0]
    png = out / "graph.png"
    assert main(["bank", "inspect", str(out / "both.bank"), "--json", "--png", str(png)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    names = [o["name"] for o in info["organs"]]
    assert names[:3] == ["liver", "kidney_right", "spleen"] and len(info["subjects"]) == 6


def test_phantom_agrees_with_flare_anatomy(banks):
    """The built-in phantom's measured graph matches the FLARE22 bank's (its design target)."""
    flare = load_bank(banks[0] / "flare.bank")
    phantom = load_bank("builtin:phantom")
    cos, same_contact = [], []
    for e in flare.edges:
        p = phantom.relation(e.a, e.b)
        cos.append(float(np.dot(e.direction, p.direction)))
        same_contact.append((e.contact >= 0.5) == (p.contact >= 0.5))
    assert np.mean(np.array(cos) > 0.7) >= 0.9, np.round(cos, 2)
    assert np.mean(same_contact) >= 0.85
