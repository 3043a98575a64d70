"""Anchors and graph measured from subjects: contact, gap, direction, containment, reversed queries."""

from __future__ import annotations

import numpy as np
import pytest

from anatosynth.bank.graph import assemble_bank
from anatosynth.bank.shapes import subject_shapes

NAMES = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "tumour"}


def _subject(shift: int, gap: int) -> np.ndarray:
    """liver at high x (patient right), spleen at low x; right kidney touches the liver from below."""
    lab = np.zeros((60, 30, 40), np.int32)
    lab[35:50, 5:25, 20:35] = 1
    lab[40:45, 12:18, 26:29] = 5                  # tumour inside the liver (a hole in it)
    lab[5 + shift:15 + shift, 8:20, 22:32] = 2
    lab[38:46, 8:16, 12:20] = 3                    # z 12..19, liver starts at z 20: touching
    lab[10:18, 8:16, 20 - 8 - gap:20 - gap] = 4   # left kidney, ``gap`` voxels below the liver's level
    return lab


@pytest.fixture(scope="module")
def bank():
    sp = (1.0, 1.0, 1.0)
    subjects = {}
    for i, (shift, gap) in enumerate([(0, 2), (2, 4), (4, 6)]):
        cut = subject_shapes(_subject(shift, gap), sp, NAMES, f"s{i}")
        subjects[f"s{i}"] = cut.shapes
    return assemble_bank(sp, subjects)


def test_anchor_is_mean_and_covariance_over_subjects(bank):
    spleen = bank.organ("spleen")
    xs = np.array([s.centroid_mm[0] for s in spleen.shapes])
    assert np.isclose(spleen.anchor_mean_mm[0], xs.mean())
    assert np.isclose(spleen.anchor_cov_mm[0, 0], xs.var(ddof=1))
    assert len(bank.edges) == 5 * 4 // 2


def test_contact_direction_and_gap_are_measured(bank):
    e = bank.relation("kidney_right", "liver")
    assert e.contact == 1.0 and e.min_gap_mm == 0.0
    assert e.direction[2] > 0.5 and "superior" in e.direction_words
    sl = bank.relation("spleen", "liver")
    assert sl.direction[0] > 0.9 and sl.consistency > 0.99 and sl.contact == 0.0
    assert sl.min_gap_mm > 10
    assert bank.relation("liver", "kidney_right").overlap == "forbidden"


def test_reversed_query_negates_direction_and_offset(bank):
    ab, ba = bank.relation("liver", "spleen"), bank.relation("spleen", "liver")
    assert (ab.a, ab.b) == ("liver", "spleen") and (ba.a, ba.b) == ("spleen", "liver")
    assert np.allclose(ab.direction, -ba.direction)
    assert np.allclose(ab.offset_mean_mm, -ba.offset_mean_mm)
    assert bank.edge("liver", "spleen") is bank.edge("spleen", "liver")


def test_gap_is_the_smallest_observed_centre_distance(bank):
    # left kidney top at z = 19 - gap, liver bottom at z = 20; x ranges 10..17 vs 35..49: the nearest
    # voxel pair is dominated by x distance 35 - 17 = 18 mm; smallest over subjects is the first
    e = bank.edge("liver", "kidney_left")
    expected = np.sqrt(18 ** 2 + 0 + 3 ** 2)
    assert np.isclose(e.min_gap_mm, expected, atol=1e-3)


def test_containment_is_the_only_allowed_overlap(bank):
    assert bank.edge("liver", "tumour").overlap == "allowed"
    assert [(e.a, e.b) for e in bank.edges if e.overlap == "allowed"] == [("liver", "tumour")]


def test_missing_organs_use_the_subjects_that_have_them():
    sp = (1.0, 1.0, 1.0)
    subjects = {}
    for i in range(3):
        lab = _subject(i, 2)
        if i == 0:
            lab[lab == 4] = 0
        subjects[f"s{i}"] = subject_shapes(lab, sp, NAMES, f"s{i}").shapes
    bank = assemble_bank(sp, subjects)
    assert bank.organ("kidney_left").subjects == ["s1", "s2"]
    assert bank.edge("liver", "kidney_left").n_subjects == 2
    assert bank.edge("liver", "spleen").n_subjects == 3
