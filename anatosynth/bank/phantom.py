"""``builtin:phantom``: a procedural abdominal phantom, so that everything runs offline without data.

Each phantom subject is a label map painted from smooth, randomly deformed organ primitives
(ellipsoids with low-frequency radial perturbations, and tubes along curved centre lines) whose
sizes, positions and contacts follow published adult reference anatomy (organ volumes from ICRP
Publication 89 reference masses; positions and neighbours from standard anatomy texts, Gray's Anatomy
42nd ed.; see docs/method.md). The maps then go through exactly the same cutting
(:func:`~anatosynth.bank.shapes.subject_shapes`) and graph code as real label maps, so contacts and
directions are measured, not declared.

Coordinates below are millimetres, RAS (+x patient right, +y anterior, +z superior), origin at the
front of the first lumbar vertebral body. The phantom is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from anatosynth.bank.graph import assemble_bank
from anatosynth.bank.model import ShapeBank
from anatosynth.bank.shapes import subject_shapes

__all__ = ["PHANTOM_ORGANS", "phantom_label_map", "phantom_bank"]

BODY_LO = np.array([-170.0, -120.0, -110.0])
BODY_HI = np.array([180.0, 130.0, 170.0])


@dataclass(frozen=True)
class Blob:
    """Deformed ellipsoid: centre, semi-axes (mm), rotation (Euler degrees about x, y, z), taper along x,
    and an optional dent (centre x, y, z and radius in semi-axis units) carved from it, e.g. a hilum."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    euler: tuple[float, float, float] = (0.0, 0.0, 0.0)
    taper: float = 0.0
    dent: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Tube:
    """Tube along a polyline of control points (mm) with radius interpolated from ``radii``."""

    points: tuple[tuple[float, float, float], ...]
    radii: tuple[float, ...]


# name → primitive, in painting order: later organs overwrite earlier ones where they meet, which is
# how the phantom gets its contacts (liver-kidney, spleen-stomach, pancreas-duodenum, ...).
# Target volumes (ICRP 89 adult reference, ml): liver ~1500-1800, spleen ~150, kidneys ~150 each,
# pancreas ~80-140, stomach (wall + content, moderately filled) ~250-400, gallbladder ~30-50, adrenals ~5.
PHANTOM_ORGANS: dict[str, Blob | Tube] = {
    "liver": Blob((50, 8, 60), (82, 64, 56), (0, 0, -10), taper=0.3),
    "stomach": Tube(((-52, 15, 78), (-48, 28, 50), (-38, 42, 24), (-18, 46, 12), (0, 38, 16)),
                    (30, 31, 27, 19, 12)),
    "spleen": Blob((-90, -20, 50), (28, 24, 55), (0, 20, -30), dent=(1.0, 0.5, 0.0, 0.6)),
    "kidney_right": Blob((65, -55, -15), (28, 22, 55), (-10, 15, 0), dent=(-1.05, 0.1, 0.0, 0.45)),
    "kidney_left": Blob((-62, -50, 2), (28, 22, 55), (-10, -15, 0), dent=(1.05, 0.1, 0.0, 0.45)),
    "duodenum": Tube(((-5, 35, 22), (20, 25, 10), (45, 15, -5), (48, 5, -30), (30, 0, -52), (0, 0, -55), (-22, 5, -40)),
                     (13, 13, 12, 12, 11, 11, 11)),
    "pancreas": Tube(((30, 5, -25), (5, 10, -5), (-30, 5, 10), (-65, -10, 25), (-88, -20, 35)),
                     (18, 13, 11, 10, 8)),
    "gallbladder": Blob((55, 40, 5), (16, 38, 16), (35, 0, 15)),
    "esophagus": Tube(((-5, -20, 170), (-10, -15, 120), (-22, -5, 85), (-40, 10, 70)), (9, 9, 9, 10)),
    "inferior_vena_cava": Tube(((8, -18, -110), (9, -17, -30), (20, -10, 60), (22, -10, 140)),
                               (11, 11, 12, 13)),
    "aorta": Tube(((-12, -20, -110), (-14, -22, 0), (-14, -25, 80), (-10, -30, 150)), (10, 11, 11, 12)),
    "adrenal_gland_right": Blob((26, -36, 38), (7, 12, 16), (0, 0, 20)),
    "adrenal_gland_left": Blob((-40, -32, 40), (7, 12, 16), (0, 0, -20)),
}


def _rotation(euler_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(euler_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class _Draw:
    """One subject's random parameters for one organ (drawn first, applied deterministically)."""

    shift: np.ndarray
    scale: np.ndarray
    freqs: np.ndarray
    phases: np.ndarray
    amps: np.ndarray


def _draw(rng: np.random.Generator, body_scale: float) -> _Draw:
    freqs = rng.normal(size=(4, 3))
    freqs /= np.linalg.norm(freqs, axis=1, keepdims=True)
    return _Draw(shift=rng.normal(0, 5.0, 3), scale=body_scale * rng.normal(1.0, 0.06, 3).clip(0.8, 1.2),
                 freqs=freqs * 2.5, phases=rng.uniform(0, 2 * np.pi, 4), amps=rng.uniform(0.0, 0.05, 4))


def _axes_mm(lo: np.ndarray, hi: np.ndarray, spacing: np.ndarray, stride: int = 1) -> list[np.ndarray]:
    """mm coordinates of the grid voxel centres in index box [lo, hi) along each axis (every ``stride``-th)."""
    return [(BODY_LO[i] + spacing[i] * np.arange(lo[i], hi[i], stride)).astype(np.float32) for i in range(3)]


def _paint(label: np.ndarray, value: int, inside, lo_mm: np.ndarray, hi_mm: np.ndarray,
           spacing: np.ndarray, stride: int = 3) -> None:
    """Set ``label`` to ``value`` where ``inside(points_mm) -> bool`` holds, searching a mm box.

    A coarse pass (every ``stride``-th voxel) finds where the organ is, then only that region is
    evaluated at full resolution: the loose boxes of deformed shapes are mostly empty.
    """
    shape = np.array(label.shape)
    lo = np.clip(np.floor((lo_mm - BODY_LO) / spacing).astype(int), 0, shape - 1)
    hi = np.clip(np.ceil((hi_mm - BODY_LO) / spacing).astype(int) + 1, 1, shape)
    coarse = _axes_mm(lo, hi, spacing, stride)
    hit = inside(np.stack(np.meshgrid(*coarse, indexing="ij"), axis=-1))
    if not hit.any():
        return
    near = ndimage.binary_dilation(hit, structure=np.ones((3, 3, 3), bool))
    idx = np.nonzero(near)
    lo2 = np.maximum(lo + np.array([i.min() for i in idx]) * stride - stride, lo)
    hi2 = np.minimum(lo + np.array([i.max() for i in idx]) * stride + stride + 1, hi)
    # fine voxels whose nearest coarse sample is in or next to the organ
    fine_k = [np.minimum((np.arange(a, b) - low + stride // 2) // stride, n - 1)
              for a, b, low, n in zip(lo2, hi2, lo, near.shape)]
    cand = near[np.ix_(*fine_k)]
    fidx = np.nonzero(cand)
    pts = np.stack([(BODY_LO[i] + spacing[i] * (lo2[i] + fidx[i])).astype(np.float32) for i in range(3)], axis=-1)
    keep = inside(pts)
    region = label[tuple(slice(a, b) for a, b in zip(lo2, hi2))]
    region[tuple(f[keep] for f in fidx)] = value


def _mat(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``x @ m`` for (..., 3) points as three broadcast products (no BLAS threads for tiny matrices)."""
    return x[..., 0:1] * m[0] + x[..., 1:2] * m[1] + x[..., 2:3] * m[2]


def _paint_blob(label: np.ndarray, value: int, blob: Blob, d: _Draw, spacing: np.ndarray) -> None:
    centre = (np.asarray(blob.centre, float) + d.shift).astype(np.float32)
    semi = np.asarray(blob.semi, float) * d.scale
    rot = _rotation(blob.euler)
    m = (rot / semi[None, :]).astype(np.float32)  # world offset -> normalised ellipsoid coordinates
    freqs, phases, amps = (d.freqs.T.astype(np.float32), d.phases.astype(np.float32),
                           d.amps.astype(np.float32))

    def inside(pts: np.ndarray) -> np.ndarray:
        q = _mat(pts - centre, m)
        r = np.sqrt((q * q).sum(-1))
        u = q / np.maximum(r, 1e-6)[..., None]
        wobble = 1.0 + (amps * np.cos(_mat(u, freqs) + phases)).sum(-1)
        if blob.taper:
            r = r / np.clip(1.0 + blob.taper * u[..., 0] * np.minimum(r, 1.5), 0.3, None)
        keep = r <= wobble
        if blob.dent is not None:
            dent = np.asarray(blob.dent[:3], np.float32)
            keep &= ((q - dent) ** 2).sum(-1) > blob.dent[3] ** 2
        return keep

    reach = semi.max() * (1.0 + amps.sum()) * (1.0 + 1.5 * abs(blob.taper))
    _paint(label, value, inside, centre - reach, centre + reach, spacing)


def _paint_tube(label: np.ndarray, value: int, tube: Tube, d: _Draw, spacing: np.ndarray) -> None:
    ctrl = np.asarray(tube.points, float) + d.shift
    seg = np.linalg.norm(np.diff(ctrl, axis=0), axis=1)
    t_ctrl = np.concatenate([[0], np.cumsum(seg)])
    t = np.linspace(0, t_ctrl[-1], int(t_ctrl[-1] / 0.75) + 2)
    centre = np.stack([np.interp(t, t_ctrl, ctrl[:, i]) for i in range(3)], axis=1)
    wob = 1.0 + (d.amps[:2, None] * np.sin(t[None] / 25.0 + d.phases[:2, None])).sum(0)
    radius = np.interp(t, t_ctrl, tube.radii) * d.scale.mean() * wob
    reach = radius.max() + 2
    tree = cKDTree(centre)

    def inside(pts: np.ndarray) -> np.ndarray:
        dist, idx = tree.query(pts.reshape(-1, 3), distance_upper_bound=reach)
        ok = np.isfinite(dist)
        res = np.zeros(len(dist), bool)
        res[ok] = dist[ok] <= radius[idx[ok]]
        return res.reshape(pts.shape[:-1])

    _paint(label, value, inside, centre.min(0) - reach, centre.max(0) + reach, spacing, stride=2)


def phantom_label_map(seed: int | np.random.SeedSequence, spacing=(1.5, 1.5, 2.0)) -> tuple[np.ndarray, dict[int, str]]:
    """One phantom subject: RAS label map at ``spacing`` and its id → name map."""
    sp = np.asarray(spacing, float)
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss)
    body_scale = float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))
    draws = {name: _draw(rng, body_scale) for name in PHANTOM_ORGANS}
    shape = tuple(int(np.ceil((high - low) / s)) + 1 for low, high, s in zip(BODY_LO, BODY_HI, sp))
    label = np.zeros(shape, np.int16)
    names = {}
    for value, (name, prim) in enumerate(PHANTOM_ORGANS.items(), start=1):
        names[value] = name
        if isinstance(prim, Blob):
            _paint_blob(label, value, prim, draws[name], sp)
        else:
            _paint_tube(label, value, prim, draws[name], sp)
    return label, names


def _subject_id(i: int, seed: int) -> str:
    return hashlib.sha256(f"anatosynth-phantom:{seed}:{i}".encode()).hexdigest()[:16]


def phantom_bank(n_subjects: int = 5, seed: int = 0, spacing=(1.5, 1.5, 2.0)) -> ShapeBank:
    """The procedural phantom bank: ``n_subjects`` deformed instances of the reference layout."""
    children = np.random.SeedSequence(seed).spawn(n_subjects)
    subjects, frames = {}, {}
    for i, ss in enumerate(children):
        label, names = phantom_label_map(ss, spacing)
        sid = _subject_id(i, seed)
        cut = subject_shapes(label, spacing, names, sid)
        subjects[sid] = cut.shapes
        frames[sid] = cut.frame
    meta = {"source": "builtin:phantom", "seed": int(seed), "n_subjects": int(n_subjects),
            "frames": frames}
    return assemble_bank(spacing, subjects, meta)
