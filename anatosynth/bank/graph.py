"""Spatial anchors and the topological graph, computed from the subjects' shapes alone.

Because every stored shape keeps its position in its subject's body frame, a subject's layout can be
rebuilt from the bank itself; so building, merging and the phantom all go through
:func:`assemble_bank`, and merged banks get anchors and graph computed exactly like built ones.

Per organ pair and subject having both organs (see docs/method.md):

* contact: some voxel of b is a 26-neighbour of (or equal to) a voxel of a;
* gap: smallest centre-to-centre distance between a voxel of a and a voxel of b (0 on contact),
  from k-d trees of the two surfaces; exact up to :data:`GAP_SEARCH_MM`, beyond it the distance
  between bounding boxes (a lower bound, at least :data:`GAP_SEARCH_MM`);
* overlap observed: the masks share voxels, or one lies at least half inside the other's
  hole-filled mask (containment, e.g. a lesion in an organ); the policy is ``"allowed"`` only then;
* direction: unit vector from a's centroid to b's; the edge keeps the normalised mean and its
  consistency (length of the mean unit vector, 1 = identical in every subject).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from anatosynth.bank.model import Edge, Organ, OrganShape, ShapeBank
from anatosynth.bank.names import organ_sort_key
from anatosynth.io.canonical import parse_spacing
from anatosynth.options import bar_disable

__all__ = ["GAP_SEARCH_MM", "assemble_bank", "anchor_stats", "pair_relations"]

GAP_SEARCH_MM = 50.0


def _grid_lo(shape: OrganShape, ref_mm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Integer grid position of a shape's first voxel relative to ``ref_mm`` (on the same subject grid)."""
    return np.rint((shape.origin_mm - ref_mm) / spacing).astype(np.int64)


def _cov(points: np.ndarray) -> np.ndarray:
    return np.cov(points, rowvar=False) if len(points) >= 2 else np.zeros((3, 3))


def anchor_stats(centroids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (zeros for one subject) of an organ's body-frame centroids."""
    pts = np.asarray(centroids, dtype=np.float64).reshape(-1, 3)
    return pts.mean(axis=0), _cov(pts)


def _contained(inner: np.ndarray, inner_lo: np.ndarray, outer: np.ndarray, outer_lo: np.ndarray,
               fill) -> bool:
    """Whether at least half of ``inner`` lies inside the outer organ's hole-filled mask ``fill()``."""
    lo = np.maximum(inner_lo, outer_lo)
    hi = np.minimum(inner_lo + inner.shape, outer_lo + outer.shape)
    if np.any(hi <= lo):
        return False
    if inner.sum() > 2 * np.prod(hi - lo):  # fewer than half of inner's voxels fit in the common box
        return False
    filled = fill()
    a = filled[tuple(slice(low - o, high - o) for low, high, o in zip(lo, hi, outer_lo))]
    b = inner[tuple(slice(low - o, high - o) for low, high, o in zip(lo, hi, inner_lo))]
    return bool((a & b).sum() * 2 >= inner.sum())


def _box_gap(lo_a, hi_a, lo_b, hi_b, spacing) -> float:
    """Distance (mm) between two voxel boxes' nearest voxel centres (a lower bound of the mask gap)."""
    d = np.maximum(0, np.maximum(lo_a - hi_b + 1, lo_b - hi_a + 1))
    return float(np.linalg.norm(d * spacing))


def _surface(mask: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Grid indices (N, 3) of a mask's boundary voxels (a face neighbour outside the mask).

    The voxel of a set nearest to any outside point is always such a boundary voxel, so distances
    between organs need only their surfaces: far fewer points than their volumes.
    """
    inner = ndimage.binary_erosion(mask, border_value=0)
    return np.argwhere(mask & ~inner) + lo


def _nearest(tree_mm: cKDTree, points_mm: np.ndarray) -> float:
    """Exact smallest distance (mm) from ``points_mm`` to the tree, or inf beyond GAP_SEARCH_MM.

    A sparse sample first gives an upper bound; the full query then only searches within it.
    """
    bound = float(tree_mm.query(points_mm[::16], distance_upper_bound=GAP_SEARCH_MM)[0].min())
    if not np.isfinite(bound):
        bound = GAP_SEARCH_MM
    return float(tree_mm.query(points_mm, distance_upper_bound=bound + 1e-6)[0].min())


def _within(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The grid points inside the index box [lo, hi)."""
    keep = np.all((points >= lo) & (points < hi), axis=1)
    return points[keep]


def _shared_voxels(a: np.ndarray, lo_a: np.ndarray, b: np.ndarray, lo_b: np.ndarray) -> bool:
    lo = np.maximum(lo_a, lo_b)
    hi = np.minimum(lo_a + a.shape, lo_b + b.shape)
    if np.any(hi <= lo):
        return False
    sa = a[tuple(slice(int(low - o), int(high - o)) for low, high, o in zip(lo, hi, lo_a))]
    sb = b[tuple(slice(int(low - o), int(high - o)) for low, high, o in zip(lo, hi, lo_b))]
    return bool((sa & sb).any())


def pair_relations(shapes: dict[str, OrganShape], spacing) -> dict[tuple[str, str], tuple[bool, float, bool]]:
    """Contact, gap (mm) and observed overlap for every organ pair of one subject (keys in bank order)."""
    sp = np.asarray(spacing, dtype=np.float64)
    names = sorted(shapes, key=organ_sort_key)
    ref = np.asarray(shapes[names[0]].origin_mm, dtype=np.float64) if names else np.zeros(3)
    lo = {n: _grid_lo(shapes[n], ref, sp) for n in names}
    hi = {n: lo[n] + shapes[n].mask.shape for n in names}
    surf = {n: _surface(shapes[n].mask, lo[n]) for n in names}
    trees: dict[tuple[str, bool], cKDTree] = {}
    filled_cache: dict[str, np.ndarray] = {}

    def tree(name: str, mm: bool) -> cKDTree:
        """k-d tree of an organ's surface: in grid indices (26-neighbour tests) or in mm (gaps)."""
        if (name, mm) not in trees:
            trees[(name, mm)] = cKDTree(surf[name] * sp if mm else surf[name])
        return trees[(name, mm)]

    def filled(name: str) -> np.ndarray:
        if name not in filled_cache:
            filled_cache[name] = ndimage.binary_fill_holes(shapes[name].mask)
        return filled_cache[name]

    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            box = _box_gap(lo[a], hi[a], lo[b], hi[b], sp)
            if box > GAP_SEARCH_MM:
                out[(a, b)] = (False, box, False)
                continue
            if _shared_voxels(shapes[a].mask, lo[a], shapes[b].mask, lo[b]):
                out[(a, b)] = (True, 0.0, True)
                continue
            # query the smaller of the two surfaces (each cut to the other's box) against the other's tree
            pa, pb = _within(surf[a], lo[b] - 1, hi[b] + 1), _within(surf[b], lo[a] - 1, hi[a] + 1)
            q, other = (pa, b) if len(pa) < len(pb) else (pb, a)
            contact = bool(q.size) and bool(
                np.any(tree(other, False).query(q, p=np.inf, distance_upper_bound=1.5)[0] <= 1))
            if contact:
                overlap = _contained(shapes[b].mask, lo[b], shapes[a].mask, lo[a], partial(filled, a)) or \
                    _contained(shapes[a].mask, lo[a], shapes[b].mask, lo[b], partial(filled, b))
                out[(a, b)] = (True, 0.0, overlap)
                continue
            reach = np.ceil(GAP_SEARCH_MM / sp).astype(np.int64)
            pa, pb = _within(surf[a], lo[b] - reach, hi[b] + reach), _within(surf[b], lo[a] - reach, hi[a] + reach)
            q, other = (pa, b) if len(pa) < len(pb) else (pb, a)
            d = _nearest(tree(other, True), q * sp) if q.size else np.inf
            out[(a, b)] = (False, d if np.isfinite(d) else max(GAP_SEARCH_MM, box), False)
    return out


def _edge(a: str, b: str, per_subject: list[tuple[np.ndarray, np.ndarray, tuple[bool, float, bool]]]) -> Edge:
    offsets = np.array([cb - ca for ca, cb, _ in per_subject])
    norms = np.linalg.norm(offsets, axis=1, keepdims=True)
    units = offsets / np.maximum(norms, 1e-9)
    mean_unit = units.mean(axis=0)
    consistency = float(np.linalg.norm(mean_unit))
    direction = mean_unit / consistency if consistency > 1e-9 else np.zeros(3)
    rel = [r for _, _, r in per_subject]
    return Edge(
        a=a, b=b, n_subjects=len(per_subject),
        contact=float(np.mean([c for c, _, _ in rel])),
        direction=direction, consistency=consistency,
        offset_mean_mm=offsets.mean(axis=0), offset_cov_mm=_cov(offsets),
        min_gap_mm=float(min(g for _, g, _ in rel)),
        overlap="allowed" if any(o for _, _, o in rel) else "forbidden")


def assemble_bank(spacing, subjects: dict[str, dict[str, OrganShape]], meta: dict | None = None,
                  progress: bool = False) -> ShapeBank:
    """A bank (organ order, anchors, graph) from subjects' shapes: subject id → organ name → shape."""
    from tqdm import tqdm

    sp = parse_spacing(spacing)
    names = sorted({n for s in subjects.values() for n in s}, key=organ_sort_key)
    organs = []
    for label, name in enumerate(names, start=1):
        shapes = [s[name] for s in subjects.values() if name in s]
        mean, cov = anchor_stats([s.centroid_mm for s in shapes])
        organs.append(Organ(name, label, shapes, mean, cov))
    relations = {}
    for sid, shapes in tqdm(subjects.items(), desc="organ graph", unit="subject", disable=bar_disable(progress)):
        relations[sid] = pair_relations(shapes, sp)
    edges = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            per = [(s[a].centroid_mm, s[b].centroid_mm, relations[sid][(a, b)])
                   for sid, s in subjects.items() if a in s and b in s]
            if per:
                edges.append(_edge(a, b, per))
    return ShapeBank(spacing=sp, subjects=list(subjects), organs=organs, edges=edges, meta=dict(meta or {}))
