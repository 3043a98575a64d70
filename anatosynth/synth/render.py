"""Label patches to images: contour shells, Gaussian-mixture fills, boundary-safe texture, PrimGeoSeg contours.

Two steps, as everywhere in synthesis: :func:`draw_render_params` draws everything random for one sample
in numpy (small arrays only), :func:`apply_render` turns a batch of label patches into images with torch,
deterministically, on the labels' device. Sample ``b`` depends only on ``label[b]`` and ``params[b]``.

Render modes (labels are never changed; every organ's label is the full organ):

* ``shell``: the paper's contour shells. Each organ shows only its boundary band (voxels of the organ within
  a per-organ thickness of 1-3 voxels, Chebyshev distance, of a voxel with another label) with a random
  intensity; organ cores and background share one random background intensity.
* ``fill``: SynthSeg-like Gaussian mixture, one mean and std per class (background included).
* ``shell+fill``: ``fill`` with each organ's shell drawn in its own contrasting intensity.
* ``texture``: ``fill`` means plus smooth multi-scale noise texture in organ cores only; a clean band near
  every boundary keeps the plain organ intensity (the "Texture-Shape Dilemma" buffer), and the texture
  fades in linearly over a short ramp.
* ``contour``: PrimGeoSeg's image: per axial (Z) slice, a 2-pixel outline inside each object with intensity
  128/255 on 0; computed in-plane only, so shells are open at the top and bottom; no artefacts by default.

Unlabelled background clutter (``SynthConfig.clutter`` > 0, :func:`draw_clutter`): smooth random blobs
in the background, between the organs, rendered like organs of three extra intensity classes (shells in
``shell``, means and noise in ``fill``...) while their label stays 0, so the network must learn to ignore
shapes that are not organs, as in real scans. Its own random stream: samples without clutter are unchanged.

Artefacts (:mod:`anatosynth.synth.artefacts`) follow for all modes but ``contour``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch

from anatosynth.errors import ConfigError
from anatosynth.options import RENDERS, parse_patch
from anatosynth.synth.artefacts import (
    DEFAULT_ARTEFACTS,
    NO_ARTEFACTS,
    ArtefactParams,
    ArtefactRanges,
    apply_packed_artefacts_,
    draw_artefacts,
    gaussian_into,
    key_tensor,
    pack_artefacts,
    upsample_x,
    upsample_yz,
    x_weights,
)

__all__ = [
    "RenderParams",
    "draw_render_params",
    "apply_render",
    "pack_render",
    "render_packed",
    "boundary_distance",
    "SHELL_THICKNESS",
    "FILL_MEAN",
    "FILL_STD",
    "SHELL_CONTRAST",
    "TEXTURE_AMPLITUDE",
    "TEXTURE_BAND",
    "TEXTURE_RAMP",
    "CONTOUR_VALUE",
    "CONTOUR_WIDTH",
    "ClutterParams",
    "draw_clutter",
    "CLUTTER_CLASSES",
    "CLUTTER_SCALE",
]

SHELL_THICKNESS = (1, 3)  # voxels, inclusive, per organ
FILL_MEAN = (25 / 255, 225 / 255)  # SynthSeg U[25, 225] scaled to [0, 1]
FILL_STD = (5 / 255, 25 / 255)  # SynthSeg U[5, 25] scaled to [0, 1]
SHELL_CONTRAST = (0.2, 0.8)  # shell intensity = (base + U[0.2, 0.8]) mod 1
TEXTURE_AMPLITUDE = (0.05, 0.25)  # per-organ texture std in organ cores
TEXTURE_BAND = (2, 4)  # voxels, inclusive, per sample: texture-free band near boundaries
TEXTURE_RAMP = 2  # voxels over which the texture fades in after the band
TEXTURE_SCALES = (8, 3)  # texture octaves: random grids of about patch / 8 and patch / 3, upsampled
TEXTURE_NORM = 1.0 / (2.0 / 3.0) ** 1.5  # trilinear upsampling of white noise keeps (2/3)^3 of its variance
FILL_STREAM = 1  # hash stream of the per-class fill noise
CONTOUR_VALUE = 128 / 255
CONTOUR_WIDTH = 2  # pixels, in-plane
CLUTTER_CLASSES = 3  # intensity classes of the background clutter: tertiles of a second smooth field
CLUTTER_SCALE = 12  # voxels between the clutter fields' random nodes: blobs of about this size
CLUTTER_TERTILE = 0.4307273  # standard-normal tertile: the three clutter classes share the clutter equally


@dataclass
class ClutterParams:
    """Unlabelled background clutter of ONE sample (see the module docstring).

    Attributes:
        threshold: background voxels where the shape field (about unit variance) exceeds this are clutter.
        grids: the shape field's and the class field's coarse standard-normal grids, upsampled trilinearly.
        mean, std, shell_value: (K,) intensity tables of the K clutter classes, drawn as the organs' are.
        shell_thickness: (K,) shell thickness in voxels (0 where the render draws no shells).
    """

    threshold: float
    grids: list[np.ndarray] = field(repr=False)
    mean: np.ndarray
    std: np.ndarray
    shell_value: np.ndarray
    shell_thickness: np.ndarray


@dataclass
class RenderParams:
    """Everything random for rendering ONE sample.

    Attributes:
        render: one of :data:`anatosynth.options.RENDERS`.
        num_classes: label values 0..num_classes-1 (0 = background) that the sample may contain.
        mean: (C,) base intensity of each class in [0, 1].
        std: (C,) per-class Gaussian std of the fill (0 for shell, texture and contour).
        shell_value: (C,) intensity of each class's shell.
        shell_thickness: (C,) shell thickness in voxels (0 = no shell; always 0 for background).
        shell_2d: measure the shell in-plane (per Z slice) instead of in 3-D (``contour``).
        texture_amp: (C,) texture std in each class's core (0 = plain; always 0 for background).
        texture_mix: (C, 2) weights of the two texture octaves per class.
        texture_grids: the two coarse random grids (float32), upsampled trilinearly to the patch.
        texture_band: texture-free band (voxels) near every boundary.
        seed: 31-bit seed of the sample's per-voxel fill noise.
        artefacts: the sample's :class:`~anatosynth.synth.artefacts.ArtefactParams`.
    """

    render: str
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    shell_value: np.ndarray
    shell_thickness: np.ndarray
    shell_2d: bool = False
    texture_amp: np.ndarray | None = None
    texture_mix: np.ndarray | None = None
    texture_grids: list[np.ndarray] = field(default_factory=list, repr=False)
    texture_band: int = 0
    seed: int = 0
    artefacts: ArtefactParams = field(default_factory=ArtefactParams)
    clutter: ClutterParams | None = None

    @property
    def max_distance(self) -> int:
        """How far from a boundary (voxels) this sample needs the boundary distance."""
        d = int(self.shell_thickness.max()) if self.shell_thickness.size else 0
        if self.clutter is not None and self.clutter.shell_thickness.size:
            d = max(d, int(self.clutter.shell_thickness.max()))
        if self.texture_amp is not None and np.any(self.texture_amp > 0):
            d = max(d, self.texture_band + TEXTURE_RAMP)
        return d


def draw_render_params(
    rng: np.random.Generator,
    num_classes: int,
    render: str,
    patch: tuple[int, int, int],
    artefacts: ArtefactRanges | None = None,
) -> RenderParams:
    """Draw the rendering of one sample.

    Args:
        rng: the sample's generator (e.g. ``np.random.default_rng(SeedSequence(...))``).
        num_classes: number of label values including background (labels 0..num_classes-1).
        render: one of :data:`anatosynth.options.RENDERS`.
        patch: (X, Y, Z) patch size, needed for the texture grids.
        artefacts: artefact ranges; default :data:`DEFAULT_ARTEFACTS`, or none for ``contour``.

    Raises:
        ConfigError: unknown render mode or too few classes.
    """
    if render not in RENDERS:
        raise ConfigError(f"unknown render mode {render!r}; choose one of {', '.join(RENDERS)}")
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes must be at least 1 (background), got {num_classes}")
    C = int(num_classes)
    patch = parse_patch(patch)
    if artefacts is None:
        artefacts = NO_ARTEFACTS if render == "contour" else DEFAULT_ARTEFACTS
    # Fixed draw order for every mode, so the same rng state gives related samples across modes.
    u_mean = rng.random(C)
    u_std = rng.random(C)
    u_contrast = rng.random(C)
    thick = rng.integers(SHELL_THICKNESS[0], SHELL_THICKNESS[1] + 1, size=C)
    u_amp = rng.random(C)
    mix = rng.standard_normal((C, 2))
    band = int(rng.integers(TEXTURE_BAND[0], TEXTURE_BAND[1] + 1))
    seed = int(rng.integers(0, 2**31 - 1))
    art = draw_artefacts(rng, artefacts)

    zeros = np.zeros(C, np.float32)
    organ = np.arange(C) > 0
    mean = (FILL_MEAN[0] + (FILL_MEAN[1] - FILL_MEAN[0]) * u_mean).astype(np.float32)
    std = (FILL_STD[0] + (FILL_STD[1] - FILL_STD[0]) * u_std).astype(np.float32)
    contrast = SHELL_CONTRAST[0] + (SHELL_CONTRAST[1] - SHELL_CONTRAST[0]) * u_contrast
    thickness = np.where(organ, thick, 0).astype(np.uint8)
    p = RenderParams(render=render, num_classes=C, mean=mean, std=std, shell_value=zeros.copy(),
                     shell_thickness=np.zeros(C, np.uint8), seed=seed, artefacts=art)
    if render == "shell":
        background = float(u_mean[0])  # U[0, 1]
        p.mean = np.full(C, background, np.float32)
        p.std = zeros.copy()
        p.shell_value = np.mod(background + contrast, 1.0).astype(np.float32)
        p.shell_thickness = thickness
    elif render == "shell+fill":
        p.shell_value = np.mod(mean + contrast, 1.0).astype(np.float32)
        p.shell_thickness = thickness
    elif render == "texture":
        p.std = zeros.copy()
        amp = TEXTURE_AMPLITUDE[0] + (TEXTURE_AMPLITUDE[1] - TEXTURE_AMPLITUDE[0]) * u_amp
        p.texture_amp = np.where(organ, amp, 0.0).astype(np.float32)
        p.texture_mix = (mix / np.maximum(np.linalg.norm(mix, axis=1, keepdims=True), 1e-6)).astype(np.float32)
        p.texture_grids = [rng.standard_normal(tuple(max(2, s // k) for s in patch)).astype(np.float32)
                           for k in TEXTURE_SCALES]
        p.texture_band = band
    elif render == "contour":
        p.mean = zeros.copy()
        p.std = zeros.copy()
        p.shell_value = np.where(organ, CONTOUR_VALUE, 0.0).astype(np.float32)
        p.shell_thickness = np.where(organ, CONTOUR_WIDTH, 0).astype(np.uint8)
        p.shell_2d = True
    return p


def clutter_grid_shape(patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """Nodes per axis of the clutter fields' coarse grids (one every ~CLUTTER_SCALE voxels, at least 2)."""
    return tuple(max(2, s // CLUTTER_SCALE + 1) for s in patch)  # type: ignore[return-value]


def draw_clutter(rng: np.random.Generator, share: float, render: RenderParams,
                 patch: tuple[int, int, int]) -> ClutterParams:
    """Draw one sample's background clutter: about ``share`` of its background voxels, in three classes
    whose intensities follow the sample's render mode (``render``, already drawn) as organs' do.

    ``rng`` is the sample's own clutter generator, separate from its render generator, so a stream
    without clutter draws exactly what it drew before clutter existed.
    """
    if not 0.0 < share < 1.0:
        raise ConfigError(f"clutter share {share!r}: expected a number in (0, 1)")
    K = CLUTTER_CLASSES
    small = clutter_grid_shape(parse_patch(patch))
    grids = [rng.standard_normal(small).astype(np.float32) for _ in range(2)]
    u_mean, u_std, u_contrast = rng.random(K), rng.random(K), rng.random(K)
    thick = rng.integers(SHELL_THICKNESS[0], SHELL_THICKNESS[1] + 1, size=K).astype(np.uint8)
    zeros = np.zeros(K, np.float32)
    mean = (FILL_MEAN[0] + (FILL_MEAN[1] - FILL_MEAN[0]) * u_mean).astype(np.float32)
    std = (FILL_STD[0] + (FILL_STD[1] - FILL_STD[0]) * u_std).astype(np.float32)
    contrast = SHELL_CONTRAST[0] + (SHELL_CONTRAST[1] - SHELL_CONTRAST[0]) * u_contrast
    shell, thickness = zeros.copy(), np.zeros(K, np.uint8)
    mode = render.render
    if mode == "shell":  # cores in the background's intensity, like the organs' cores
        mean = np.full(K, render.mean[0], np.float32)
        std = zeros.copy()
        shell, thickness = np.mod(render.mean[0] + contrast, 1.0).astype(np.float32), thick
    elif mode == "shell+fill":
        shell, thickness = np.mod(mean + contrast, 1.0).astype(np.float32), thick
    elif mode == "texture":
        std = zeros.copy()
    elif mode == "contour":
        mean, std = zeros.copy(), zeros.copy()
        shell = np.full(K, CONTOUR_VALUE, np.float32)
        thickness = np.full(K, CONTOUR_WIDTH, np.uint8)
    threshold = NormalDist().inv_cdf(1.0 - float(share))
    return ClutterParams(threshold, grids, mean, std, shell, thickness)


# ----------------------------------------------------------------------------------------------------
# Boundary distance by separable min/max shifts (no pooling kernels: exact, cheap on uint8)
# ----------------------------------------------------------------------------------------------------

def _shift_reduce(x: torch.Tensor, dims: Sequence[int], op) -> torch.Tensor:
    """Cube (or square) neighbourhood reduction of radius 1 along ``dims``; borders replicate."""
    for d in dims:
        n = x.shape[d]
        if n < 2:
            continue
        y = x.clone()
        hi, lo = y.narrow(d, 1, n - 1), y.narrow(d, 0, n - 1)
        op(hi, x.narrow(d, 0, n - 1), out=hi)  # in place: each element reads only its own position of y
        op(lo, x.narrow(d, 1, n - 1), out=lo)
        x = y
    return x


def boundary_distance(label: torch.Tensor, max_distance: int, in_plane: bool = False,
                      num_classes: int | None = None) -> torch.Tensor:
    """Chebyshev distance (voxels) from each voxel to the nearest voxel with a different label.

    Args:
        label: integer labels [B, X, Y, Z].
        max_distance: distances above this are returned as ``max_distance + 1``.
        in_plane: measure within each Z slice only (X, Y), as for per-slice contours.
        num_classes: labels are below this (uint8 arithmetic when <= 256); default: from the dtype.

    Returns:
        uint8 tensor [B, X, Y, Z]; 1 means a differently labelled voxel touches this one (26- or
        8-neighbourhood). The patch border is not a boundary.
    """
    dims = (1, 2) if in_plane else (1, 2, 3)
    narrow = label.dtype == torch.uint8 or (num_classes is not None and num_classes <= 256)
    lab = label.to(torch.uint8) if narrow else label.to(torch.int32)
    near = _shift_reduce(lab, dims, torch.maximum) != _shift_reduce(lab, dims, torch.minimum)
    dist = torch.full(label.shape, max_distance + 1, dtype=torch.uint8, device=label.device)
    for r in range(1, max_distance + 1):
        if r > 1:
            near = _shift_reduce(near, dims, torch.logical_or)
        dist.sub_(near.view(torch.uint8))
    return dist


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------

def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table.gather(1, index)`` for per-sample tables [B, C] and indices [B, N]; for one sample as
    ``index_select``, about twice as fast on the CPU (the same values)."""
    if table.shape[0] == 1:
        return table[0].index_select(0, index[0])[None]
    return table.gather(1, index)


def _check_labels(label: torch.Tensor, params: Sequence[RenderParams], values: bool) -> None:
    """Shape, dtype and modes (host metadata); with ``values`` also the label range (reads the device)."""
    if label.dim() != 4 or label.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ConfigError(f"label must be an integer tensor [B, X, Y, Z], got {tuple(label.shape)} {label.dtype}")
    if label.shape[0] != len(params):
        raise ConfigError(f"{label.shape[0]} label patches but {len(params)} render params")
    for b, p in enumerate(params):
        if p.render not in RENDERS:
            raise ConfigError(f"sample {b}: unknown render mode {p.render!r}")
    if not values:
        return
    lo, hi = torch.aminmax(label.reshape(label.shape[0], -1), dim=1)
    for b, (p, l0, l1) in enumerate(zip(params, lo.tolist(), hi.tolist())):
        if l0 < 0 or l1 >= p.num_classes:
            raise ConfigError(f"sample {b}: labels {l0}..{l1} outside 0..{p.num_classes - 1}")


# how far each mode needs the boundary distance, whatever was drawn: a fixed reach keeps the kernels of
# a batch independent of its samples (distances are exact up to the reach, so the image is the same)
_REACH = {"shell": SHELL_THICKNESS[1], "shell+fill": SHELL_THICKNESS[1], "fill": 0,
          "texture": TEXTURE_BAND[1] + TEXTURE_RAMP, "contour": CONTOUR_WIDTH}


def _reach(p: RenderParams) -> int:
    return max(p.max_distance, _REACH[p.render]) if p.max_distance > 0 else 0


def _has_texture(p: RenderParams) -> bool:
    return p.texture_amp is not None and bool(np.any(p.texture_amp > 0))


def _texture_weights(p: RenderParams, octave: int) -> np.ndarray:
    """Per-class weight of texture octave ``octave``: amplitude x mix (zeros for a sample without texture)."""
    if p.texture_amp is None or p.texture_mix is None or not _has_texture(p):
        return np.zeros(p.num_classes)
    return (p.texture_amp * p.texture_mix[:, octave]).astype(np.float32)


def _classes(organ: np.ndarray, clutter: np.ndarray | None, cmax: int, K: int) -> np.ndarray:
    """One sample's table over the render classes: its organ classes padded to ``cmax``, then ``K``
    clutter classes (zeros for a sample without clutter)."""
    out = np.zeros(cmax + K, np.float64)
    out[:len(organ)] = organ
    if K and clutter is not None:
        out[cmax:] = clutter
    return out


def pack_render(params: Sequence[RenderParams], patch: tuple[int, int, int],
                minimal: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Host side of rendering a batch: the per-sample tables as arrays to upload (with the batch's other
    parameters, in one copy), and the host facts that shape the program (no tensor values).
    ``minimal``: leave out artefact steps no sample uses (see :func:`pack_artefacts`).

    The tables run over the render classes: the organ classes ``0..cmax-1`` and, when a sample has
    clutter, ``CLUTTER_CLASSES`` more (``cmax..``), which only the image sees."""
    params = list(params)
    cmax = max(p.num_classes for p in params)
    K = CLUTTER_CLASSES if any(p.clutter is not None for p in params) else 0
    W = cmax + K

    def table(organ, clutter) -> np.ndarray:
        """float32 [B, W] of a per-sample attribute (``organ(p)``, ``clutter(c)``)."""
        return np.stack([_classes(organ(p), None if p.clutter is None else clutter(p.clutter), cmax, K)
                         for p in params]).astype(np.float32)

    arrays: dict[str, np.ndarray] = {
        "values": np.concatenate([table(lambda p: p.mean, lambda c: c.mean),
                                  table(lambda p: p.shell_value, lambda c: c.shell_value)], 1)}
    groups = []
    for in_plane in (False, True):
        group = [b for b, p in enumerate(params) if p.shell_2d == in_plane and _reach(p) > 0]
        if group:
            groups.append((in_plane, group, max(_reach(params[b]) for b in group)))
    shell = [p.shell_thickness.any() or (p.clutter is not None and p.clutter.shell_thickness.any()) for p in params]
    fill = [np.any(p.std > 0) or (p.clutter is not None and np.any(p.clutter.std > 0)) for p in params]
    meta = {"cmax": cmax, "width": W, "groups": groups, "shell": any(shell), "fill": any(fill),
            "texture": any(_has_texture(p) for p in params), "artefacts": False, "clutter": K > 0}
    if meta["shell"]:
        arrays["thickness"] = table(lambda p: p.shell_thickness, lambda c: c.shell_thickness)
    if meta["fill"]:
        std = table(lambda p: p.std, lambda c: c.std)
        arrays["fill_std"] = np.concatenate([std, np.zeros_like(std)], 1)
        arrays["fill_key"] = key_tensor([p.seed for p in params], FILL_STREAM)
    if meta["texture"]:
        for j, k in enumerate(TEXTURE_SCALES):
            small = tuple(max(2, s // k) for s in patch)
            grids = [p.texture_grids[j] if _has_texture(p) else np.zeros(small, np.float32) for p in params]
            arrays[f"tex{j}"] = np.stack([upsample_yz(g * TEXTURE_NORM, patch) for g in grids])
            arrays.update({f"tex{j}_{n}": v for n, v in x_weights(small[0], patch[0]).items()})
            arrays[f"tex{j}_w"] = table(lambda p, j=j: _texture_weights(p, j), lambda c: np.zeros(K))
        arrays["tex_band"] = np.array([p.texture_band for p in params], np.float32)
    if K:
        small = clutter_grid_shape(patch)
        for j in range(2):
            grids = [p.clutter.grids[j] if p.clutter is not None else np.zeros(small, np.float32) for p in params]
            arrays[f"clut{j}"] = np.stack([upsample_yz(g * TEXTURE_NORM, patch) for g in grids])
            arrays.update({f"clut{j}_{n}": v for n, v in x_weights(small[0], patch[0]).items()})
        arrays["clut_threshold"] = np.array([np.inf if p.clutter is None else p.clutter.threshold for p in params],
                                            np.float32)
    art = pack_artefacts([p.artefacts for p in params], patch, minimal)
    if art is not None:
        meta["artefacts"] = True
        arrays.update({f"art_{k}": v for k, v in art.items()})
    return arrays, meta


def _with_clutter(lab: torch.Tensor, a: dict[str, torch.Tensor], cmax: int) -> torch.Tensor:
    """Render classes: ``lab`` with its clutter voxels (background where the shape field passes the
    sample's threshold) set to ``cmax + k``, k the tertile of the class field (the label stays ``lab``)."""
    B = lab.shape[0]
    shape_field = upsample_x(a["clut0"], {n: a[f"clut0_{n}"] for n in ("i0", "w0", "w1")})
    class_field = upsample_x(a["clut1"], {n: a[f"clut1_{n}"] for n in ("i0", "w0", "w1")})
    on = (shape_field > a["clut_threshold"].view(B, 1, 1, 1)).logical_and_(lab == 0)
    k = (class_field > -CLUTTER_TERTILE).long().add_((class_field > CLUTTER_TERTILE).long()).add_(cmax)
    return torch.where(on, k, lab)


def render_packed(label: torch.Tensor, a: dict[str, torch.Tensor], meta: dict) -> torch.Tensor:
    """Device side: images float32 [B, 1, X, Y, Z] from labels and the uploaded tables of :func:`pack_render`.

    A fixed sequence of batched kernels (no loop over samples, no read back to the host)."""
    lab = label.long()
    if meta["clutter"]:
        lab = _with_clutter(lab, a, meta["cmax"])
    B = lab.shape[0]
    dev = lab.device
    width = meta["width"]
    flat = lab.reshape(B, -1)
    dist: torch.Tensor | None = None
    for in_plane, group, reach in meta["groups"]:
        d = boundary_distance(lab if len(group) == B else lab[group], reach, in_plane, num_classes=width)
        if len(group) == B:
            dist = d
        else:
            if dist is None:
                dist = torch.full(lab.shape, 255, dtype=torch.uint8, device=dev)
            dist[group] = d

    # Class index into per-sample tables [base values | shell values]: shell voxels use entry L + width.
    cls = flat
    if meta["shell"]:
        assert dist is not None  # a shell has a thickness >= 1, so its sample is in a group
        thick = _lookup(a["thickness"].to(torch.uint8), flat)
        small = torch.uint8 if 2 * width <= 256 else torch.int32  # index arithmetic in a narrow dtype
        shell = (dist.reshape(B, -1) <= thick).to(small).mul_(width)  # thickness 0 never matches (dist >= 1)
        cls = shell.add_(flat.to(small)).long()
    img = _lookup(a["values"], cls).view(lab.shape)

    if meta["fill"]:  # per-class Gaussian fill noise (shell voxels and samples without fill get 0 std)
        z = torch.empty(flat.shape, dtype=torch.float32, device=dev)
        gaussian_into(z, a["fill_key"])
        img.add_(z.mul_(_lookup(a["fill_std"], cls)).view(lab.shape))

    if meta["texture"]:  # sum_j amp[L] mix[L, j] F_j, faded in after the clean band
        assert dist is not None  # the groups cover every sample with texture
        tex = torch.zeros(lab.shape, dtype=torch.float32, device=dev)
        for j in range(len(TEXTURE_SCALES)):
            f = upsample_x(a[f"tex{j}"], {n: a[f"tex{j}_{n}"] for n in ("i0", "w0", "w1")})
            tex.add_(f.mul_(_lookup(a[f"tex{j}_w"], flat).view(lab.shape)))
        ramp = (dist.float() - a["tex_band"].view(B, 1, 1, 1)).mul_(1.0 / TEXTURE_RAMP).clamp_(0.0, 1.0)
        img.add_(tex.mul_(ramp))

    if meta["artefacts"]:
        apply_packed_artefacts_(img, {k[4:]: v for k, v in a.items() if k.startswith("art_")})
    else:
        img.clamp_(0.0, 1.0)
    return img[:, None]


def apply_render(label: torch.Tensor, params: Sequence[RenderParams], check: bool = True) -> torch.Tensor:
    """Render a batch of label patches into images.

    Args:
        label: integer labels [B, X, Y, Z] on any device (values 0..num_classes-1 of each sample).
        params: one :class:`RenderParams` per sample (modes may be mixed).
        check: also check the label values (one read back from the device; the stream, whose labels
            are its own, skips it).

    Returns:
        float32 image [B, 1, X, Y, Z] on the labels' device, values in [0, 1].

    Raises:
        ConfigError: wrong shape or dtype, or labels outside a sample's classes.
    """
    from anatosynth.synth.raster import upload

    params = list(params)
    _check_labels(label, params, check)
    _, nx, ny, nz = label.shape
    arrays, meta = pack_render(params, (nx, ny, nz))
    return render_packed(label, upload(arrays, label.device), meta)
