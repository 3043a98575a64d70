"""One organ vocabulary for all label schemes, so banks from different datasets merge by name.

:func:`canonical_name` maps a dataset's label name (FLARE22, AMOS, BTCV, TotalSegmentator, MSD,
CHAOS, ...) onto the canonical vocabulary :data:`VOCABULARY`. Names are normalised first (lower case,
words split on anything that is not a letter or digit, side words ``right/left/r/l/rt/lt`` pulled out),
then looked up in the synonym table; a name that is not in the table stays its own class under its
normalised spelling (``"Kidney Cyst"`` → ``"kidney_cyst"``).

The vocabulary starts with the 13 FLARE22 organs in FLARE22's own id order, so a bank built from
FLARE22 numbers its classes exactly as FLARE22 does (convenient when fine-tuning on it).
"""

from __future__ import annotations

import re

__all__ = ["VOCABULARY", "canonical_name", "organ_sort_key", "normalise", "is_known_organ", "unknown_organs"]

# canonical order: FLARE22 ids 1..13 first, then the other common abdominal / pelvic / thoracic structures
VOCABULARY: tuple[str, ...] = (
    "liver", "kidney_right", "spleen", "pancreas", "aorta", "inferior_vena_cava",
    "adrenal_gland_right", "adrenal_gland_left", "gallbladder", "esophagus", "stomach", "duodenum",
    "kidney_left",
    "portal_splenic_vein", "urinary_bladder", "prostate_uterus", "prostate", "uterus",
    "small_bowel", "colon", "rectum", "heart", "lung_right", "lung_left", "kidney", "adrenal_gland",
    "lung",
)

# side-less base name → canonical base; side words are handled separately
_BASE = {
    "liver": "liver", "hepar": "liver",
    "spleen": "spleen", "splenic": "spleen", "lien": "spleen",
    "kidney": "kidney", "kidneys": "kidney", "kid": "kidney", "renal": "kidney",
    "pancreas": "pancreas", "pancreatic": "pancreas",
    "aorta": "aorta", "abdominal_aorta": "aorta",
    "ivc": "inferior_vena_cava", "inferior_vena_cava": "inferior_vena_cava", "vena_cava_inferior": "inferior_vena_cava",
    "postcava": "inferior_vena_cava", "vena_cava": "inferior_vena_cava",
    "adrenal": "adrenal_gland", "adrenal_gland": "adrenal_gland", "adrenal_glands": "adrenal_gland",
    "suprarenal_gland": "adrenal_gland", "ad": "adrenal_gland", "suprarenal": "adrenal_gland",
    "gallbladder": "gallbladder", "gall_bladder": "gallbladder", "gall": "gallbladder",
    "esophagus": "esophagus", "oesophagus": "esophagus", "eso": "esophagus",
    "stomach": "stomach", "sto": "stomach",
    "duodenum": "duodenum", "duo": "duodenum",
    "portal_vein_and_splenic_vein": "portal_splenic_vein", "portal_and_splenic_vein": "portal_splenic_vein",
    "portal_splenic_vein": "portal_splenic_vein", "veins": "portal_splenic_vein",
    "portal_vein_splenic_vein": "portal_splenic_vein", "portal_vein": "portal_splenic_vein",
    "bladder": "urinary_bladder", "urinary_bladder": "urinary_bladder",
    "prostate_uterus": "prostate_uterus", "prostate_or_uterus": "prostate_uterus",
    "prostate": "prostate", "uterus": "uterus",
    "small_bowel": "small_bowel", "small_intestine": "small_bowel", "bowel_small": "small_bowel",
    "colon": "colon", "large_bowel": "colon", "rectum": "rectum",
    "heart": "heart", "lung": "lung", "lungs": "lung",
    # head and neck (OpenKBP, RTOG organ-at-risk names)
    "parotid": "parotid_gland", "parotid_gland": "parotid_gland", "parotids": "parotid_gland",
    "spinal_cord": "spinal_cord", "spinalcord": "spinal_cord", "cord": "spinal_cord",
    "brainstem": "brainstem", "brain_stem": "brainstem", "mandible": "mandible", "larynx": "larynx",
}

# abbreviations that carry their side inside one token (BTCV and friends)
_FUSED = {
    "rkid": "kidney_right", "lkid": "kidney_left", "rk": "kidney_right", "lk": "kidney_left",
    "rad": "adrenal_gland_right", "lad": "adrenal_gland_left",
    "lag": "adrenal_gland_left", "rag": "adrenal_gland_right",
}

_SIDED = {"kidney", "adrenal_gland", "lung", "parotid_gland"}
_RIGHT = {"right", "r", "rt", "dexter", "dx"}
_LEFT = {"left", "l", "lt", "sinister", "sin"}


def normalise(raw: str) -> str:
    """Lower-case snake spelling: ``"Right Kidney (R)"`` → ``"right_kidney_r"``."""
    return "_".join(t for t in re.split(r"[^0-9a-z]+", str(raw).lower()) if t)


def canonical_name(raw: str) -> str:
    """The canonical vocabulary name of a label name, or its normalised spelling when unknown.

    Examples:
        ``canonical_name("right_kidney") == canonical_name("Kidney (R)") == "kidney_right"``;
        ``canonical_name("IVC") == "inferior_vena_cava"``; ``canonical_name("bladder") == "urinary_bladder"``;
        ``canonical_name("Parotid_R") == "parotid_gland_right"``.
    """
    norm = normalise(raw)
    if norm in _FUSED:
        return _FUSED[norm]
    tokens = norm.split("_") if norm else []
    side = None
    rest = []
    for t in tokens:
        if t in _RIGHT:
            side = "right"
        elif t in _LEFT:
            side = "left"
        else:
            rest.append(t)
    base = "_".join(rest)
    canon = _BASE.get(base)
    if canon is None:
        return norm
    if canon in _SIDED and side is not None:
        return f"{canon}_{side}"
    if side is not None and canon not in _SIDED:
        return norm  # e.g. "left liver lobe": a different structure, keep it apart
    return canon


def organ_sort_key(name: str) -> tuple[int, str]:
    """Bank order: canonical vocabulary order first, then unknown names alphabetically."""
    try:
        return (VOCABULARY.index(name), "")
    except ValueError:
        return (len(VOCABULARY), name)


def is_known_organ(name: str) -> bool:
    """Whether ``name`` (a label name or a canonical name) is an organ of the synonym table: only such organs
    get anatomical invariants and merge with other label schemes by name."""
    canon = canonical_name(name)
    known = set(VOCABULARY) | set(_FUSED.values()) | set(_BASE.values())
    known |= {f"{base}_{side}" for base in _SIDED for side in ("right", "left")}
    return canon in known


def unknown_organs(names) -> list[str]:
    """The names among ``names`` that match no organ of the synonym table (background left out)."""
    return [n for n in names if n != "background" and not is_known_organ(n)]
