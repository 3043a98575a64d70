"""From one subject's canonical label map to its organ shapes in the subject's body frame.

Body frame (see docs/method.md): axes are the RAS voxel axes of the canonicalised map (no scaling);
the origin is the mean of the centroids of the **reference organs** (liver, spleen, both kidneys) when
all four are labelled, else the centroid of all labelled voxels (recorded as a fallback). Four
large organs that almost every abdominal scheme labels and every abdominal field of view contains
give an origin that does not move when a dataset labels more (or fewer) small structures.

Components rule: each organ keeps every 26-connected component with at least
:data:`MIN_COMPONENT_FRACTION` of its largest component's voxels; smaller fragments are annotation
noise and are dropped (their voxel count is reported).
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from anatosynth.bank.model import OrganShape

__all__ = ["REFERENCE_ORGANS", "MIN_COMPONENT_FRACTION", "SubjectShapes", "subject_shapes",
           "principal_axes"]

REFERENCE_ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")
MIN_COMPONENT_FRACTION = 0.05


@dataclass
class SubjectShapes:
    """One subject's organs, the kind of body-frame origin used and the voxels dropped as fragments."""

    shapes: dict[str, OrganShape]
    frame: str
    dropped_voxels: dict[str, int]


def principal_axes(points_mm: np.ndarray) -> np.ndarray:
    """(3, 3) unit principal axes as rows, largest variance first, sign fixed (largest |component| > 0)."""
    if len(points_mm) < 2:
        return np.eye(3)
    cov = np.cov(points_mm, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    axes = vecs[:, np.argsort(vals)[::-1]].T
    for row in axes:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1
    return axes


def _keep_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Apply the components rule; returns the kept mask and the number of voxels dropped."""
    labels, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    if n <= 1:
        return mask, 0
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.max())[0] + 1
    kept = np.isin(labels, keep)
    return kept, int(mask.sum() - kept.sum())


def _crop(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop a mask to its bounding box; returns it and the box's low corner."""
    idx = np.nonzero(mask)
    lo = np.array([int(i.min()) for i in idx])
    hi = np.array([int(i.max()) + 1 for i in idx])
    return np.ascontiguousarray(mask[tuple(slice(a, b) for a, b in zip(lo, hi))]), lo


def subject_shapes(array: np.ndarray, spacing, names: dict[int, str], subject: str) -> SubjectShapes:
    """Cut a RAS label map at bank spacing into per-organ shapes in the subject's body frame.

    Args:
        array: integer label map, RAS axes, bank spacing.
        spacing: (3,) voxel size in mm.
        names: label id → canonical organ name (ids not listed are ignored).
        subject: salted-hash subject id stored with each shape.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    boxes = ndimage.find_objects(np.asarray(array, dtype=np.int32))
    raw: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
    dropped: dict[str, int] = {}
    for ident, name in names.items():
        if ident <= 0 or ident > len(boxes) or boxes[ident - 1] is None:
            continue
        box = boxes[ident - 1]
        mask = array[box] == ident
        mask, lost = _keep_components(mask)
        if lost:
            dropped[name] = lost
        mask, lo = _crop(mask)
        lo = lo + np.array([s.start for s in box])
        pts = (np.argwhere(mask) + lo) * sp
        raw[name] = (mask, lo, pts.mean(axis=0), float(len(pts)))
    if all(n in raw for n in REFERENCE_ORGANS):
        origin = np.mean([raw[n][2] for n in REFERENCE_ORGANS], axis=0)
        frame = "reference-organs"
    else:
        weights = np.array([r[3] for r in raw.values()])
        origin = (np.array([r[2] for r in raw.values()]) * weights[:, None]).sum(0) / weights.sum() \
            if raw else np.zeros(3)
        frame = "all-organs"
    shapes = {}
    for name, (mask, lo, centroid, n) in raw.items():
        pts = np.argwhere(mask) * sp
        shapes[name] = OrganShape(
            subject=subject, mask=mask, origin_mm=lo * sp - origin, centroid_mm=centroid - origin,
            volume_ml=float(n * np.prod(sp) / 1000.0), axes=principal_axes(pts),
            extent_mm=np.array(mask.shape) * sp)
    return SubjectShapes(shapes, frame, dropped)
