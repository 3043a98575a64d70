"""Acquisition artefacts and device-independent random fields for rendered patches.

Everything random is drawn in numpy (:func:`draw_artefacts`) and stored in an :class:`ArtefactParams`;
:func:`apply_artefacts_` then applies it in place with torch, sample by sample, in a fixed order:
Gaussian blur -> multiplicative bias field -> Gaussian noise -> min-max rescaling -> gamma -> clamp.
(Each step is skipped for a sample that does not use it.)

Per-voxel random values (noise) come from a counter-based integer hash of (sample seed, stream, voxel
index) computed with int32 torch ops, so CPU and CUDA give the same bits and a sample never depends on
the batch it is in. Transcendental functions are only evaluated in numpy on small arrays (bias grid,
gamma table, blur taps); on full-resolution tensors we only use +, *, comparisons and gathers, whose
results are exact per element, so bytes do not change with thread count or batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "ArtefactRanges",
    "ArtefactParams",
    "DEFAULT_ARTEFACTS",
    "NO_ARTEFACTS",
    "draw_artefacts",
    "apply_artefacts_",
    "upsample_separable",
    "gaussian_into",
    "hash_bits",
    "hash_gaussian",
    "mix_key",
]

_M1, _M2, _M3 = 0x2C1B3C6D, 0x297A2D39, 0x5BD1E995  # odd multipliers < 2**31 (int32-safe constants)
GAMMA_KNOTS = 4096  # gamma is applied through a table of this many entries
NOISE_STREAM = 7  # hash stream of the acquisition noise (render fill noise uses stream 1)
BIAS_GRID = 4


@dataclass(frozen=True)
class ArtefactRanges:
    """Probabilities and ranges of the artefacts (intensities are in [0, 1], lengths in voxels).

    Attributes:
        noise_p, noise_std: probability of additive Gaussian noise and the range of its std.
        blur_p, blur_sigma: probability of Gaussian blur and the range of its sigma (voxels, isotropic).
        bias_p, bias_std: probability of a smooth multiplicative bias field and the range of the std of
            its log on a 4x4x4 grid (upsampled trilinearly; SynthSeg uses std up to 0.5).
        gamma_p, log_gamma: probability of a gamma change and the range of log(gamma).
        rescale: rescale each sample to [0, 1] by its own min and max after noise and bias (SynthSeg).
    """

    noise_p: float = 0.8
    noise_std: tuple[float, float] = (0.0, 0.05)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    bias_p: float = 0.5
    bias_std: tuple[float, float] = (0.0, 0.3)
    gamma_p: float = 0.5
    log_gamma: tuple[float, float] = (-0.3, 0.3)
    rescale: bool = True


DEFAULT_ARTEFACTS = ArtefactRanges()
NO_ARTEFACTS = ArtefactRanges(noise_p=0.0, blur_p=0.0, bias_p=0.0, gamma_p=0.0, rescale=False)


@dataclass
class ArtefactParams:
    """The artefacts of one sample, fully drawn.

    Attributes:
        seed: 31-bit seed of the sample's noise field.
        noise_std: std of additive Gaussian noise (0 = none).
        blur_sigma: Gaussian blur sigma in voxels (0 = none).
        bias: (4, 4, 4) multiplicative bias field grid (already exponentiated) or None.
        gamma: intensity exponent (1 = none).
        rescale: min-max rescale to [0, 1] before gamma.
    """

    seed: int = 0
    noise_std: float = 0.0
    blur_sigma: float = 0.0
    bias: np.ndarray | None = field(default=None, repr=False)
    gamma: float = 1.0
    rescale: bool = False


def draw_artefacts(rng: np.random.Generator, ranges: ArtefactRanges = DEFAULT_ARTEFACTS) -> ArtefactParams:
    """Draw one sample's artefacts; the number of draws is fixed so later draws never shift."""
    on = rng.random(4)
    vals = rng.random(4)
    seed = int(rng.integers(0, 2**31 - 1))
    grid = rng.standard_normal((BIAS_GRID,) * 3)

    def lerp(r: tuple[float, float], u: float) -> float:
        return float(r[0] + (r[1] - r[0]) * u)

    bias = None
    if on[2] < ranges.bias_p:
        std = lerp(ranges.bias_std, vals[2])
        bias = np.exp(std * grid).astype(np.float32)
    return ArtefactParams(
        seed=seed,
        noise_std=lerp(ranges.noise_std, vals[0]) if on[0] < ranges.noise_p else 0.0,
        blur_sigma=lerp(ranges.blur_sigma, vals[1]) if on[1] < ranges.blur_p else 0.0,
        bias=bias,
        gamma=math.exp(lerp(ranges.log_gamma, vals[3])) if on[3] < ranges.gamma_p else 1.0,
        rescale=ranges.rescale,
    )


# ----------------------------------------------------------------------------------------------------
# Counter-based random fields
# ----------------------------------------------------------------------------------------------------

def _i32(v: int) -> int:
    """The signed int32 with the same 32 bits as ``v``."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def mix_key(seed: int, stream: int) -> int:
    """A 32-bit key for (seed, stream), mixed in Python integers (same on every device)."""
    x = (seed * 0x9E3779B1 + stream * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    for m, s in ((_M2, 15), (_M3, 16), (_M1, 13)):
        x ^= x >> s
        x = (x * m) & 0xFFFFFFFF
    return x ^ (x >> 16)


_INDEX_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def _scaled_index(n: int, device) -> torch.Tensor:
    """int32 ``arange(n) * M1`` (wrapping), cached per size and device."""
    key = (n, str(device))
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = torch.arange(n, dtype=torch.int32, device=device).mul_(_M1)
    return _INDEX_CACHE[key]


def _hash32_into(out: torch.Tensor, tmp: torch.Tensor, key: int) -> torch.Tensor:
    """Hash the voxel indices 0..n-1 with a 32-bit key into int32 bits, in place in ``out`` (lowbias32-like).

    int32 multiplication wraps modulo 2**32 on CPU and CUDA; right shifts are masked to be logical.
    """
    torch.add(_scaled_index(out.numel(), out.device), _i32(key), out=out)
    for m, s in ((_M2, 16), (_M3, 15), (_M1, 16)):
        torch.bitwise_right_shift(out, s, out=tmp)
        tmp.bitwise_and_((1 << (32 - s)) - 1)
        out.bitwise_xor_(tmp)
        out.mul_(m)
    torch.bitwise_right_shift(out, 15, out=tmp)
    tmp.bitwise_and_((1 << 17) - 1)
    return out.bitwise_xor_(tmp)


def hash_bits(seed: int, stream: int, n: int, device) -> torch.Tensor:
    """32 random bits (as int32) for each of n voxels, a function of (seed, stream, index) only."""
    out = torch.empty(n, dtype=torch.int32, device=device)
    return _hash32_into(out, torch.empty_like(out), mix_key(seed, stream))


def gaussian_into(out: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """Fill a flat float32 tensor with approximately standard-normal values from (seed, stream, index).

    Each value is the centred, scaled sum of the four bytes of the voxel's 32-bit hash (Irwin-Hall with
    4 terms, 1021 levels, tails bounded at about +-3.46 std: harmless for image noise).
    """
    n = out.numel()
    h = torch.empty(n, dtype=torch.int32, device=out.device)
    tmp = torch.empty_like(h)
    _hash32_into(h, tmp, mix_key(seed, stream))
    torch.bitwise_right_shift(h, 8, out=tmp)
    tmp.bitwise_and_(0x00FF00FF)
    h.bitwise_and_(0x00FF00FF).add_(tmp)  # two 16-bit lanes, each the sum of two bytes (<= 510)
    torch.bitwise_right_shift(h, 16, out=tmp)
    h.bitwise_and_(0xFFFF).add_(tmp).sub_(510)  # sum of the four bytes minus its mean
    return out.copy_(h.view(out.shape)).mul_(1.0 / math.sqrt(4.0 * (256.0**2 - 1.0) / 12.0))


def hash_gaussian(seeds: Sequence[int], stream: int, shape: tuple[int, ...], device) -> torch.Tensor:
    """Approximately standard-normal field [B, *shape], one per seed (see :func:`gaussian_into`).

    The values depend only on (seed, stream, voxel index): identical on CPU and CUDA, for any batch size.
    """
    out = torch.empty((len(seeds), int(np.prod(shape))), dtype=torch.float32, device=device)
    for b, seed in enumerate(seeds):
        gaussian_into(out[b], seed, stream)
    return out.view(len(seeds), *shape)


# ----------------------------------------------------------------------------------------------------
# Application
# ----------------------------------------------------------------------------------------------------

def _blur_taps(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps of radius ceil(3 sigma)."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur_one(x: torch.Tensor, taps: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur of one volume [X, Y, Z] by shifted sums (replicate borders).

    Multiplications and additions are separate elementwise ops (no fused multiply-add), so the result
    is the same for any thread count or batch composition.
    """
    r = len(taps) // 2
    tmp = torch.empty_like(x)
    for d in range(3):
        n = x.shape[d]
        out = x * float(taps[r])
        for s in range(1, r + 1):
            k = min(s, n)
            for w, fwd in ((float(taps[r - s]), True), (float(taps[r + s]), False)):
                # fwd: out[i] += w * x[i - s] (x[0] beyond the border); else out[i] += w * x[i + s]
                src, dst = (x.narrow(d, 0, n - k), out.narrow(d, k, n - k)) if fwd else \
                    (x.narrow(d, k, n - k), out.narrow(d, 0, n - k))
                t = tmp.narrow(d, 0, n - k)
                torch.mul(src, w, out=t)
                dst.add_(t)
                edge = x.narrow(d, 0, 1) if fwd else x.narrow(d, n - 1, 1)
                (out.narrow(d, 0, k) if fwd else out.narrow(d, n - k, k)).add_(edge * w)
        x = out
    return x


def _lerp_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation from n_in knots spanning n_out voxels (align_corners): index, w0, w1."""
    pos = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / max(n_out - 1, 1))
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    w1 = pos - i0
    return i0, (1.0 - w1), w1


def upsample_separable(grid: np.ndarray, shape: tuple[int, int, int], device) -> torch.Tensor:
    """Trilinear upsampling (align_corners) of a small grid to ``shape`` as a torch tensor on ``device``.

    Y and Z are interpolated in numpy on the small grid; X in torch with two row gathers, two products
    and one sum per voxel (exact elementwise ops: the same bytes for any batch or thread count).
    """
    g = np.asarray(grid, np.float64)
    for axis in (2, 1):
        i0, w0, w1 = _lerp_weights(g.shape[axis], shape[axis])
        sh = [1, 1, 1]
        sh[axis] = -1
        g = np.take(g, i0, axis=axis) * w0.reshape(sh) + np.take(g, i0 + 1, axis=axis) * w1.reshape(sh)
    i0, w0, w1 = _lerp_weights(g.shape[0], shape[0])
    gt = torch.as_tensor(g.astype(np.float32), device=device)
    idx = torch.as_tensor(i0, device=device)
    a = gt.index_select(0, idx).mul_(torch.as_tensor(w0.astype(np.float32), device=device).view(-1, 1, 1))
    b = gt.index_select(0, idx + 1).mul_(torch.as_tensor(w1.astype(np.float32), device=device).view(-1, 1, 1))
    return a.add_(b)


def _rescale_gamma_(x: torch.Tensor, rescale: bool, gamma: float) -> None:
    """In place: min-max rescale to [0, 1] and/or gamma through a 4096-entry table (nearest entry)."""
    if rescale:
        lo, hi = x.amin(), x.amax()
        scale = 1.0 / torch.clamp(hi - lo, min=1e-6)
    else:
        lo = torch.zeros((), device=x.device)
        scale = torch.ones((), device=x.device)
    if gamma == 1.0:
        x.sub_(lo).mul_(scale)
        return
    lut = torch.as_tensor((np.linspace(0.0, 1.0, GAMMA_KNOTS) ** gamma).astype(np.float32), device=x.device)
    t = (x - lo).mul_(scale * float(GAMMA_KNOTS - 1)).add_(0.5).clamp_(0.0, float(GAMMA_KNOTS - 1))
    x.copy_(lut[t.long()])


def apply_artefacts_(img: torch.Tensor, params: Sequence[ArtefactParams]) -> torch.Tensor:
    """Apply each sample's artefacts to img [B, X, Y, Z] (float32) in place; returns img, clamped to [0, 1].

    Each sample is processed on its own with the steps it uses (never an identity step), so its bytes
    do not depend on the other samples of the batch.
    """
    shape = tuple(img.shape[1:])
    n = int(np.prod(shape))
    for b, p in enumerate(params):
        x = img[b]
        if p.blur_sigma > 0:
            x.copy_(_blur_one(x, _blur_taps(p.blur_sigma)))
        if p.bias is not None:
            x.mul_(upsample_separable(p.bias, shape, img.device))
        if p.noise_std > 0:
            z = torch.empty(n, dtype=torch.float32, device=img.device)
            gaussian_into(z, p.seed, NOISE_STREAM)
            x.add_(z.view(shape).mul_(p.noise_std))
        if p.rescale or p.gamma != 1.0:
            _rescale_gamma_(x, p.rescale, p.gamma)
    return img.clamp_(0.0, 1.0)
