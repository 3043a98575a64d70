"""The built-in phantom bank: deterministic, anatomically plausible, cached, read-only."""

from __future__ import annotations

import numpy as np
import pytest

from anatosynth.bank import load_bank
from anatosynth.bank.names import VOCABULARY
from anatosynth.bank.phantom import phantom_bank


@pytest.fixture(scope="module")
def bank():
    return load_bank("builtin:phantom")


def test_phantom_has_flare_organs_in_vocabulary_order(bank):
    assert [o.name for o in bank.organs] == list(VOCABULARY[:13])
    assert [o.label for o in bank.organs] == list(range(1, 14))
    assert len(bank.subjects) == 5
    assert all(len(o.shapes) == 5 for o in bank.organs)


def test_phantom_is_cached_and_read_only(bank):
    assert load_bank("builtin:phantom") is bank
    with pytest.raises(ValueError):
        bank.organs[0].shapes[0].mask[0, 0, 0] = True


def test_phantom_is_deterministic(bank):
    again = phantom_bank()
    for a, b in zip(bank.organs, again.organs):
        for s, t in zip(a.shapes, b.shapes):
            assert s.subject == t.subject
            assert np.array_equal(s.mask, t.mask)


def test_phantom_volumes_follow_reference_anatomy(bank):
    vol = {o.name: np.mean([s.volume_ml for s in o.shapes]) for o in bank.organs}
    assert 1000 < vol["liver"] < 2200
    assert 100 < vol["spleen"] < 300
    assert 100 < vol["kidney_right"] < 250 and 100 < vol["kidney_left"] < 250
    assert vol["adrenal_gland_left"] < 20 and vol["gallbladder"] < 80


def test_phantom_relations_are_measured(bank):
    # liver lies to the patient's right of the spleen, above the right kidney, and touches it
    e = bank.relation("spleen", "liver")
    assert e.direction[0] > 0.8 and e.consistency > 0.9
    assert bank.relation("kidney_right", "liver").direction[2] > 0
    assert bank.edge("liver", "kidney_right").contact == 1.0
    assert bank.edge("pancreas", "duodenum").contact > 0.5
    # distant organs never touch and keep a gap
    far = bank.edge("gallbladder", "kidney_left")
    assert far.contact == 0 and far.min_gap_mm > 20
    assert all(e.overlap == "forbidden" for e in bank.edges)
