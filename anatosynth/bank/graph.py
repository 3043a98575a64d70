"""Spatial anchors and the topological graph, computed from the subjects' shapes alone.

Because every stored shape keeps its position in its subject's body frame, a subject's layout can be
rebuilt from the bank itself; so building, merging and the phantom all go through
:func:`assemble_bank`, and merged banks get anchors and graph computed exactly like built ones.

Per organ pair and subject having both organs (see docs/method.md):

* contact: some voxel of b is a 26-neighbour of (or equal to) a voxel of a;
* gap: smallest centre-to-centre distance between a voxel of a and a voxel of b (0 on contact);
  exact up to :data:`GAP_SEARCH_MM`, beyond it the distance between bounding boxes (a lower bound);
* overlap observed: the masks share voxels, or one lies at least half inside the other's
  hole-filled mask (containment, e.g. a lesion in an organ); the policy is ``"allowed"`` only then;
* direction: unit vector from a's centroid to b's; the edge keeps the normalised mean and its
  consistency (length of the mean unit vector, 1 = identical in every subject).
"""

from __future__ import annotations

import edt
import numpy as np
from scipy import ndimage

from anatosynth.bank.model import Edge, Organ, OrganShape, ShapeBank
from anatosynth.bank.names import organ_sort_key

__all__ = ["GAP_SEARCH_MM", "assemble_bank", "anchor_stats", "pair_relations"]

GAP_SEARCH_MM = 20.0


def _grid_lo(shape: OrganShape, ref_mm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Integer grid position of a shape's first voxel relative to ``ref_mm`` (on the same subject grid)."""
    return np.rint((shape.origin_mm - ref_mm) / spacing).astype(np.int64)


def _cov(points: np.ndarray) -> np.ndarray:
    return np.cov(points, rowvar=False) if len(points) >= 2 else np.zeros((3, 3))


def anchor_stats(centroids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (zeros for one subject) of an organ's body-frame centroids."""
    pts = np.asarray(centroids, dtype=np.float64).reshape(-1, 3)
    return pts.mean(axis=0), _cov(pts)


def _contained(inner: np.ndarray, inner_lo: np.ndarray, filled: np.ndarray, outer_lo: np.ndarray) -> bool:
    """Whether at least half of ``inner`` lies inside ``filled`` (the outer organ's hole-filled mask)."""
    lo = np.maximum(inner_lo, outer_lo)
    hi = np.minimum(inner_lo + inner.shape, outer_lo + filled.shape)
    if np.any(hi <= lo):
        return False
    a = filled[tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, outer_lo))]
    b = inner[tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, inner_lo))]
    return bool((a & b).sum() * 2 >= inner.sum())


def _box_gap(lo_a, hi_a, lo_b, hi_b, spacing) -> float:
    """Distance (mm) between two voxel boxes' nearest voxel centres (a lower bound of the mask gap)."""
    d = np.maximum(0, np.maximum(lo_a - hi_b + 1, lo_b - hi_a + 1))
    return float(np.linalg.norm(d * spacing))


def pair_relations(shapes: dict[str, OrganShape], spacing) -> dict[tuple[str, str], tuple[bool, float, bool]]:
    """Contact, gap (mm) and observed overlap for every organ pair of one subject (keys in bank order)."""
    sp = np.asarray(spacing, dtype=np.float64)
    names = sorted(shapes, key=organ_sort_key)
    ref = np.asarray(shapes[names[0]].origin_mm, dtype=np.float64) if names else np.zeros(3)
    lo = {n: _grid_lo(shapes[n], ref, sp) for n in names}
    hi = {n: lo[n] + shapes[n].mask.shape for n in names}
    touch = float(np.linalg.norm(sp)) + 1e-6
    margin = np.ceil(GAP_SEARCH_MM / sp).astype(np.int64)
    out = {}
    cache: dict[str, np.ndarray] = {}

    def filled(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = ndimage.binary_fill_holes(shapes[name].mask)
        return cache[name]

    for i, a in enumerate(names):
        others = names[i + 1:]
        if not others:
            break
        box_lo, box_hi = lo[a] - margin, hi[a] + margin
        near = [b for b in others if np.all(lo[b] < box_hi) and np.all(hi[b] > box_lo)]
        dist = None
        if near:
            local = np.zeros(tuple(box_hi - box_lo), dtype=bool)
            sl = tuple(slice(int(x), int(y)) for x, y in zip(lo[a] - box_lo, hi[a] - box_lo))
            local[sl] = shapes[a].mask
            dist = edt.edt(~local, anisotropy=tuple(sp), black_border=False, parallel=1)
        for b in others:
            if b not in near:
                out[(a, b)] = (False, _box_gap(lo[a], hi[a], lo[b], hi[b], sp), False)
                continue
            s_lo, s_hi = np.maximum(lo[b], box_lo), np.minimum(hi[b], box_hi)
            mb = shapes[b].mask[tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(s_lo, s_hi, lo[b]))]
            db = dist[tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(s_lo, s_hi, box_lo))][mb]
            if db.size == 0:
                out[(a, b)] = (False, max(GAP_SEARCH_MM, _box_gap(lo[a], hi[a], lo[b], hi[b], sp)), False)
                continue
            d = float(db.min())
            contact = d <= touch
            overlap = d == 0.0
            if contact and not overlap:  # containment implies contact: only then fill holes
                overlap = _contained(shapes[b].mask, lo[b], filled(a), lo[a]) or \
                    _contained(shapes[a].mask, lo[a], filled(b), lo[b])
            out[(a, b)] = (contact, 0.0 if contact else d, overlap)
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

    sp = tuple(float(v) for v in spacing)
    names = sorted({n for s in subjects.values() for n in s}, key=organ_sort_key)
    organs = []
    for label, name in enumerate(names, start=1):
        shapes = [s[name] for s in subjects.values() if name in s]
        mean, cov = anchor_stats([s.centroid_mm for s in shapes])
        organs.append(Organ(name, label, shapes, mean, cov))
    relations = {}
    for sid, shapes in tqdm(subjects.items(), desc="organ graph", unit="subject", disable=not progress):
        relations[sid] = pair_relations(shapes, sp)
    edges = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            per = [(s[a].centroid_mm, s[b].centroid_mm, relations[sid][(a, b)])
                   for sid, s in subjects.items() if a in s and b in s]
            if per:
                edges.append(_edge(a, b, per))
    return ShapeBank(spacing=sp, subjects=list(subjects), organs=organs, edges=edges, meta=dict(meta or {}))
