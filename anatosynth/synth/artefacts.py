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
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    "key_tensor",
    "pack_artefacts",
    "apply_packed_artefacts_",
    "upsample_yz",
    "upsample_x",
    "x_weights",
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


def _hash32_into(out: torch.Tensor, tmp: torch.Tensor, key: int | torch.Tensor) -> torch.Tensor:
    """Hash the voxel indices 0..n-1 with a 32-bit key into int32 bits, in place in ``out`` (lowbias32-like).

    ``key`` is a Python int, or an int32 tensor [B, 1] of keys (one per row of ``out`` [B, n]).
    int32 multiplication wraps modulo 2**32 on CPU and CUDA; right shifts are masked to be logical.
    """
    if isinstance(key, torch.Tensor):
        torch.add(_scaled_index(out.shape[-1], out.device), key, out=out)
    else:
        torch.add(_scaled_index(out.numel(), out.device).view(out.shape), _i32(key), out=out)
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


def key_tensor(seeds: Sequence[int], stream: int) -> np.ndarray:
    """int32 [B, 1] hash keys of (seed, stream) per sample (host side, to upload with the batch)."""
    return np.array([[_i32(mix_key(int(s), stream))] for s in seeds], dtype=np.int32).reshape(-1, 1)


def gaussian_into(out: torch.Tensor, seed: int | torch.Tensor, stream: int = 0) -> torch.Tensor:
    """Fill a float32 tensor with approximately standard-normal values from (seed, stream, index).

    ``seed`` is a sample seed (``out`` flat), or an int32 tensor [B, 1] of keys from :func:`key_tensor`
    (``out`` [B, n], each row from its own key; ``stream`` is then already in the keys).
    Each value is the centred, scaled sum of the four bytes of the voxel's 32-bit hash (Irwin-Hall with
    4 terms, 1021 levels, tails bounded at about +-3.46 std: harmless for image noise).
    """
    h = torch.empty(out.shape, dtype=torch.int32, device=out.device)
    tmp = torch.empty_like(h)
    _hash32_into(h, tmp, seed if isinstance(seed, torch.Tensor) else mix_key(seed, stream))
    torch.bitwise_right_shift(h, 8, out=tmp)
    tmp.bitwise_and_(0x00FF00FF)
    h.bitwise_and_(0x00FF00FF).add_(tmp)  # two 16-bit lanes, each the sum of two bytes (<= 510)
    torch.bitwise_right_shift(h, 16, out=tmp)
    h.bitwise_and_(0xFFFF).add_(tmp).sub_(510)  # sum of the four bytes minus its mean
    return out.copy_(h).mul_(1.0 / math.sqrt(4.0 * (256.0**2 - 1.0) / 12.0))


def hash_gaussian(seeds: Sequence[int], stream: int, shape: tuple[int, ...], device) -> torch.Tensor:
    """Approximately standard-normal field [B, *shape], one per seed (see :func:`gaussian_into`).

    The values depend only on (seed, stream, voxel index): identical on CPU and CUDA, for any batch size.
    """
    out = torch.empty((len(seeds), int(np.prod(shape))), dtype=torch.float32, device=device)
    gaussian_into(out, torch.as_tensor(key_tensor(seeds, stream), device=device))
    return out.view(len(seeds), *shape)


# ----------------------------------------------------------------------------------------------------
# Application
# ----------------------------------------------------------------------------------------------------

BLUR_RADIUS = 3  # blur taps reach at least this far (the default ranges' largest sigma, 1 voxel: ceil(3 sigma))


def _blur_taps(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps of radius ceil(3 sigma)."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of volumes [B, X, Y, Z] by shifted sums (replicate borders), taps [B, 2r+1]
    per sample (zero-padded to a common radius: a zero tap adds nothing).

    Multiplications and additions are separate elementwise ops (no fused multiply-add), so the result
    is the same for any thread count or batch composition.
    """
    B = x.shape[0]
    r = taps.shape[1] // 2
    w = [taps[:, i].view(B, 1, 1, 1) for i in range(taps.shape[1])]
    tmp = torch.empty_like(x)
    for d in (1, 2, 3):
        n = x.shape[d]
        out = x * w[r]
        for s in range(1, r + 1):
            k = min(s, n)
            for wt, fwd in ((w[r - s], True), (w[r + s], False)):
                # fwd: out[i] += w * x[i - s] (x[0] beyond the border); else out[i] += w * x[i + s]
                src, dst = (x.narrow(d, 0, n - k), out.narrow(d, k, n - k)) if fwd else \
                    (x.narrow(d, k, n - k), out.narrow(d, 0, n - k))
                t = tmp.narrow(d, 0, n - k)
                torch.mul(src, wt, out=t)
                dst.add_(t)
                edge = x.narrow(d, 0, 1) if fwd else x.narrow(d, n - 1, 1)
                (out.narrow(d, 0, k) if fwd else out.narrow(d, n - k, k)).add_(edge * wt)
        x = out
    return x


def _blur_one(x: torch.Tensor, taps: np.ndarray) -> torch.Tensor:
    """:func:`_blur` of one volume [X, Y, Z] with numpy taps."""
    return _blur(x[None], torch.as_tensor(taps, device=x.device)[None])[0]


def _lerp_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation from n_in knots spanning n_out voxels (align_corners): index, w0, w1."""
    pos = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / max(n_out - 1, 1))
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    w1 = pos - i0
    return i0, (1.0 - w1), w1


def upsample_yz(grid: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Host half of :func:`upsample_separable`: Y and Z interpolated in numpy on the small grid (float32)."""
    g = np.asarray(grid, np.float64)
    for axis in (2, 1):
        i0, w0, w1 = _lerp_weights(g.shape[axis], shape[axis])
        sh = [1, 1, 1]
        sh[axis] = -1
        g = np.take(g, i0, axis=axis) * w0.reshape(sh) + np.take(g, i0 + 1, axis=axis) * w1.reshape(sh)
    return g.astype(np.float32)


def x_weights(n_in: int, n_out: int) -> dict[str, np.ndarray]:
    """Host arrays of the X pass of :func:`upsample_x` (float32, to upload with the batch)."""
    i0, w0, w1 = _lerp_weights(n_in, n_out)
    return {"i0": i0.astype(np.float32), "w0": w0.astype(np.float32), "w1": w1.astype(np.float32)}


def upsample_x(g: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """Device half: X interpolation of [B, gx, Y, Z] with two row gathers, two products and one sum per
    voxel (exact elementwise ops: the same bytes for any batch or thread count)."""
    idx = w["i0"].long()
    a = g.index_select(1, idx).mul_(w["w0"].view(1, -1, 1, 1))
    b = g.index_select(1, idx + 1).mul_(w["w1"].view(1, -1, 1, 1))
    return a.add_(b)


def upsample_separable(grid: np.ndarray, shape: tuple[int, int, int], device) -> torch.Tensor:
    """Trilinear upsampling (align_corners) of a small grid to ``shape`` as a torch tensor on ``device``.

    Y and Z are interpolated in numpy on the small grid; X in torch (see :func:`upsample_x`).
    """
    g = torch.as_tensor(upsample_yz(grid, shape), device=device)[None]
    w = {k: torch.as_tensor(v, device=device) for k, v in x_weights(grid.shape[0], shape[0]).items()}
    return upsample_x(g, w)[0]


def _rescale_gamma(x: torch.Tensor, rescale: torch.Tensor, gamma_on: torch.Tensor | None,
                   lut: torch.Tensor | None) -> torch.Tensor:
    """Per sample of x [B, ...]: min-max rescale to [0, 1] where ``rescale`` and a gamma table (nearest of
    GAMMA_KNOTS entries, ``lut`` [B, K]) where ``gamma_on``; others pass unchanged ((x - 0) * 1)."""
    B = x.shape[0]
    flat = x.reshape(B, -1)
    view = (B,) + (1,) * (x.dim() - 1)
    lo = torch.where(rescale, flat.amin(1), 0.0)
    scale = torch.where(rescale, 1.0 / torch.clamp(flat.amax(1) - lo, min=1e-6), 1.0)
    plain = (x - lo.view(view)).mul_(scale.view(view))
    if lut is None or gamma_on is None:
        return plain
    t = (x - lo.view(view)).mul_((scale * float(GAMMA_KNOTS - 1)).view(view)).add_(0.5)
    t = t.clamp_(0.0, float(GAMMA_KNOTS - 1)).long()
    mapped = lut.gather(1, t.reshape(B, -1)).view(x.shape)
    return torch.where(gamma_on.view(view), mapped, plain)


def _gamma_table(gamma: float) -> np.ndarray:
    return (np.linspace(0.0, 1.0, GAMMA_KNOTS) ** gamma).astype(np.float32)


def _rescale_gamma_(x: torch.Tensor, rescale: bool, gamma: float) -> None:
    """In place, one volume: min-max rescale to [0, 1] and/or gamma through the table (nearest entry)."""
    dev = x.device
    y = _rescale_gamma(x[None], torch.tensor([rescale], device=dev), torch.tensor([gamma != 1.0], device=dev),
                       torch.as_tensor(_gamma_table(gamma), device=dev)[None])
    x.copy_(y[0])


def pack_artefacts(params: Sequence[ArtefactParams], shape: tuple[int, int, int],
                   minimal: bool = False) -> dict[str, np.ndarray] | None:
    """Host arrays of a batch's artefacts (None when no sample has any): every step is then applied to
    every sample, with an exact identity where a sample does not use it, so the kernels do not depend
    on the samples drawn. ``minimal`` leaves out the steps no sample uses (fewer kernels, but the
    kernels then depend on the draws: for the CPU's sample-by-sample path)."""
    params = list(params)
    if not any(p.blur_sigma > 0 or p.bias is not None or p.noise_std > 0 or p.rescale or p.gamma != 1.0
               for p in params):
        return None
    if minimal:
        out = pack_artefacts(params, shape)
        assert out is not None  # some sample has an artefact (checked above)
        for key, used in (("blur", any(p.blur_sigma > 0 for p in params)),
                          ("bias", any(p.bias is not None for p in params)),
                          ("noise", any(p.noise_std > 0 for p in params)),
                          ("gamma", any(p.gamma != 1.0 for p in params))):
            if not used:
                out = {k: v for k, v in out.items() if not k.startswith(key)}
        return out
    B = len(params)
    taps = [_blur_taps(p.blur_sigma) if p.blur_sigma > 0 else None for p in params]
    r = max([BLUR_RADIUS] + [len(t) // 2 for t in taps if t is not None])
    blur = np.zeros((B, 2 * r + 1), np.float32)
    bias = np.ones((B, BIAS_GRID, shape[1], shape[2]), np.float32)
    for b, (p, t) in enumerate(zip(params, taps)):
        if t is not None:
            blur[b, r - len(t) // 2: r + len(t) // 2 + 1] = t
        if p.bias is not None:
            bias[b] = upsample_yz(p.bias, shape)
    out = {
        "blur_taps": blur,
        "blur_on": np.array([t is not None for t in taps], np.float32),
        "bias": bias,
        "bias_on": np.array([p.bias is not None for p in params], np.float32),
        "noise_key": key_tensor([p.seed for p in params], NOISE_STREAM),
        "noise_std": np.array([p.noise_std for p in params], np.float32),
        "rescale": np.array([p.rescale for p in params], np.float32),
        "gamma_on": np.array([p.gamma != 1.0 for p in params], np.float32),
        "gamma_lut": np.stack([_gamma_table(p.gamma) for p in params]),
    }
    out.update({f"bias_{k}": v for k, v in x_weights(BIAS_GRID, shape[0]).items()})
    return out


def apply_packed_artefacts_(img: torch.Tensor, a: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply packed artefacts (device views of :func:`pack_artefacts`) to img [B, X, Y, Z] in place, in
    the fixed order blur -> bias -> noise -> rescale/gamma -> clamp; no host synchronisation."""
    B = img.shape[0]
    view = (B, 1, 1, 1)
    x = img
    if "blur_taps" in a:
        x = torch.where(a["blur_on"].view(view) > 0, _blur(img, a["blur_taps"]), img)
    if "bias" in a:
        field = upsample_x(a["bias"], {k: a[f"bias_{k}"] for k in ("i0", "w0", "w1")})
        x = torch.where(a["bias_on"].view(view) > 0, x * field, x)
    if "noise_key" in a:
        z = torch.empty((B, x[0].numel()), dtype=torch.float32, device=img.device)
        gaussian_into(z, a["noise_key"])
        x = x.add(z.view(x.shape).mul_(a["noise_std"].view(view)))
    if "gamma_lut" in a:
        x = _rescale_gamma(x, a["rescale"] > 0, a["gamma_on"] > 0, a["gamma_lut"])
    else:
        x = _rescale_gamma(x, a["rescale"] > 0, None, None)
    return img.copy_(x).clamp_(0.0, 1.0)


def apply_artefacts_(img: torch.Tensor, params: Sequence[ArtefactParams]) -> torch.Tensor:
    """Apply each sample's artefacts to img [B, X, Y, Z] (float32) in place; returns img, clamped to [0, 1].

    Each sample's bytes depend only on its own parameters (never on the other samples of the batch).
    """
    from anatosynth.synth.raster import upload

    _, nx, ny, nz = img.shape
    packed = pack_artefacts(params, (nx, ny, nz))
    if packed is None:
        return img.clamp_(0.0, 1.0)
    return apply_packed_artefacts_(img, upload(packed, img.device))
