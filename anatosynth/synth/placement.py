"""Structure-aware sequential placement: lay a bank's organs out in a synthetic body (numpy, CPU).

This module holds all the *random* geometric decisions of one sample. Organs are placed one by one in
an order derived from the graph. Each instance is drawn from any subject, augmented (scale, rotation,
smooth elastic displacement) and positioned from its anchor and its already-placed neighbours; a
forbidden overlap with a placed organ is resolved by redrawing, then by shifting along the edge's
typical direction, then by dropping the organ (recorded). Overlaps are checked on a coarse occupancy
grid (twice the bank spacing) in the body frame, one bit per organ, so ``"allowed"`` edges (e.g.
containment) can overlap while every other pair cannot. The warped masks themselves are rasterised
later, in torch, by :mod:`anatosynth.synth.generator`.

Geometry of one placed instance: a body-frame point ``x`` (mm) maps to the source shape's local
coordinates (mm, relative to the shape's centroid) by ``u = M (x - centre)``, then
``src = u + d(u)`` where ``d`` is a trilinear interpolation of a coarse displacement grid spanning the
source bounding box. ``M = (R S)^-1`` with rotation ``R`` and per-axis scale ``S``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage, signal
from scipy.spatial.transform import Rotation

from anatosynth.bank.model import ShapeBank
from anatosynth.errors import ConfigError
from anatosynth.synth.config import SynthConfig
from anatosynth.synth.warp import pad_mask, warp_sample

__all__ = ["ShapeGeometry", "OrganPlacement", "Layout", "BodyModel", "placement_order"]


@dataclass
class ShapeGeometry:
    """Static geometry of one bank shape, precomputed once per stream.

    Attributes:
        lo_mm: local mm (relative to the centroid) of source voxel [0, 0, 0].
        span_mm: size of the source bounding box (voxel centres), never zero; the elastic domain.
        shape: source mask shape.
        extent_mm: bounding-box size in mm.
        support: the mask dilated by one voxel, padded, float32 [1, 1, ...] (CPU). Its warped
            trilinear samples contain those of the mask, so the layout check is conservative.
    """

    lo_mm: np.ndarray
    span_mm: np.ndarray
    shape: tuple[int, int, int]
    extent_mm: np.ndarray
    support: torch.Tensor


@dataclass
class OrganPlacement:
    """One organ instance laid out in the body frame (all that rasterising it needs).

    Attributes:
        organ: index into ``bank.organs`` (label is ``organ + 1``).
        shape: index into that organ's shapes.
        centre_mm: body-frame position of the instance's (undeformed) centroid.
        matrix: (3, 3) body → source-local linear map ``M = (R S)^-1``.
        elastic: (3, n, n, n) float32 displacement (mm) at control points over the source box.
        bbox_mm: (2, 3) conservative body-frame bounding box of the warped instance.
        attempts: position draws used (1 = the first draw was free).
        shift_mm: length of the shift that resolved a forbidden overlap (0 when none).
        anchor_distance_mm: distance from the centre to the organ's anchor mean.
    """

    organ: int
    shape: int
    centre_mm: np.ndarray
    matrix: np.ndarray
    elastic: np.ndarray
    bbox_mm: np.ndarray
    attempts: int = 1
    shift_mm: float = 0.0
    anchor_distance_mm: float = 0.0


@dataclass
class Layout:
    """A synthetic body: placed organs (in placement order), organs dropped (with reasons), body scale."""

    placed: list[OrganPlacement]
    dropped: list[dict] = field(default_factory=list)
    body_scale: float = 1.0


@dataclass
class _Footprint:
    """Coarse occupancy of an instance on the body lattice (cell ``i`` at ``i * coarse`` mm): ``hit``
    covers cells ``q + index``. A whole-cell translation of the instance translates it exactly."""

    q: np.ndarray
    offset: np.ndarray
    hit: np.ndarray


def placement_order(bank: ShapeBank, use_graph: bool) -> list[int]:
    """Organ indices in placement order.

    With the graph: the largest organ first (typically the liver), then repeatedly the unplaced organ
    with the strongest total contact to those already placed (ties: larger first), i.e. a greedy
    breadth-first walk over strong-contact edges. Without it: largest first.
    """
    volumes = [float(np.mean([s.volume_ml for s in o.shapes])) for o in bank.organs]
    by_size = sorted(range(len(bank.organs)), key=lambda i: (-volumes[i], i))
    if not use_graph or not by_size:
        return by_size
    names = [o.name for o in bank.organs]
    contact = np.zeros((len(names), len(names)))
    for e in bank.edges:
        if e.a in names and e.b in names:
            i, j = names.index(e.a), names.index(e.b)
            contact[i, j] = contact[j, i] = e.contact
    order = [by_size[0]]
    rest = by_size[1:]
    while rest:
        best = max(rest, key=lambda i: (round(float(contact[i, order].sum()), 9), volumes[i], -i))
        order.append(best)
        rest.remove(best)
    return order


def _rotation(rng: np.random.Generator, max_deg: float, free: bool) -> np.ndarray:
    """A random rotation: uniform over SO(3) when ``free``, else about a random axis by ±max_deg."""
    if free:
        return Rotation.random(random_state=rng).as_matrix()
    axis = rng.normal(size=3)
    axis /= max(float(np.linalg.norm(axis)), 1e-12)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    return Rotation.from_rotvec(axis * angle).as_matrix()


class BodyModel:
    """Everything placement needs from a bank, precomputed once: shapes, order, relations, body box.

    Args:
        bank: the shape bank.
        config: synthesis configuration (mode and ablation switches).

    Raises:
        ConfigError: empty bank, or no organ that fits the patch.
    """

    def __init__(self, bank: ShapeBank, config: SynthConfig):
        if bank is None or not bank.organs or not any(o.shapes for o in bank.organs):
            raise ConfigError("the shape bank is empty (no organ shapes); build one with 'anatosynth bank build'")
        self.bank = bank
        self.config = config
        self.spacing = np.asarray(bank.spacing, dtype=np.float64)
        self.coarse = 2.0 * self.spacing
        self.organs = [i for i, o in enumerate(bank.organs) if o.shapes]
        self.geometry = [[self._geometry(s) for s in o.shapes] for o in bank.organs]
        self._check_fits()
        self.free = config.mode == "random"
        self.use_anchors = config.anchors and not self.free
        self.use_graph = config.graph and not self.free
        self.coherence = config.subject_coherence if self.use_anchors else 0.0
        # subject -> {organ: index of that subject's shape}, for subject-coherent bodies
        self.subject_shapes: dict[str, dict[int, int]] = {}
        for k, o in enumerate(bank.organs):
            for i, sh in enumerate(o.shapes):
                self.subject_shapes.setdefault(sh.subject, {}).setdefault(k, i)
        self.subjects = sorted(self.subject_shapes)
        order = placement_order(bank, self.use_graph)
        self.order = [i for i in order if i in self.organs]
        self._relations()
        self._body_box()


    # ---- precomputation -------------------------------------------------------------------
    def _geometry(self, s) -> ShapeGeometry:
        mask = np.asarray(s.mask, dtype=bool)
        lo = np.asarray(s.origin_mm, dtype=np.float64) - np.asarray(s.centroid_mm, dtype=np.float64)
        span = np.maximum((np.asarray(mask.shape) - 1) * self.spacing, 1e-3)
        support = mask if self.config.collision_margin == 0 else ndimage.binary_dilation(
            np.pad(mask, 1), np.ones((3, 3, 3), bool), iterations=self.config.collision_margin)[1:-1, 1:-1, 1:-1]
        nx, ny, nz = (int(v) for v in mask.shape)
        return ShapeGeometry(lo, span, (nx, ny, nz),
                             np.asarray(mask.shape) * self.spacing, pad_mask(support))

    def _check_fits(self) -> None:
        """Some organ, at the smallest scale, must fit the patch whole (sides compared sorted, as the
        organ may be turned); otherwise patches could only ever show fragments."""
        patch_mm = np.asarray(self.config.patch) * self.spacing
        extents = [g.extent_mm * self.config.scale[0] for gs in self.geometry for g in gs]
        if not any(np.all(np.sort(e) <= np.sort(patch_mm)) for e in extents):
            smallest = min(extents, key=lambda e: float(e.max()))
            raise ConfigError(
                f"no organ fits the patch: {'x'.join(map(str, self.config.patch))} voxels at "
                f"{'x'.join(f'{v:g}' for v in self.spacing)} mm is {'x'.join(f'{v:.0f}' for v in patch_mm)} mm, "
                f"the smallest organ spans {'x'.join(f'{v:.0f}' for v in smallest)} mm; use a larger patch")

    def _relations(self) -> None:
        """Forbidden pairs (matrix and per-organ bitmasks) and oriented offsets between organs."""
        n = len(self.bank.organs)
        names = [o.name for o in self.bank.organs]
        self.forbidden = np.ones((n, n), dtype=bool)
        np.fill_diagonal(self.forbidden, False)
        self.offset: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float, np.ndarray]] = {}
        for e in self.bank.edges:
            if e.a not in names or e.b not in names:
                continue
            i, j = names.index(e.a), names.index(e.b)
            if e.overlap == "allowed":
                self.forbidden[i, j] = self.forbidden[j, i] = False
            if e.n_subjects > 0:
                mean = np.asarray(e.offset_mean_mm, dtype=np.float64)
                cov = np.asarray(e.offset_cov_mm, dtype=np.float64)
                d = np.asarray(e.direction, dtype=np.float64)
                self.offset[(i, j)] = (mean, cov, float(e.contact), d)
                self.offset[(j, i)] = (-mean, cov, float(e.contact), -d)
        self.words = (n + 63) // 64
        self.bits = np.zeros((n, self.words), dtype=np.uint64)
        for i in range(n):
            self.bits[i, i // 64] = np.uint64(1) << np.uint64(i % 64)
        self.forbidden_bits = np.zeros((n, self.words), dtype=np.uint64)
        for i in range(n):
            for other in np.nonzero(self.forbidden[i])[0]:
                self.forbidden_bits[i] |= self.bits[other]

    def _body_box(self) -> None:
        """Body box: where the organs lie (anchor means ± half the mean extents), body scale 1."""
        means = np.array([self.bank.organs[i].anchor_mean_mm for i in self.organs], dtype=np.float64)
        halves = np.array([np.mean([g.extent_mm for g in self.geometry[i]], axis=0) / 2 for i in self.organs])
        self.box_lo = (means - halves).min(0)
        self.box_hi = (means + halves).max(0)

    # ---- drawing one layout ---------------------------------------------------------------
    def draw(self, rng: np.random.Generator) -> Layout:
        """Place every organ of the bank once, in order; see the module docstring."""
        body_scale = float(rng.uniform(*self.config.scale))
        self._body_scale = body_scale
        # one subject's organs, at that subject's positions (drawn only when enabled: default bytes unchanged)
        self._subject = None
        if self.coherence > 0 and rng.uniform() < self.coherence:
            self._subject = self.subjects[int(rng.integers(len(self.subjects)))]
        occupied: list[tuple[int, np.ndarray, np.ndarray]] = []  # (organ, first cell, hit) per placed organ
        placed: list[OrganPlacement] = []
        dropped: list[dict] = []
        for k in self.order:
            p = self._place(rng, k, body_scale, placed, occupied)
            if isinstance(p, dict):
                dropped.append(p)
            else:
                placed.append(p)
        return Layout(placed, dropped, body_scale)

    def _augment(self, rng: np.random.Generator, k: int, body_scale: float) -> tuple[int, np.ndarray, np.ndarray]:
        """Shape choice and augmentation of organ ``k``: (shape index, matrix M, elastic field)."""
        cfg = self.config
        s = int(rng.integers(len(self.bank.organs[k].shapes)))
        own = self._own_shape(k)
        if own is not None:
            s = own
        scale = body_scale * rng.uniform(1 - cfg.anisotropy, 1 + cfg.anisotropy, size=3)
        # bounded so that no point of the organ moves more than rotation_mm (long organs turn less)
        half = 0.5 * float(self.geometry[k][s].extent_mm.max())
        max_deg = min(cfg.rotation_deg, float(np.rad2deg(cfg.rotation_mm / max(half, 1e-6))))
        rot = _rotation(rng, max_deg, self.free)
        matrix = np.diag(1.0 / scale) @ rot.T
        n = cfg.elastic_points
        elastic = np.clip(rng.normal(0.0, 1.0, size=(3, n, n, n)), -2.5, 2.5) * cfg.elastic_mm
        return s, matrix, elastic.astype(np.float32)

    def _own_shape(self, k: int) -> int | None:
        """Index of the body's subject's shape of organ k (subject-coherent bodies), else None."""
        return None if self._subject is None else self.subject_shapes[self._subject].get(k)

    def _position_gaussian(self, k: int, body_scale: float,
                           placed: list[OrganPlacement]) -> tuple[np.ndarray, np.ndarray] | None:
        """Mean and covariance of organ k's centre: product of the anchor and neighbour Gaussians
        (positions and offsets scaled with the body); None when neither informs it. A subject-coherent
        body uses its subject's own centroid instead (the subject's own layout is overlap-free)."""
        cfg = self.config
        eye = np.eye(3) * (cfg.jitter_mm ** 2 + 1e-6)
        b = body_scale
        own = self._own_shape(k)
        if own is not None:
            return b * np.asarray(self.bank.organs[k].shapes[own].centroid_mm, dtype=np.float64), eye
        terms = []
        if self.use_anchors:
            o = self.bank.organs[k]
            cov = np.asarray(o.anchor_cov_mm, dtype=np.float64) * (b * cfg.anchor_spread) ** 2
            terms.append((b * np.asarray(o.anchor_mean_mm, dtype=np.float64), cov + eye))
        if self.use_graph:
            near = [(self.offset[(p.organ, k)], p) for p in placed if (p.organ, k) in self.offset]
            touching = [t for t in near if t[0][2] > 0]
            if touching:
                chosen = sorted(touching, key=lambda t: (-t[0][2], t[1].organ))[: cfg.max_neighbours]
            else:
                chosen = sorted(near, key=lambda t: (float(np.linalg.norm(t[0][0])), t[1].organ))[:1]
            for (mean, cov, _, _), p in chosen:
                terms.append((p.centre_mm + b * mean, cov * b ** 2 + eye))
        if not terms:
            return None
        precisions = [np.linalg.inv(c) for _, c in terms]
        cov = np.linalg.inv(sum(precisions))
        mean = cov @ sum(p @ m for p, (m, _) in zip(precisions, terms))
        return mean, (cov + cov.T) / 2

    def _draw_centre(self, rng: np.random.Generator, gauss, body_scale: float) -> np.ndarray:
        if gauss is None:
            return rng.uniform(self.box_lo * body_scale, self.box_hi * body_scale)
        mean, cov = gauss
        return mean + np.linalg.cholesky(cov) @ rng.normal(size=3)

    def _bbox(self, g: ShapeGeometry, centre: np.ndarray, matrix: np.ndarray, elastic: np.ndarray) -> np.ndarray:
        """Conservative body-frame bbox of the warped instance (source box corners plus displacement)."""
        inv = np.linalg.inv(matrix)
        margin = float(np.abs(elastic).max()) + 2 * float(self.spacing.max())
        lo, hi = g.lo_mm - margin, g.lo_mm + g.span_mm + margin
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        pts = corners @ inv.T + centre
        return np.stack([pts.min(0), pts.max(0)])

    def _footprint(self, g: ShapeGeometry, centre, matrix, elastic) -> _Footprint:
        """Coarse occupancy of the instance on the body lattice (cells ``i * coarse``, body frame)."""
        bbox = self._bbox(g, centre, matrix, elastic)
        first = np.floor(bbox[0] / self.coarse).astype(np.int64)
        last = np.ceil(bbox[1] / self.coarse).astype(np.int64)
        rel = [np.arange(first[a], last[a] + 1) * self.coarse[a] - centre[a] for a in range(3)]
        value = warp_sample(g.support, g.lo_mm, g.span_mm, self.spacing, rel, matrix, elastic)
        hit = (value > 0.5).numpy()
        if not hit.any():
            return _Footprint(first, np.zeros(3, np.int64), hit)
        idx = np.argwhere(hit)
        lo, hi = idx.min(0), idx.max(0) + 1
        return _Footprint(first + lo, np.zeros(3, np.int64), hit[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])

    def _clash(self, k: int, fp: _Footprint, shift: np.ndarray, occupied) -> int:
        """The first placed organ that k (footprint shifted by whole cells) would overlap, or -1.

        Overlapping cells up to ``layout_tolerance`` of k's cells are tolerated (the organ yields those
        voxels when it is painted, see ``max_carve``)."""
        start = fp.q + shift
        stop = start + np.asarray(fp.hit.shape)
        allowance = self.config.layout_tolerance * float(fp.hit.sum())
        first, overlap = -1, 0
        for j, s_j, hit_j in occupied:
            if not self.forbidden[k, j]:
                continue
            lo = np.maximum(start, s_j)
            hi = np.minimum(stop, s_j + np.asarray(hit_j.shape))
            if np.any(hi <= lo):
                continue
            a = fp.hit[tuple(slice(int(low - s), int(high - s)) for low, high, s in zip(lo, hi, start))]
            b = hit_j[tuple(slice(int(low - s), int(high - s)) for low, high, s in zip(lo, hi, s_j))]
            n = int(np.count_nonzero(a & b))
            if n:
                first = j if first < 0 else first
                overlap += n
                if overlap > allowance:
                    return first
        return -1

    def _place(self, rng: np.random.Generator, k: int, body_scale: float, placed: list[OrganPlacement],
               occupied) -> OrganPlacement | dict:
        """Place organ k: draw; on a forbidden overlap redraw, then shift to the nearest free position
        (favouring the edge's typical direction), for the drawn shape and then for up to two other
        shapes of the organ, then drop (returned as a dict record)."""
        cfg = self.config
        s, matrix, elastic = self._augment(rng, k, body_scale)
        g = self.geometry[k][s]
        gauss = self._position_gaussian(k, body_scale, placed)
        centre0 = self._draw_centre(rng, gauss, body_scale)
        # whole-cell translations keep the footprint exact, so redraws are rounded to whole cells
        fp = self._footprint(g, centre0, matrix, elastic)
        blocker = -1
        for attempt in range(cfg.retries + 1):
            if attempt == 0:
                shift = np.zeros(3, dtype=np.int64)
            else:
                shift = np.rint((self._draw_centre(rng, gauss, body_scale) - centre0) / self.coarse).astype(np.int64)
            hit = self._clash(k, fp, shift, occupied)
            if hit < 0:
                return self._accept(k, s, centre0, shift, matrix, elastic, g, fp, occupied, attempt + 1, False)
            if blocker < 0:
                blocker = hit
        prefer = self._typical_direction(blocker, k)
        others = [int(i) for i in rng.permutation(len(self.bank.organs[k].shapes)) if i != s][:2]
        for n_shape, si in enumerate([s] + others):
            if si != s:
                g = self.geometry[k][si]
                fp = self._footprint(g, centre0, matrix, elastic)
            free = self._nearest_free(k, fp, occupied, prefer, centre0, gauss)
            if free is not None:
                return self._accept(k, si, centre0, free, matrix, elastic, g, fp, occupied,
                                    cfg.retries + 1 + n_shape, True)
        return {"organ": self.bank.organs[k].name, "reason": "forbidden overlap after "
                f"{cfg.retries + 1} draws and no free position within {cfg.max_shift_mm:g} mm for any shape",
                "blocked_by": self.bank.organs[blocker].name if blocker >= 0 else None}

    def _shift_cost(self, shifts: np.ndarray, prefer: np.ndarray | None, centre0: np.ndarray,
                    gauss) -> np.ndarray:
        """Cost of whole-cell shifts. With a position Gaussian: the Mahalanobis distance of the shifted
        centre (the most probable free position wins, so an organ tightly anchored across, say,
        left-right moves along its loose axes instead). Without one: the length in mm. Either way
        less a small bonus for moving along ``prefer`` (the graph's typical direction)."""
        mm = shifts * self.coarse
        length = np.linalg.norm(mm, axis=1)
        if gauss is not None:
            mean, cov = gauss
            d = centre0 + mm - mean
            maha = np.sqrt(np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d))
            cost = maha * float(np.sqrt(np.trace(cov) / 3))  # back in mm, so the bonus below keeps its scale
        else:
            cost = length
        if prefer is not None and np.linalg.norm(prefer) > 1e-6:
            cost = cost - 0.25 * (mm @ (prefer / np.linalg.norm(prefer)))
        return np.round(cost, 6)

    def _nearest_free(self, k: int, fp: _Footprint, occupied, prefer: np.ndarray | None,
                      centre0: np.ndarray, gauss) -> np.ndarray | None:
        """The cheapest whole-cell shift within ``max_shift_mm`` at which the footprint meets no organ
        it may not overlap, found for all shifts at once by an FFT cross-correlation of the footprint
        with the forbidden occupancy. Ties favour the graph's typical direction."""
        r = np.floor(self.config.max_shift_mm / self.coarse).astype(np.int64)
        start = fp.q - r
        size = np.asarray(fp.hit.shape) + 2 * r
        region = np.zeros(tuple(size), dtype=np.float32)
        for j, s_j, hit_j in occupied:
            if not self.forbidden[k, j]:
                continue
            lo = np.maximum(start, s_j)
            hi = np.minimum(start + size, s_j + np.asarray(hit_j.shape))
            if np.any(hi <= lo):
                continue
            sub = hit_j[tuple(slice(int(low - s), int(high - s)) for low, high, s in zip(lo, hi, s_j))]
            view = region[tuple(slice(int(low - s), int(high - s)) for low, high, s in zip(lo, hi, start))]
            np.maximum(view, sub, out=view)
        overlap = signal.fftconvolve(region, fp.hit[::-1, ::-1, ::-1].astype(np.float32), mode="valid")
        free = np.argwhere(overlap < 0.5) - r
        if not len(free):
            return None
        order = np.lexsort((free[:, 2], free[:, 1], free[:, 0], self._shift_cost(free, prefer, centre0, gauss)))
        return free[order[0]].astype(np.int64)

    def _typical_direction(self, other: int, k: int) -> np.ndarray | None:
        """The graph's typical direction from ``other`` to ``k`` (None without graph or edge)."""
        if other < 0 or not self.use_graph or (other, k) not in self.offset:
            return None
        return np.asarray(self.offset[(other, k)][3], dtype=np.float64)

    def _accept(self, k, s, centre0, shift, matrix, elastic, g, fp, occupied, attempts, moved) -> OrganPlacement:
        """Record the organ's cells as occupied and return its placement (anchor distance measured to
        the anchor mean scaled with this body)."""
        occupied.append((k, fp.q + shift, fp.hit))
        centre = centre0 + shift * self.coarse
        anchor = self._body_scale * np.asarray(self.bank.organs[k].anchor_mean_mm, dtype=np.float64)
        shift_mm = float(np.linalg.norm(shift * self.coarse)) if moved else 0.0
        return OrganPlacement(k, s, centre, matrix, elastic, self._bbox(g, centre, matrix, elastic),
                              attempts, shift_mm, float(np.linalg.norm(centre - anchor)))
