"""The synthetic stream: a bank in, an endless, seeded stream of labelled 3D patches out.

Sample ``i`` of seed ``s`` is made in two steps, as in TorchIO 2's ``make_params``/``apply`` split:

1. :meth:`SyntheticStream.draw` takes **all** randomness of the sample (numpy, CPU): the body layout
   (:mod:`anatosynth.synth.placement`) from ``SeedSequence([s, i // patches_per_body, 2**32])``, shared
   by consecutive samples and cached; the patch window and the render parameters from
   ``SeedSequence([s, i])``. No other source of randomness exists.
2. :meth:`SyntheticStream.apply` turns a list of drawn samples into a batch (torch, CPU or CUDA),
   deterministically and per sample, so a sample's bytes do not depend on the batch it is in, the batch
   size, the number of data-loader workers or the run.

Rasterising: each placed organ that meets the patch window is warped from its small, bounding-box
cropped mask with ``grid_sample`` (trilinear on the mask, threshold 0.5), sampling only the window's
part of the patch that the organ's bounding box covers. Organs are painted in placement order; a
per-voxel bitmask of painted organs makes the forbidden-overlap count exact at patch resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from anatosynth.bank.model import ShapeBank
from anatosynth.errors import ConfigError
from anatosynth.synth.config import MODES, SynthConfig
from anatosynth.synth.placement import BodyModel, Layout, OrganPlacement
from anatosynth.synth.warp import pad_mask, warp_sample

__all__ = ["SynthConfig", "SynthBatch", "SampleParams", "SyntheticStream", "MODES", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device, checked: CUDA requested without a GPU is a ConfigError, not a crash later."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


@dataclass
class SampleParams:
    """All random decisions of one sample (picklable, so data-loader workers can draw them).

    Attributes:
        index: sample index in the stream.
        origin_mm: body-frame position (mm) of the centre of patch voxel ``[0, 0, 0]``.
        placed: organs laid out in the body, in placement order (anatomy and random modes).
        dropped: organs the layout could not place, with reasons.
        render: the render helper's parameters for this sample.
        primitives: primitives mode: the primitive helper's parameters.
    """

    index: int
    origin_mm: np.ndarray
    placed: list[OrganPlacement] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    render: Any = None
    primitives: Any = None


@dataclass
class SynthBatch:
    """A batch of synthetic patches.

    Attributes:
        image: float32 [B, 1, X, Y, Z] in [0, 1].
        label: int64 [B, X, Y, Z]; 0 background, 1..C bank organs (or primitive classes).
        logs: one JSON-serialisable placement log per sample.
    """

    image: torch.Tensor
    label: torch.Tensor
    logs: list[dict]


class SyntheticStream:
    """An endless, seeded stream of (image, label) patches from a shape bank.

    Args:
        bank: the shape bank (may be None in primitives mode).
        config: synthesis configuration.
        seed: stream seed; sample ``i`` depends only on ``(seed, i)`` and the config.

    Raises:
        ConfigError: invalid config, empty bank, organs that cannot fit the patch.
    """

    def __init__(self, bank: ShapeBank | None, config: SynthConfig | None = None, seed: int = 0):
        self.config = (config or SynthConfig()).validate()
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"seed {seed!r}: expected a non-negative integer")
        self.seed = int(seed)
        self.bank = bank
        self.patch = self.config.patch
        if self.config.mode == "primitives":
            from anatosynth.synth.primitives import PRIMITIVE_CLASS_NAMES
            self.body = None
            self.class_names = list(PRIMITIVE_CLASS_NAMES)
            self.spacing = tuple(float(v) for v in bank.spacing) if bank is not None else (1.0, 1.0, 1.0)
        else:
            if bank is None:
                raise ConfigError(f"mode {self.config.mode!r} needs a shape bank (--bank)")
            self.body = BodyModel(bank, self.config)
            self.class_names = list(bank.class_names)
            self.spacing = tuple(float(v) for v in bank.spacing)
        self.num_classes = len(self.class_names)
        self._device_cache: dict[str, dict] = {}
        self._layouts: dict[int, Layout] = {}

    # ---- step 1: draw ---------------------------------------------------------------------
    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` (window, render, primitives): ``SeedSequence([seed, index])``."""
        if index < 0:
            raise ConfigError(f"sample index {index} must be non-negative")
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))

    def layout(self, index: int) -> Layout:
        """The body of sample ``index``: body ``index // patches_per_body``, laid out from
        ``SeedSequence([seed, body, 1 << 32])`` (a key no sample uses) and cached, since consecutive
        samples share it."""
        body = int(index) // self.config.patches_per_body
        if body not in self._layouts:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, body, 1 << 32]))
            if len(self._layouts) >= 16:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[body] = self.body.draw(rng)
        return self._layouts[body]

    def draw(self, index: int) -> SampleParams:
        """All randomness of sample ``index`` (numpy, CPU): layout, window, render parameters."""
        from anatosynth.synth.render import draw_render_params
        rng = self.rng(index)
        if self.body is None:
            from anatosynth.synth.primitives import draw_primitive_params
            prim = draw_primitive_params(rng, self.patch, n_objects=self.config.primitive_objects)
            origin = -(np.asarray(self.patch) - 1) / 2 * np.asarray(self.spacing)
            params = SampleParams(int(index), origin, primitives=prim)
        else:
            layout = self.layout(index)
            origin = self._window(rng, layout.placed)
            params = SampleParams(int(index), origin, layout.placed, layout.dropped)
        params.render = draw_render_params(rng, self.num_classes, self.config.render, self.patch)
        return params

    def _window(self, rng: np.random.Generator, placed: list[OrganPlacement]) -> np.ndarray:
        """Body-frame origin of the patch: centred on a placed organ (plus jitter) or in the body box."""
        sp = np.asarray(self.spacing)
        half = (np.asarray(self.patch) - 1) / 2 * sp
        if not placed:
            centre = (self.body.box_lo + self.body.box_hi) / 2
        elif self.config.window == "organ":
            chosen = placed[int(rng.integers(len(placed)))]
            centre = chosen.centre_mm + rng.uniform(-1, 1, size=3) * self.config.window_jitter * half
        else:
            centres = np.array([p.centre_mm for p in placed])
            centre = rng.uniform(centres.min(0), centres.max(0))
        return centre - half

    # ---- step 2: apply --------------------------------------------------------------------
    def apply(self, params: Sequence[SampleParams], device: str | torch.device = "cpu") -> SynthBatch:
        """Deterministic, batched: labels then images for drawn samples, on ``device``."""
        from anatosynth.synth.render import apply_render
        dev = resolve_device(device)
        params = list(params)
        if not params:
            raise ConfigError("apply needs at least one sample")
        label, logs = self.labels(params, dev)
        image = apply_render(label, [p.render for p in params])
        return SynthBatch(image=image, label=label, logs=logs)

    def batch(self, indices: Sequence[int], device: str | torch.device = "cpu") -> SynthBatch:
        """``apply([draw(i) for i in indices], device)``."""
        return self.apply([self.draw(int(i)) for i in indices], device)

    def labels(self, params: Sequence[SampleParams], device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[dict]]:
        """Label maps [B, X, Y, Z] int64 and placement logs (no rendering)."""
        dev = resolve_device(device)
        if self.body is None:
            from anatosynth.synth.primitives import apply_primitives
            label = apply_primitives([p.primitives for p in params], self.patch, device=dev).to(torch.int64)
            logs = [self._primitive_log(p, label[b]) for b, p in enumerate(params)]
            return label, logs
        maps, logs = [], []
        for p in params:
            lab, stats = self._rasterise(p, dev)
            maps.append(lab)
            logs.append(self._log(p, stats))
        return torch.stack(maps), logs

    # ---- rasterising ----------------------------------------------------------------------
    def _cache(self, dev: torch.device) -> dict:
        """Per-device tensors: padded float masks, elastic domains and the forbidden bitmasks."""
        key = str(dev)
        if key not in self._device_cache:
            masks = [[pad_mask(s.mask, dev) for s in o.shapes] for o in self.bank.organs]
            bits = torch.from_numpy(self.body.bits.view(np.int64)).to(dev)
            forbidden = torch.from_numpy(self.body.forbidden_bits.view(np.int64)).to(dev)
            self._device_cache[key] = {"masks": masks, "bits": bits, "forbidden": forbidden}
        return self._device_cache[key]

    def _window_of(self, p: SampleParams, pl: OrganPlacement) -> tuple[np.ndarray, np.ndarray] | None:
        """Patch index range [lo, hi) covered by the organ's bounding box, or None if disjoint."""
        sp = np.asarray(self.spacing)
        lo = np.maximum(np.ceil((pl.bbox_mm[0] - p.origin_mm) / sp - 1e-6).astype(int), 0)
        hi = np.minimum(np.floor((pl.bbox_mm[1] - p.origin_mm) / sp + 1e-6).astype(int) + 1, self.patch)
        return None if np.any(hi <= lo) else (lo, hi)

    def organ_mask(self, p: SampleParams, pl: OrganPlacement,
                   dev: torch.device) -> tuple[tuple[slice, ...], torch.Tensor] | None:
        """One placed organ warped into the patch: (patch window, bool mask), or None outside the patch."""
        win = self._window_of(p, pl)
        if win is None:
            return None
        lo, hi = win
        g = self.body.geometry[pl.organ][pl.shape]
        sp = np.asarray(self.spacing)
        rel = [p.origin_mm[a] - pl.centre_mm[a] + np.arange(lo[a], hi[a]) * sp[a] for a in range(3)]
        mask = self._cache(dev)["masks"][pl.organ][pl.shape]
        value = warp_sample(mask, g.lo_mm, g.span_mm, sp, rel, pl.matrix, pl.elastic)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), value > 0.5

    def _rasterise(self, p: SampleParams, dev: torch.device) -> tuple[torch.Tensor, list]:
        """One sample's label map and, per organ met: (placement, clash voxels of a dropped organ, kept
        voxels, forbidden voxels added, carved voxels). An organ whose patch-resolution mask meets a
        painted organ it may not overlap loses those voxels if they are at most ``max_carve`` of its
        voxels in the patch; otherwise it is not painted (the log records it as dropped)."""
        cache = self._cache(dev)
        label = torch.zeros(self.patch, dtype=torch.int64, device=dev)
        words = cache["bits"].shape[1]
        occ = torch.zeros((words,) + tuple(self.patch), dtype=torch.int64, device=dev)
        stats = []
        for pl in p.placed:
            got = self.organ_mask(p, pl, dev)
            if got is None:
                continue
            window, mask = got
            clash = torch.zeros_like(mask)
            for w in range(words):
                clash |= (occ[(w,) + window] & cache["forbidden"][pl.organ, w]) != 0
            clash &= mask
            n_clash = clash.sum()
            # a small clash is carved away (the organ yields to the painted one); a larger one drops it
            yields = n_clash <= self.config.max_carve * mask.sum()
            keep = mask & ~clash & yields
            lab = label[window]
            lab.copy_(torch.where(keep, pl.organ + 1, lab))
            w = pl.organ // 64
            o = occ[(w,) + window]
            o.copy_(torch.where(keep, o | cache["bits"][pl.organ, w], o))
            # forbidden voxels this organ adds to the painted patch: zero by construction, counted anyway
            stats.append((pl, n_clash * ~yields, keep.sum(), (clash & keep).sum(), n_clash * yields))
        if not stats:
            return label, []
        counts = torch.stack([torch.stack(s[1:]) for s in stats]).cpu().numpy()
        return label, [(s[0], int(c), int(k), int(f), int(v)) for s, (c, k, f, v) in zip(stats, counts)]

    # ---- logs -----------------------------------------------------------------------------
    def _log(self, p: SampleParams, stats: list) -> dict:
        """The placement log: organs placed (with position, anchor distance, voxels in the patch),
        organs dropped (with reason), and the forbidden-overlap voxel count of the painted patch."""
        organs = self.bank.organs
        in_patch = {id(pl): (c, k, v) for pl, c, k, _, v in stats}
        placed, dropped = [], [dict(d) for d in p.dropped]
        for pl in p.placed:
            clash, voxels, carved = in_patch.get(id(pl), (0, 0, 0))
            if clash:
                dropped.append({"organ": organs[pl.organ].name, "reason":
                                f"forbidden overlap at patch resolution ({clash} voxels)"})
                continue
            placed.append({"organ": organs[pl.organ].name, "label": pl.organ + 1,
                           "subject": organs[pl.organ].shapes[pl.shape].subject,
                           "centre_mm": [round(float(v), 3) for v in pl.centre_mm],
                           "anchor_distance_mm": round(pl.anchor_distance_mm, 3),
                           "attempts": pl.attempts, "shift_mm": round(pl.shift_mm, 3),
                           "voxels_in_patch": voxels, "carved_voxels": carved})
        return {"index": p.index, "seed": self.seed, "mode": self.config.mode,
                "patch_origin_mm": [round(float(v), 3) for v in p.origin_mm],
                "placed": placed, "dropped": dropped,
                "organs_placed": len(placed),
                "organs_in_patch": sum(1 for d in placed if d["voxels_in_patch"] > 0),
                "forbidden_overlap_voxels": int(sum(f for _, _, _, f, _ in stats)),
                "anchor_distance_mm": {d["organ"]: d["anchor_distance_mm"] for d in placed}}

    def _primitive_log(self, p: SampleParams, label: torch.Tensor) -> dict:
        present = torch.unique(label).cpu().tolist()
        return {"index": p.index, "seed": self.seed, "mode": "primitives", "placed":
                [{"organ": self.class_names[c], "label": int(c)} for c in present if c],
                "dropped": [], "organs_placed": sum(1 for c in present if c),
                "organs_in_patch": sum(1 for c in present if c),
                "forbidden_overlap_voxels": 0, "anchor_distance_mm": {}}
