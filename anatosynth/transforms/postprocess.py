"""nnU-Net-style post-processing: keep each class's largest connected component, where validation says so.

A scratch network often predicts stray blobs far from the organ (a second "heart" in the liver): Dice
hardly notices, HD95 jumps by tens of millimetres. nnU-Net's remedy, kept here: for each foreground class,
remove every connected component but the largest (voxels become background) — **only for the classes
where this does not lower the mean validation Dice** (a class with two true parts, e.g. both kidneys in
one label, keeps all its parts). Fine-tuning takes the decision on its validation cases and writes it to
``postprocessing.json``; ``evaluate`` applies it by default.

Components are 6-connected (``scipy.ndimage.label``'s default structure, as in nnU-Net v1).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from anatosynth.errors import InputError

__all__ = ["POSTPROCESSING_FILE", "keep_largest_component", "decide_largest_component", "read_decision",
           "POSTPROCESS_MODES"]

POSTPROCESSING_FILE = "postprocessing.json"
#: ``evaluate --postprocess``: the run's validated choice, nothing, or the largest component of every class
POSTPROCESS_MODES = ("auto", "none", "largest")
RULE = "keep the largest connected component of a class when its mean validation Dice does not drop"


def keep_largest_component(index: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """A copy of the class-index map where each listed class keeps only its largest component (rest → 0)."""
    from scipy import ndimage

    out = np.array(index, copy=True)
    for c in classes:
        mask = out == int(c)
        if not mask.any():
            continue
        components, n = ndimage.label(mask)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(np.argmax(sizes)))] = 0
    return out


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(arr)) if arr.size else float("nan")


def decide_largest_component(before: list[list[float]], after: list[list[float]], names: list[str]) -> dict:
    """Per-class decision from per-case Dice without (``before``) and with (``after``) the largest component.

    ``before[i][k]`` is case i's Dice of foreground class ``names[k]`` (NaN where the class is absent
    from reference and prediction). A class is post-processed when its mean Dice over the cases where
    it is defined does not drop; a class never defined on the validation cases is left alone.
    """
    classes = {}
    for k, name in enumerate(names):
        b, a = _nanmean([row[k] for row in before]), _nanmean([row[k] for row in after])
        defined = bool(np.isfinite(b) and np.isfinite(a))
        classes[name] = {"keep_largest": bool(defined and a >= b),
                         "dice_before": b if defined else None, "dice_after": a if defined else None}
    return {"rule": RULE, "cases": len(before), "classes": classes}


def read_decision(folder: str | Path, weights: str) -> tuple[list[str], Path] | None:
    """Class names to post-process for the weights file ``weights`` of a run, and the file that says so.

    Returns None when the run recorded no decision for those weights (runs from before this feature, or a
    weights file that fine-tuning did not validate).
    """
    path = Path(folder) / POSTPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        entry = record["weights"].get(weights)
        if entry is None:
            return None
        return [n for n, c in entry["classes"].items() if c["keep_largest"]], path
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise InputError(path, "not a valid post-processing record (expected weights -> classes -> keep_largest)") \
            from None
