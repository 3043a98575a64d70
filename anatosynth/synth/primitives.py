"""PrimGeoSeg-style formula-driven primitives: the FDSL baseline in the same pipeline.

Following Tadokoro et al. (BMVC 2023; see docs/method.md): 32 classes = 8 cross-sections (ellipse and
random 3- to 9-gons with one vertex per angular sector) x 4 height profiles (prism, pyramid, hourglass,
rhombus). About 20 objects per 96^3 volume, sorted largest first, each placed at a random position that
is retried up to 100 times until at most 70% of its volume overlaps objects already placed (else it is
dropped); later objects' labels win. No 3-D rotation, no noise. The label is the filled shape. The image is
PrimGeoSeg's per-slice contour: either :func:`primitive_contours` (each object's own outline, union over
objects, exactly as PrimGeoSeg draws it) or ``render="contour"`` of :mod:`anatosynth.synth.render`
(outlines of the final label map, the same code path as every other mode).

:func:`draw_primitive_params` does all the random drawing and the overlap test in numpy and stores each
object as integer arrays (a 2-D base mask and a per-slice index map), so :func:`apply_primitives` only
gathers and scatters in torch and rebuilds exactly the masks that the overlap test saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from anatosynth.errors import ConfigError

__all__ = [
    "NUM_PRIMITIVE_CLASSES",
    "PRIMITIVE_CLASS_NAMES",
    "CROSS_SECTIONS",
    "PROFILES",
    "PrimitiveObject",
    "PrimitiveParams",
    "draw_primitive_params",
    "apply_primitives",
    "pack_primitives",
    "paint_primitives",
    "primitive_contours",
    "object_mask",
]

CROSS_SECTIONS = ("ellipse", "triangle", "quadrilateral", "pentagon", "hexagon", "heptagon", "octagon", "nonagon")
PROFILES = ("prism", "hourglass", "pyramid", "rhombus")  # PrimGeoSeg's class order
NUM_PRIMITIVE_CLASSES = len(CROSS_SECTIONS) * len(PROFILES)  # 32
PRIMITIVE_CLASS_NAMES: list[str] = ["background"] + [f"{c}_{p}" for c in CROSS_SECTIONS for p in PROFILES]

BOX_SIDE = (30, 80)  # polygon box side (voxels), uniform integer
MIN_RADIUS = 15  # polygon vertex radius between 15 and half the box side; ellipse semi-axes from 15
ELLIPSE_RMAX = (15, 40)  # ellipse: R_max uniform integer, semi-axes uniform integer in [15, R_max], box 2 max(a, b)
HEIGHT = (10, 50)  # slices, uniform integer
BREAK_MARGIN = 3  # profile break point between slice 3 and height - 3
END_SCALE = (0.8, 1.0)  # hourglass ends / rhombus middle
WAIST_SCALE = (0.3, 0.5)  # hourglass waist / rhombus ends
MAX_OVERLAP = 0.7
MAX_TRIES = 100


@dataclass
class PrimitiveObject:
    """One placed object.

    Attributes:
        label: class id 1..32 (``1 + 4 * cross_section + profile``).
        origin: (x0, y0, z0) voxel of the object's box corner in the patch.
        base: (S, S) bool cross-section at full scale.
        index: (H, S) int32 map, per slice, from box pixel to base pixel (-1 = outside); the same map is
            used for X and Y because the shape is scaled isotropically about the box centre.
        volume: number of voxels of the object.
    """

    label: int
    origin: tuple[int, int, int]
    base: np.ndarray = field(repr=False)
    index: np.ndarray = field(repr=False)
    volume: int = 0

    @property
    def size(self) -> tuple[int, int, int]:
        s = self.base.shape[0]
        return (s, s, self.index.shape[0])


@dataclass
class PrimitiveParams:
    """All objects of one sample, in painting order (later wins), already placed and overlap-checked.

    Attributes:
        patch: (X, Y, Z) size of the label patch.
        objects: placed objects.
        dropped: objects drawn but dropped after 100 placements with too much overlap.
    """

    patch: tuple[int, int, int]
    objects: list[PrimitiveObject]
    dropped: int = 0


def object_mask(obj: PrimitiveObject) -> np.ndarray:
    """The object's bool mask (S, S, H) in its box, [X, Y, Z] order."""
    idx = obj.index  # (H, S)
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    m = obj.base[safe[:, :, None], safe[:, None, :]] & valid[:, :, None] & valid[:, None, :]  # (H, S, S)
    return np.ascontiguousarray(m.transpose(1, 2, 0))


def _polygon_mask(vertices: np.ndarray, side: int) -> np.ndarray:
    """Even-odd point-in-polygon test at the pixel centres of a side x side box (vertices relative to centre)."""
    c = (side - 1) / 2.0
    px, py = np.meshgrid(np.arange(side) - c, np.arange(side) - c, indexing="ij")
    inside = np.zeros((side, side), bool)
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c_, d in zip(x0, y0, x1, y1):
        crosses = (b > py) != (d > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = a + (py - b) * (c_ - a) / (d - b)
        inside ^= crosses & (px < xi)
    return inside


def _ellipse_mask(a: float, b: float, angle_deg: float, side: int) -> np.ndarray:
    """Filled ellipse with semi-axes a, b, rotated in-plane by angle_deg, centred in a side x side box."""
    c = (side - 1) / 2.0
    px, py = np.meshgrid(np.arange(side) - c, np.arange(side) - c, indexing="ij")
    t = np.deg2rad(angle_deg)
    u = px * np.cos(t) + py * np.sin(t)
    v = -px * np.sin(t) + py * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _cross_section(rng: np.random.Generator, kind: int, max_side: int) -> np.ndarray:
    """Draw a base cross-section mask of kind 0 (ellipse) or an n-gon with n = kind + 2 vertices.

    As in PrimGeoSeg: ellipses have R_max ~ U{15..40}, semi-axes ~ U{15..R_max}, a box of side 2 max(a, b)
    and an in-plane rotation ~ U{0..180} degrees; n-gons have a box side ~ U{30..80}, one vertex per
    angular sector (integer degrees, uniform in the sector) at radius ~ U{15..side // 2}.
    """
    if kind == 0:
        r_max = int(rng.integers(ELLIPSE_RMAX[0], ELLIPSE_RMAX[1] + 1))
        a, b = rng.integers(MIN_RADIUS, r_max + 1, size=2)
        angle = int(rng.integers(0, 181))
        side = min(2 * int(max(a, b)), max_side)
        return _ellipse_mask(min(a, side / 2), min(b, side / 2), angle, side)
    side = min(int(rng.integers(BOX_SIDE[0], BOX_SIDE[1] + 1)), max_side)
    n = kind + 2
    bins = np.linspace(0, 360, n + 1)
    angles = np.deg2rad([rng.integers(int(bins[i]), int(bins[i + 1]) + 1) for i in range(n)])
    radii = rng.integers(MIN_RADIUS, max(MIN_RADIUS, side // 2) + 1, size=n).astype(np.float64)
    radii = np.minimum(radii, side / 2.0)
    verts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return _polygon_mask(verts, side)


def _profile(rng: np.random.Generator, name: str, height: int) -> np.ndarray:
    """Per-slice scale factors (height,) of a height profile."""
    z = np.arange(height, dtype=np.float64)
    if name == "prism":
        return np.ones(height)
    if name == "pyramid":  # pyramid / cone: full size at the bottom, shrinking linearly to an apex at the top
        return 1.0 - z / height
    brk = int(rng.integers(BREAK_MARGIN, max(BREAK_MARGIN, height - BREAK_MARGIN) + 1))
    if name == "hourglass":
        e0, mid, e1 = rng.uniform(*END_SCALE), rng.uniform(*WAIST_SCALE), rng.uniform(*END_SCALE)
    else:  # rhombus
        e0, mid, e1 = rng.uniform(*WAIST_SCALE), rng.uniform(*END_SCALE), rng.uniform(*WAIST_SCALE)
    return np.interp(z, [0.0, float(brk), float(height - 1)], [e0, mid, e1])


def _index_map(scales: np.ndarray, side: int) -> np.ndarray:
    """Per-slice map (H, S) from box pixel to base pixel for shapes scaled about the box centre."""
    c = (side - 1) / 2.0
    i = np.arange(side, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        src = np.rint((i[None, :] - c) / scales[:, None] + c)
    ok = np.isfinite(src) & (src >= 0) & (src <= side - 1) & (scales[:, None] > 0)
    return np.where(ok, src, -1).astype(np.int32)


def _draw_object(rng: np.random.Generator, patch: tuple[int, int, int]) -> tuple[PrimitiveObject, np.ndarray]:
    """Draw one unplaced object (class, shape, profile) fitting the patch; returns it and its mask."""
    cls = int(rng.integers(NUM_PRIMITIVE_CLASSES))
    kind, prof = divmod(cls, len(PROFILES))
    base = _cross_section(rng, kind, min(patch[0], patch[1]))
    height = min(int(rng.integers(HEIGHT[0], HEIGHT[1] + 1)), int(patch[2]))
    index = _index_map(_profile(rng, PROFILES[prof], height), base.shape[0])
    obj = PrimitiveObject(label=cls + 1, origin=(0, 0, 0), base=base, index=index)
    mask = object_mask(obj)
    obj.volume = int(mask.sum())
    return obj, mask


def draw_primitive_params(
    rng: np.random.Generator, patch: tuple[int, int, int], n_objects: int = 20
) -> PrimitiveParams:
    """Draw and place the primitives of one sample (PrimGeoSeg's assembly, exact occupancy test).

    Args:
        rng: the sample's generator.
        patch: (X, Y, Z) patch size; boxes larger than the patch are clipped to it.
        n_objects: objects drawn (PrimGeoSeg: 20 per 96^3); some may be dropped for overlap.

    Raises:
        ConfigError: bad patch size or object count.
    """
    patch = tuple(int(v) for v in patch)  # type: ignore[assignment]
    if len(patch) != 3 or any(v < 8 for v in patch):
        raise ConfigError(f"patch must be three sizes of at least 8 voxels, got {patch}")
    if n_objects < 0:
        raise ConfigError(f"n_objects must be >= 0, got {n_objects}")
    objs = [_draw_object(rng, patch) for _ in range(n_objects)]
    objs.sort(key=lambda om: -om[0].volume)  # largest first (stable: ties keep draw order)
    occupied = np.zeros(patch, bool)
    placed: list[PrimitiveObject] = []
    dropped = 0
    for obj, mask in objs:
        sx, sy, sz = mask.shape
        # All candidate positions are drawn up front: the rng advances the same way whatever happens.
        xs = rng.integers(0, patch[0] - sx + 1, size=MAX_TRIES)
        ys = rng.integers(0, patch[1] - sy + 1, size=MAX_TRIES)
        zs = rng.integers(0, patch[2] - sz + 1, size=MAX_TRIES)
        for x, y, z in zip(xs, ys, zs):
            overlap = np.count_nonzero(occupied[x:x + sx, y:y + sy, z:z + sz] & mask)
            if overlap <= MAX_OVERLAP * obj.volume:
                obj.origin = (int(x), int(y), int(z))
                occupied[x:x + sx, y:y + sy, z:z + sz] |= mask
                placed.append(obj)
                break
        else:
            dropped += 1
    return PrimitiveParams(patch=patch, objects=placed, dropped=dropped)


def pack_primitives(params: Sequence[PrimitiveParams],
                    patch: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], list]:
    """Host arrays of a batch's objects, slot by slot (slot k = each sample's k-th object in painting
    order; a sample with fewer objects leaves it empty), and each slot's box (the batch's largest object
    in that slot). The number of slots is the objects drawn per sample, so it does not depend on the batch.

    Raises:
        ConfigError: a sample was drawn for another patch size.
    """
    for b, p in enumerate(params):
        if tuple(p.patch) != tuple(patch):
            raise ConfigError(f"sample {b} was drawn for patch {tuple(p.patch)}, not {tuple(patch)}")
    B = len(params)
    slots = max(len(p.objects) + p.dropped for p in params)
    arrays, boxes = {}, []
    for k in range(slots):
        objs = [p.objects[k] if k < len(p.objects) else None for p in params]
        side = max([o.base.shape[0] for o in objs if o is not None] + [1])
        height = max([o.index.shape[0] for o in objs if o is not None] + [1])
        base = np.zeros((B, side, side), np.float32)
        index = np.full((B, height, side), -1, np.int32)
        info = np.zeros((B, 4), np.float32)  # origin (3), label (0 = empty slot)
        for b, o in enumerate(objs):
            if o is None:
                continue
            s, h = o.base.shape[0], o.index.shape[0]
            base[b, :s, :s] = o.base
            index[b, :h, :s] = o.index
            info[b] = (*o.origin, o.label)
        arrays.update({f"base{k}": base, f"index{k}": index, f"info{k}": info})
        boxes.append((side, height))
    return arrays, boxes


def paint_primitives(a: dict[str, torch.Tensor], boxes: list, patch: tuple[int, int, int], batch: int,
                     device) -> torch.Tensor:
    """Device side: int64 labels [B, X, Y, Z], one batched step per slot (later object wins).

    A slot's masks are gathered from the padded cross-sections and per-slice index maps, then written
    through flat voxel indices; voxels outside an object go to one extra "dump" entry (no compaction)."""
    X, Y, Z = patch
    B = batch
    N = B * X * Y * Z
    out = torch.zeros(N + 1, dtype=torch.int64, device=device)
    dump = torch.full((), N, dtype=torch.int64, device=device)
    b_base = torch.arange(B, device=device).mul_(X * Y * Z).view(B, 1, 1, 1)
    for k, (side, height) in enumerate(boxes):
        base = a[f"base{k}"].reshape(B, side * side)
        info = a[f"info{k}"].long()
        idx = a[f"index{k}"].long().transpose(1, 2).clone(memory_format=torch.contiguous_format)  # [B, S, H]
        valid = idx >= 0
        safe = idx.clamp(min=0)
        # [B, S(x), S(y), H(z)]: voxel (i, j, h) shows base[safe[i, h], safe[j, h]]
        flat = safe[:, :, None, :] * side + safe[:, None, :, :]
        m = base.gather(1, flat.view(B, -1)).view(B, side, side, height) > 0
        m &= valid[:, :, None, :] & valid[:, None, :, :]
        r = [torch.arange(n, device=device) for n in (side, side, height)]
        x = info[:, 0, None] + r[0]
        y = info[:, 1, None] + r[1]
        z = info[:, 2, None] + r[2]
        inside = [(x < X), (y < Y), (z < Z)]
        m &= inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
        target = (b_base + (x * (Y * Z))[:, :, None, None]) + (y * Z)[:, None, :, None]
        target = target + z[:, None, None, :]
        target = torch.where(m, target, dump)
        out.index_put_((target,), info[:, 3].view(B, 1, 1, 1))
    return out[:N].view(B, X, Y, Z)


def apply_primitives(params: Sequence[PrimitiveParams], patch: tuple[int, int, int], device="cpu") -> torch.Tensor:
    """Paint each sample's objects into an int64 label batch [B, X, Y, Z] on ``device`` (later object wins).

    Raises:
        ConfigError: a sample was drawn for another patch size.
    """
    from anatosynth.synth.raster import upload

    patch = tuple(int(v) for v in patch)  # type: ignore[assignment]
    params = list(params)
    arrays, boxes = pack_primitives(params, patch)
    dev = torch.device(device)
    return paint_primitives(upload(arrays, dev), boxes, patch, len(params), dev)


def _object_mask(obj, device) -> tuple[torch.Tensor, tuple[slice, slice, slice]]:
    """An object's filled mask (H, S, S), slice by slice from its cross-section and height profile, and
    the box it occupies in the patch."""
    base = torch.as_tensor(obj.base, device=device)
    idx = torch.as_tensor(obj.index, dtype=torch.int64, device=device)
    valid = idx >= 0
    safe = idx.clamp(min=0)
    m = base[safe[:, :, None], safe[:, None, :]] & valid[:, :, None] & valid[:, None, :]
    box = tuple(slice(o, o + n) for o, n in zip(obj.origin, obj.size))
    return m, box  # type: ignore[return-value]


def _inplane_ring(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Voxels of ``mask`` (H, S, S) within in-plane Chebyshev distance ``width`` of outside (box edge = outside)."""
    core = mask
    for _ in range(width):
        for d in (1, 2):
            n = core.shape[d]
            pad = torch.nn.functional.pad(core, (1, 1) if d == 2 else (0, 0, 1, 1))
            core = pad.narrow(d, 0, n) & pad.narrow(d, 1, n) & pad.narrow(d, 2, n)
    return mask & ~core


def primitive_contours(
    params: Sequence[PrimitiveParams], patch: tuple[int, int, int], device="cpu", width: int = 2,
    value: float = 128 / 255,
) -> torch.Tensor:
    """PrimGeoSeg's image, object by object: float32 [B, 1, X, Y, Z] in {0, value}.

    Every placed object draws the ``width``-pixel in-plane outline of its own cross-section in every slice
    (open top and bottom), and the image is the union of all outlines, as PrimGeoSeg's generator does
    (outlines of objects partly hidden by later objects stay visible). ``render="contour"`` instead derives
    the outline from the final label map.
    """
    patch = tuple(int(v) for v in patch)  # type: ignore[assignment]
    drawn = torch.zeros((len(params), *patch), dtype=torch.bool, device=device)
    for b, p in enumerate(params):
        if tuple(p.patch) != patch:
            raise ConfigError(f"sample {b} was drawn for patch {tuple(p.patch)}, not {patch}")
        for obj in p.objects:
            m, box = _object_mask(obj, device)
            drawn[b][box] |= _inplane_ring(m, width).permute(1, 2, 0)
    return (drawn.float() * float(value))[:, None]
