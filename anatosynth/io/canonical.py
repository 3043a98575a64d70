"""Canonical geometry: reorient to RAS, resample to a target spacing, crop to the foreground.

Every operation returns a new :class:`Volume` whose affine is updated so that each voxel keeps its
world position: a structure's world-space centroid is unchanged up to the resampling error.

Resampling keeps the first voxel centre fixed and uses the exact target spacing (MONAI ``Spacing``
convention); the last voxel lies within one target voxel of the original extent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import nibabel as nib
import numpy as np

from anatosynth.errors import ConfigError
from anatosynth.io.volume import Volume

__all__ = ["to_ras", "resample", "resample_label", "crop_foreground", "canonicalise", "parse_spacing"]


def parse_spacing(text: str | Sequence[float]) -> tuple[float, float, float]:
    """Parse ``"1.5,1.5,2.0"`` (or a sequence) into three positive floats."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ConfigError(f"spacing must be three numbers like 1.5,1.5,2.0, got {text!r}") from None
    if len(values) != 3 or min(values) <= 0:
        raise ConfigError(f"spacing must be three positive numbers, got {text!r}")
    return tuple(values)  # type: ignore[return-value]


def to_ras(volume: Volume) -> Volume:
    """Reorder and flip axes so that they increase towards Right, Anterior, Superior (no interpolation)."""
    ornt = nib.orientations.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt("RAS")
    transform = nib.orientations.ornt_transform(ornt, target)
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
    return Volume(np.ascontiguousarray(array), affine)


def _target_grid(volume: Volume, spacing: Sequence[float]) -> tuple[list[np.ndarray], np.ndarray]:
    """Old-index coordinates of the new voxel centres along each axis, and the new affine."""
    old = volume.spacing
    new = np.asarray(spacing, dtype=np.float64)
    factor = new / old
    coords = []
    for n, f in zip(volume.shape, factor):
        n_new = int(np.floor((n - 1) / f + 1e-6)) + 1
        coords.append(np.arange(n_new) * f)
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] @ np.diag(factor)
    return coords, affine


def _linear_axis(array: np.ndarray, pos: np.ndarray, axis: int, step: float) -> np.ndarray:
    """Tent-filter interpolation of ``array`` along one axis at fractional indices ``pos``.

    The tent's half-width is ``max(step, 1)`` input voxels: plain linear interpolation when upsampling,
    an area-weighted average when downsampling (anti-aliasing, so that thin structures still contribute
    to the output voxels they pass through).
    """
    n = array.shape[axis]
    width = max(float(step), 1.0)
    taps = np.arange(-int(np.ceil(width)), int(np.ceil(width)) + 1)
    base = np.floor(pos).astype(np.int64)
    shape = [1] * array.ndim
    shape[axis] = -1
    out = None
    norm = np.zeros(len(pos), np.float64)
    weights = []
    for t in taps:
        idx = base + t
        w = np.clip(1.0 - np.abs(idx - pos) / width, 0.0, None)
        w[(idx < 0) | (idx >= n)] = 0.0
        weights.append((np.clip(idx, 0, n - 1), w))
        norm += w
    norm[norm == 0] = 1.0
    for idx, w in weights:
        if not w.any():
            continue
        term = np.take(array, idx, axis=axis) * (w / norm).astype(np.float32).reshape(shape)
        out = term if out is None else out + term
    assert out is not None  # taps always holds 0
    return out


def _linear(array: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    out = array.astype(np.float32, copy=False)
    for axis, pos in enumerate(coords):
        step = pos[1] - pos[0] if len(pos) > 1 else 1.0
        out = _linear_axis(out, pos, axis, step)
    return out


def resample(volume: Volume, spacing: Sequence[float]) -> Volume:
    """Resample an intensity image to ``spacing`` (mm) with separable linear interpolation."""
    if np.allclose(volume.spacing, spacing, rtol=1e-4):
        return Volume(volume.array.astype(np.float32, copy=False), volume.affine.copy())
    coords, affine = _target_grid(volume, spacing)
    return Volume(_linear(volume.array, coords), affine)


def resample_label(volume: Volume, spacing: Sequence[float]) -> Volume:
    """Resample a label map to ``spacing`` without losing thin structures.

    Each label's binary mask is interpolated linearly and every output voxel takes the label with the
    highest interpolated membership (background's membership is one minus the sum of the others).
    A label present in the input that would vanish (thinner than half an output voxel) keeps the
    output voxels where its membership peaks, so no organ disappears through resampling.
    """
    if np.allclose(volume.spacing, spacing, rtol=1e-4):
        return Volume(volume.array.copy(), volume.affine.copy())
    coords, affine = _target_grid(volume, spacing)
    shape = tuple(len(c) for c in coords)
    best_p = np.zeros(shape, np.float32)
    best_l = np.zeros(shape, np.int32)
    total = np.zeros(shape, np.float32)
    peaks: dict[int, tuple[float, tuple[slice, ...], np.ndarray]] = {}
    arr = volume.array
    for lab in np.unique(arr):
        if lab == 0:
            continue
        idx = np.nonzero(arr == lab)
        pad = [int(np.ceil(max(c[1] - c[0] if len(c) > 1 else 1.0, 1.0))) + 1 for c in coords]
        lo = [max(int(i.min()) - p, 0) for i, p in zip(idx, pad)]
        hi = [min(int(i.max()) + 1 + p, n) for i, n, p in zip(idx, arr.shape, pad)]
        # output voxels whose interpolation stencil (tent of half-width max(step, 1)) touches the box
        out_sl, sub_coords = [], []
        for c, a, b in zip(coords, lo, hi):
            reach = max(c[1] - c[0] if len(c) > 1 else 1.0, 1.0)
            sel = np.nonzero((c > a - reach) & (c < b - 1 + reach))[0]
            if sel.size == 0:
                sel = np.array([int(np.argmin(np.abs(c - (a + b) / 2)))])
            out_sl.append(slice(int(sel[0]), int(sel[-1]) + 1))
            sub_coords.append(c[sel[0]:sel[-1] + 1] - a)
        mask = (arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == lab).astype(np.float32)
        p = _linear(mask, sub_coords)
        sl = tuple(out_sl)
        total[sl] += p
        win = p > best_p[sl]
        best_p[sl] = np.where(win, p, best_p[sl])
        best_l[sl] = np.where(win, lab, best_l[sl])
        peaks[int(lab)] = (float(p.max()), sl, p)
    out = np.where(best_p > 1.0 - total, best_l, 0).astype(np.int32)
    for lab, (pmax, sl, p) in peaks.items():
        if pmax > 0 and not (out[sl] == lab).any():
            region = out[sl]
            region[p >= pmax - 1e-6] = lab
    return Volume(out, affine)


@overload
def crop_foreground(volume: Volume, mask: np.ndarray | None = None, margin: int = 0) -> Volume: ...


@overload
def crop_foreground(volume: Volume, mask: np.ndarray | None, margin: int, other: Volume, /,
                    *others: Volume) -> tuple[Volume, ...]: ...


def crop_foreground(volume: Volume, mask: np.ndarray | None = None, margin: int = 0,
                    *others: Volume) -> Volume | tuple[Volume, ...]:
    """Crop to the bounding box of ``mask`` (default: ``volume.array > 0``) plus ``margin`` voxels.

    Further volumes on the same grid (e.g. the image of a label map) are cropped identically and
    returned with it as a tuple. An empty mask leaves everything uncropped.
    """
    mask = volume.array > 0 if mask is None else mask
    if not mask.any():
        return (volume, *others) if others else volume
    idx = np.nonzero(mask)
    lo = [max(int(i.min()) - margin, 0) for i in idx]
    hi = [min(int(i.max()) + 1 + margin, n) for i, n in zip(idx, volume.shape)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))

    def crop(v: Volume) -> Volume:
        affine = v.affine.copy()
        affine[:3, 3] = v.world(np.asarray(lo))
        return Volume(np.ascontiguousarray(v.array[sl]), affine)

    cropped = tuple(crop(v) for v in (volume, *others))
    return cropped if others else cropped[0]


def canonicalise(label: Volume, spacing: Sequence[float], image: Volume | None = None,
                 crop: bool = False, margin: int = 0) -> tuple[Volume, Volume | None]:
    """RAS, target spacing and (optionally) foreground crop for a label map and its image."""
    label = resample_label(to_ras(label), spacing)
    if image is not None:
        image = resample(to_ras(image), spacing)  # same grid as the label: both use _target_grid
    if crop:
        if image is not None:
            label, image = crop_foreground(label, None, margin, image)
        else:
            label = crop_foreground(label, None, margin)
    return label, image
