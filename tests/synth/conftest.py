"""A tiny hand-made shape bank of ellipsoid organs (3 subjects), with anchors and a graph.

Six organs at 3 mm: a big 'liver' on the right, 'spleen' on the left, two 'kidney's behind, a small
'pancreas' in front of them, and a 'cyst' that may overlap the liver (an ``allowed`` edge). The graph
is computed from the subjects the way the bank stage does (contact, offsets, directions).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anatosynth.bank.model import Edge, Organ, OrganShape, ShapeBank

SPACING = (3.0, 3.0, 3.0)
# name: (centre mm (R, A, S), semi-axes mm)
ORGANS = {
    "liver": ((-60.0, 0.0, 40.0), (70.0, 55.0, 50.0)),
    "spleen": ((80.0, -30.0, 45.0), (25.0, 35.0, 40.0)),
    "kidney_right": ((-55.0, -55.0, -20.0), (20.0, 22.0, 40.0)),
    "kidney_left": ((60.0, -55.0, -15.0), (20.0, 22.0, 40.0)),
    "pancreas": ((20.0, 10.0, -10.0), (45.0, 12.0, 12.0)),
    "cyst": ((-70.0, 0.0, 40.0), (10.0, 10.0, 10.0)),
}
GRID = (100, 80, 90)  # body grid per subject, 300 x 240 x 270 mm
GRID_LO = np.array([-150.0, -120.0, -135.0])


def _subject_maps(rng: np.random.Generator) -> dict[str, np.ndarray]:
    coords = [GRID_LO[a] + np.arange(GRID[a]) * SPACING[a] for a in range(3)]
    x, y, z = np.meshgrid(*coords, indexing="ij")
    maps = {}
    for name, (centre, semi) in ORGANS.items():
        c = np.asarray(centre) + rng.normal(0, 4, 3)
        s = np.asarray(semi) * rng.uniform(0.9, 1.1, 3)
        maps[name] = ((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2 <= 1
    # organs other than the cyst never share voxels: later ones lose contested voxels to the liver etc.
    taken = np.zeros(GRID, bool)
    for name in ORGANS:
        if name == "cyst":
            continue
        maps[name] &= ~taken
        taken |= maps[name]
    return maps


def _shape(subject: str, mask: np.ndarray) -> OrganShape:
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    crop = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy()
    origin = GRID_LO + lo * np.asarray(SPACING)
    centroid = GRID_LO + idx.mean(0) * np.asarray(SPACING)
    return OrganShape(subject=subject, mask=crop, origin_mm=origin, centroid_mm=centroid,
                      volume_ml=float(mask.sum() * np.prod(SPACING) / 1000), axes=np.eye(3),
                      extent_mm=(hi - lo) * np.asarray(SPACING))


def make_toy_bank(n_subjects: int = 3, seed: int = 7) -> ShapeBank:
    """Build the toy bank (deterministic for a given seed)."""
    rng = np.random.default_rng(seed)
    subjects = [f"s{i}" for i in range(n_subjects)]
    maps = {s: _subject_maps(rng) for s in subjects}
    organs = []
    for label, name in enumerate(ORGANS, start=1):
        shapes = [_shape(s, maps[s][name]) for s in subjects]
        cents = np.array([sh.centroid_mm for sh in shapes])
        organs.append(Organ(name, label, shapes, cents.mean(0), np.cov(cents, rowvar=False)))
    edges = []
    names = list(ORGANS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            offs = np.array([maps[s][b].nonzero()[0].size and
                             (np.argwhere(maps[s][b]).mean(0) - np.argwhere(maps[s][a]).mean(0)) * SPACING
                             for s in subjects], dtype=float)
            touch = [bool((ndimage.binary_dilation(maps[s][a]) & maps[s][b]).any()) for s in subjects]
            units = offs / np.linalg.norm(offs, axis=1, keepdims=True)
            mean_unit = units.mean(0)
            allowed = {a, b} == {"liver", "cyst"}
            edges.append(Edge(a, b, n_subjects, float(np.mean(touch)), mean_unit / np.linalg.norm(mean_unit),
                              float(np.linalg.norm(mean_unit)), offs.mean(0), np.cov(offs, rowvar=False),
                              0.0, "allowed" if allowed else "forbidden"))
    return ShapeBank(spacing=SPACING, subjects=subjects, organs=organs, edges=edges)


@pytest.fixture(scope="session")
def toy_bank() -> ShapeBank:
    return make_toy_bank()
