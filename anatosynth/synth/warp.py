"""Warp one organ mask into a regular grid: affine + smooth elastic displacement, with ``grid_sample``.

One function serves both the coarse overlap check of the layout (CPU, on the organ's dilated support)
and the patch rasteriser (CPU or CUDA, on the mask itself), so both see exactly the same geometry.

A body-frame point ``x`` maps to source-local millimetres ``u = M (x - centre)``, then to
``src = u + d(u)`` with ``d`` the trilinear interpolation of a coarse (3, n, n, n) displacement grid
spread over the source bounding box ``[lo_mm, lo_mm + span_mm]``; ``src`` indexes the source mask
(padded by one empty voxel per side so that trilinear sampling falls off to zero at its border).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["pad_mask", "warp_sample", "ELASTIC_STRIDE"]

ELASTIC_STRIDE = 4


def pad_mask(mask: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """A bool/0-1 mask as float32 [1, 1, X+2, Y+2, Z+2] with one empty voxel around it."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    return F.pad(t, (1, 1, 1, 1, 1, 1))[None, None].to(device)


def _affine_grid(rel: list[np.ndarray], a: np.ndarray, b: np.ndarray, dev: torch.device) -> torch.Tensor:
    """``a @ (x, y, z) + b`` on the grid ``rel[0] x rel[1] x rel[2]`` as float32 [3, X, Y, Z].

    Separable: the 1D terms are formed in float64 numpy, then two broadcast adds per channel, so only
    one full-size operation per channel touches memory.
    """
    shape = tuple(len(r) for r in rel)
    out = torch.empty((3,) + shape, dtype=torch.float32, device=dev)
    for c in range(3):
        terms = [torch.as_tensor((rel[i] * a[c, i]).astype(np.float32), device=dev) for i in range(3)]
        plane = (terms[0] + float(np.float32(b[c])))[:, None] + terms[1][None, :]
        torch.add(plane[:, :, None], terms[2][None, None, :], out=out[c])
    return out


def warp_sample(volume: torch.Tensor, lo_mm: np.ndarray, span_mm: np.ndarray, spacing: np.ndarray,
                rel: list[np.ndarray], matrix: np.ndarray, elastic: np.ndarray) -> torch.Tensor:
    """Sample a padded source volume on the grid ``centre + rel[0] x rel[1] x rel[2]`` (body mm).

    Args:
        volume: float32 [1, 1, X+2, Y+2, Z+2] padded source (see :func:`pad_mask`).
        lo_mm: (3,) local mm of the unpadded source voxel [0, 0, 0] relative to the shape centroid.
        span_mm: (3,) size of the elastic field's domain (the source bounding box).
        spacing: (3,) source voxel size (mm).
        rel: three 1D arrays: body-frame offsets (mm) from the instance centre along R, A, S.
        matrix: (3, 3) body → source-local map ``M``.
        elastic: (3, n, n, n) control-point displacements (mm).

    Returns:
        float32 [len(rel[0]), len(rel[1]), len(rel[2])] trilinear samples on ``volume.device``.
    """
    dev = volume.device
    rel = [np.asarray(r, dtype=np.float64) for r in rel]
    m = np.asarray(matrix, dtype=np.float64)
    lo, span, sp = (np.asarray(v, dtype=np.float64) for v in (lo_mm, span_mm, spacing))
    size = np.asarray(volume.shape[2:], dtype=np.float64) - 1
    # grid_sample's last dim is (W, H, D) = (z, y, x) for an input laid out [D=x, H=y, W=z]: rows reversed
    flip = [2, 1, 0]
    # elastic domain coordinates in [-1, 1]: (u - lo) * 2 / span - 1, with u = M rel. The displacement
    # is smooth (trilinear over a coarse control grid), so it is sampled on a grid ELASTIC_STRIDE times
    # coarser spanning the same extent, then trilinearly upsampled (error well under 0.1 voxel)
    shape = tuple(len(r) for r in rel)
    small = [np.linspace(r[0], r[-1], max(2, -(-(len(r) - 1) // ELASTIC_STRIDE) + 1)) if len(r) > 2 else r
             for r in rel]
    k1 = 2.0 / span
    grid = _affine_grid(small, (k1[:, None] * m)[flip], (-lo * k1 - 1.0)[flip], dev)
    # displacement, pre-scaled into the mask's normalised index units
    k2 = 2.0 / (sp * size)
    field = torch.as_tensor((np.asarray(elastic, dtype=np.float64) * k2[:, None, None, None])
                            .astype(np.float32)[flip], device=dev)[None]
    disp = F.grid_sample(field, grid.permute(1, 2, 3, 0)[None], mode="bilinear", padding_mode="border",
                         align_corners=True)
    if tuple(disp.shape[2:]) != shape:
        disp = F.interpolate(disp, size=shape, mode="trilinear", align_corners=True)
    disp = disp[0]
    # padded mask index = (u + d - lo) / sp + 1, normalised for align_corners=True: 2 * index / size - 1
    base = _affine_grid(rel, (k2[:, None] * m)[flip], ((1.0 - lo / sp) * 2.0 / size - 1.0)[flip], dev)
    base += disp
    return F.grid_sample(volume, base.permute(1, 2, 3, 0)[None], mode="bilinear", padding_mode="zeros",
                         align_corners=True)[0, 0]
