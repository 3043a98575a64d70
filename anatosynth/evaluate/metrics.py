"""Per-class Dice and HD95 (MONAI metrics) with one documented rule for absent classes.

For each foreground class of a case, with R the reference mask and P the predicted mask:

=================  ================  ==========  =====================================================
R                  P                 status      Dice / HD95
=================  ================  ==========  =====================================================
non-empty          non-empty         ``ok``      MONAI Dice / MONAI 95th-percentile Hausdorff (mm)
non-empty          empty             ``missed``  Dice 0 (counts in the mean); HD95 undefined (NaN)
empty              non-empty         ``false_positive``  Dice 0 (counts in the mean); HD95 undefined (NaN)
empty              empty             ``absent``  both NaN: excluded from means, counted, shown "n/a"
=================  ================  ==========  =====================================================

Undefined values are NaN in memory, ``null`` in JSON, empty in CSV and ``n/a`` in Markdown; means and
standard deviations (population std, ddof 0) are taken over the defined values only, and the number of
values behind each mean is reported beside it. HD95 uses the voxel spacing of the grid the masks are on
(the original scan geometry in ``anatosynth evaluate``), so it is in millimetres.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["ClassScore", "class_score", "case_scores", "STATUSES"]

STATUSES = ("ok", "missed", "false_positive", "absent")


@dataclass
class ClassScore:
    """Dice, HD95 (mm; NaN when undefined) and status of one class in one case."""

    dice: float
    hd95: float
    status: str
    ref_voxels: int
    pred_voxels: int


def _crop_union(pred: np.ndarray, ref: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their union's bounding box plus ``margin``: distances are unchanged, work shrinks."""
    union = pred | ref
    idx = [np.nonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != d)))[0] for d in range(union.ndim)]
    sl = tuple(slice(max(int(i[0]) - margin, 0), min(int(i[-1]) + 1 + margin, n)) for i, n in zip(idx, union.shape))
    return pred[sl], ref[sl]


def _onehot(mask: np.ndarray) -> torch.Tensor:
    import torch

    m = torch.as_tensor(np.ascontiguousarray(mask))
    return torch.stack([~m, m])[None].float()


def class_score(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | np.ndarray) -> ClassScore:
    """Score one binary prediction against one binary reference (see module docstring for the rule)."""
    from monai.metrics import compute_dice, compute_hausdorff_distance

    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_ref == 0 and n_pred == 0:
        return ClassScore(math.nan, math.nan, "absent", 0, 0)
    if n_ref == 0 or n_pred == 0:
        return ClassScore(0.0, math.nan, "missed" if n_ref else "false_positive", n_ref, n_pred)
    p, r = _crop_union(pred, ref)
    yp, yr = _onehot(p), _onehot(r)
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        dice = float(compute_dice(yp, yr, include_background=False)[0, 0])
        hd = float(compute_hausdorff_distance(yp, yr, include_background=False, percentile=95,
                                              spacing=[float(s) for s in spacing])[0, 0])
    return ClassScore(dice, hd, "ok", n_ref, n_pred)


def case_scores(pred: np.ndarray, ref: np.ndarray, class_ids: dict[str, int],
                spacing: Sequence[float] | np.ndarray) -> dict[str, ClassScore]:
    """Scores of every named foreground class (name → dataset label id) in one case."""
    return {name: class_score(pred == ident, ref == ident, spacing) for name, ident in class_ids.items()}
