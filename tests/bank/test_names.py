"""Synonym table: one vocabulary for FLARE22, AMOS, BTCV, TotalSegmentator, MSD and CHAOS names."""

from __future__ import annotations

import pytest

from anatosynth.bank.names import VOCABULARY, canonical_name, organ_sort_key


@pytest.mark.parametrize("raw, canon", [
    ("right_kidney", "kidney_right"), ("kidney_right", "kidney_right"), ("Right Kidney", "kidney_right"),
    ("Kidney (R)", "kidney_right"), ("RKid", "kidney_right"), ("lkid", "kidney_left"),
    ("left kidney", "kidney_left"), ("kidney_left", "kidney_left"),
    ("IVC", "inferior_vena_cava"), ("inferior_vena_cava", "inferior_vena_cava"), ("postcava", "inferior_vena_cava"),
    ("right_adrenal_gland", "adrenal_gland_right"), ("adrenal_gland_left", "adrenal_gland_left"),
    ("RAD", "adrenal_gland_right"), ("LAD", "adrenal_gland_left"),
    ("gall", "gallbladder"), ("Gall Bladder", "gallbladder"), ("eso", "esophagus"), ("Oesophagus", "esophagus"),
    ("sto", "stomach"), ("Liver", "liver"), ("spleen", "spleen"), ("Pancreas", "pancreas"),
    ("portal_vein_and_splenic_vein", "portal_splenic_vein"), ("veins", "portal_splenic_vein"),
    ("bladder", "urinary_bladder"), ("urinary_bladder", "urinary_bladder"),
    ("prostate/uterus", "prostate_uterus"), ("duodenum", "duodenum"), ("aorta", "aorta"),
])
def test_common_schemes_map_onto_one_vocabulary(raw, canon):
    assert canonical_name(raw) == canon
    assert canon in VOCABULARY


def test_unknown_names_stay_their_own_class():
    assert canonical_name("Kidney Cyst") == "kidney_cyst"
    assert canonical_name("tumour") == "tumour"
    assert canonical_name("left liver lobe") == "left_liver_lobe"  # a side on an unsided organ is another structure


def test_bank_order_is_vocabulary_then_alphabetical():
    names = ["zeta", "spleen", "alpha", "liver", "kidney_left"]
    assert sorted(names, key=organ_sort_key) == ["liver", "spleen", "kidney_left", "alpha", "zeta"]
    # FLARE22 ids 1..13 are the vocabulary's first 13 entries
    assert VOCABULARY[:3] == ("liver", "kidney_right", "spleen") and VOCABULARY[12] == "kidney_left"


@pytest.mark.parametrize("raw, canon", [
    ("right_parotid", "parotid_gland_right"), ("Parotid_L", "parotid_gland_left"), ("SpinalCord", "spinal_cord"),
    ("spinal_cord", "spinal_cord"), ("Brain Stem", "brainstem"), ("Mandible", "mandible"), ("larynx", "larynx"),
])
def test_head_and_neck_names(raw, canon):
    """OpenKBP / RTOG organ-at-risk names, as the orientation invariants spell them."""
    assert canonical_name(raw) == canon
