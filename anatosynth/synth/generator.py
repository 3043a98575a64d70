"""The synthetic stream: a bank in, an endless, seeded stream of labelled 3D patches out.

Sample ``i`` of seed ``s`` is made in two steps, as in TorchIO 2's ``make_params``/``apply`` split:

1. :meth:`SyntheticStream.draw` takes **all** randomness of the sample (numpy, CPU): the body layout
   (:mod:`anatosynth.synth.placement`) from ``SeedSequence([s, i // patches_per_body, 2**32])``, shared
   by consecutive samples and cached; the patch window and the render parameters from
   ``SeedSequence([s, i])``; with ``clutter`` > 0 the sample's background clutter from
   ``SeedSequence([s, i, 2**33])``. No other source of randomness exists.
2. :meth:`SyntheticStream.apply` turns a list of drawn samples into a batch (torch, CPU or CUDA),
   deterministically and per sample, so a sample's bytes do not depend on the batch it is in, the batch
   size, the number of data-loader workers or the run.

Rasterising: each placed organ that meets the patch window is warped from its small, bounding-box
cropped mask with ``grid_sample`` (trilinear on the mask, threshold 0.5), sampling only the window's
part of the patch that the organ's bounding box covers. Organs are painted in placement order; a
per-voxel bitmask of painted organs makes the forbidden-overlap count exact at patch resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from anatosynth.bank.model import ShapeBank
from anatosynth.errors import ConfigError
from anatosynth.options import resolve_device
from anatosynth.synth.config import SynthConfig
from anatosynth.synth.params import SampleParams, SynthBatch
from anatosynth.synth.placement import BodyModel, Layout, OrganPlacement

if TYPE_CHECKING:
    from anatosynth.synth.raster import Rasteriser

CLUTTER_KEY = 1 << 33  # third SeedSequence entry of a sample's clutter draws (layouts use 1 << 32)
MIX_KEY = 1 << 34  # mixed mode: third SeedSequence entry of a sample's anatomy-or-primitives coin

# resolve_device stays importable from here for older call sites; its one definition is anatosynth.options
__all__ = ["SynthConfig", "SynthBatch", "SampleParams", "SyntheticStream", "resolve_device"]


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
        self.parts: tuple[SyntheticStream, SyntheticStream] | None = None
        if self.config.mode == "mixed":
            self._init_mixed(bank)
        elif self.config.mode == "primitives":
            from anatosynth.synth.primitives import PRIMITIVE_CLASS_NAMES
            self.body: BodyModel | None = None
            self.class_names = list(PRIMITIVE_CLASS_NAMES)
            self.spacing = tuple(float(v) for v in bank.spacing) if bank is not None else (1.0, 1.0, 1.0)
        else:
            if bank is None:
                raise ConfigError(f"mode {self.config.mode!r} needs a shape bank (--bank)")
            self.body = BodyModel(bank, self.config)
            self.class_names = list(bank.class_names)
            self.spacing = tuple(float(v) for v in bank.spacing)
        self.num_classes = len(self.class_names)
        self._raster: Rasteriser | None = None
        self._layouts: dict[int, Layout] = {}

    def _init_mixed(self, bank: ShapeBank | None) -> None:
        """Mixed mode: an anatomy stream and a primitives stream of the same seed, one label space — the bank's
        organs first (labels 1..K, as in the anatomy stream), then the 32 primitive classes (K+1..K+32)."""
        if bank is None:
            raise ConfigError("mode 'mixed' needs a shape bank (--bank): its anatomy samples come from it")
        base = self.config.to_dict()
        anatomy = SyntheticStream(bank, SynthConfig.from_dict({**base, "mode": "anatomy"}), self.seed)
        shapes = SyntheticStream(None, SynthConfig.from_dict({**base, "mode": "primitives",
                                                              "render": base["mix_render"]}), self.seed)
        self.parts = (anatomy, shapes)
        self.body = anatomy.body
        self.class_names = anatomy.class_names + shapes.class_names[1:]
        self.spacing = anatomy.spacing

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
            self._layouts[body] = self._body().draw(rng)
        return self._layouts[body]

    def draw(self, index: int) -> SampleParams:
        """All randomness of sample ``index`` (numpy, CPU): layout, window, render parameters. Mixed mode: a
        coin from ``SeedSequence([seed, index, MIX_KEY])`` picks the part, whose own sample ``index`` it is
        (so an anatomy sample of the mixed stream is the anatomy stream's sample of that index)."""
        from anatosynth.synth.render import draw_render_params
        if self.parts is not None:
            if index < 0:
                raise ConfigError(f"sample index {index} must be non-negative")
            coin = np.random.default_rng(np.random.SeedSequence([self.seed, int(index), MIX_KEY]))
            part = int(coin.random() < self.config.mix_fraction)
            params = self.parts[part].draw(index)
            params.part = part
            return params
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
        if self.config.clutter > 0:  # its own generator: a stream without clutter draws what it drew before
            from anatosynth.synth.render import draw_clutter
            clutter_rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(index), CLUTTER_KEY]))
            params.render.clutter = draw_clutter(clutter_rng, self.config.clutter, params.render, self.patch)
        return params

    def _window(self, rng: np.random.Generator, placed: list[OrganPlacement]) -> np.ndarray:
        """Body-frame origin of the patch: centred on a placed organ (plus jitter) or in the body box."""
        sp = np.asarray(self.spacing)
        half = (np.asarray(self.patch) - 1) / 2 * sp
        if not placed:
            centre = (self._body().box_lo + self._body().box_hi) / 2
        elif self.config.window == "organ":
            chosen = placed[int(rng.integers(len(placed)))]
            centre = chosen.centre_mm + rng.uniform(-1, 1, size=3) * self.config.window_jitter * half
        else:
            centres = np.array([p.centre_mm for p in placed])
            centre = rng.uniform(centres.min(0), centres.max(0))
        return centre - half

    # ---- step 2: apply --------------------------------------------------------------------
    def apply(self, params: Sequence[SampleParams], device: str | torch.device = "cpu",
              batched: bool | None = None) -> SynthBatch:
        """Deterministic, batched: labels then images for drawn samples, on ``device``.

        A tensor program: no host synchronisation, kernels independent of the batch size (see
        :mod:`anatosynth.synth.raster`); the logs are read back only when ``SynthBatch.logs`` is used.
        ``batched`` (default: on CUDA) rasterises all samples in one program; otherwise (default on the
        CPU, where kernel launches are cheap but the padding of the organ boxes to the batch's largest
        window is not) each sample's organs are rasterised by the same program on their own. The bytes
        are the same either way."""
        from anatosynth.synth.raster import upload
        from anatosynth.synth.render import pack_render, render_packed
        dev = resolve_device(device)
        params = list(params)
        if not params:
            raise ConfigError("apply needs at least one sample")
        if self.parts is not None:
            return self._apply_mixed(params, dev, batched)
        batched = dev.type == "cuda" if batched is None else batched
        # every per-sample parameter of the batch goes to the device in one packed copy
        groups = [params] if batched else [[p] for p in params]
        arrays, metas = {}, []
        for g, group in enumerate(groups):
            a, meta = pack_render([p.render for p in group], self.patch, minimal=not batched)
            arrays.update({f"render{g}_{k}": v for k, v in a.items()})
            metas.append(meta)
        label_arrays, paint = self._pack_labels(params, batched)
        arrays.update(label_arrays)
        packed = upload(arrays, dev)
        label, logs = paint(packed, dev)
        images, b = [], 0
        for g, group in enumerate(groups):
            pre = f"render{g}_"
            tables = {k[len(pre):]: v for k, v in packed.items() if k.startswith(pre)}
            images.append(render_packed(label[b:b + len(group)], tables, metas[g]))
            b += len(group)
        image = images[0] if len(images) == 1 else torch.cat(images)
        return SynthBatch(image=image, label=label, logs=logs)

    def _apply_mixed(self, params: list[SampleParams], dev: torch.device, batched: bool | None) -> SynthBatch:
        """Each part applies its own samples (bytes per sample as in that part's stream); primitive labels move
        past the bank's organs; the samples go back into the batch's order."""
        assert self.parts is not None
        offset = self.parts[0].num_classes - 1
        image = torch.empty((len(params), 1, *self.patch), dtype=torch.float32, device=dev)
        label = torch.empty((len(params), *self.patch), dtype=torch.int64, device=dev)
        outs: list[SynthBatch] = []
        where: list[list[int]] = []
        for part, stream in enumerate(self.parts):
            mine = [k for k, p in enumerate(params) if p.part == part]
            where.append(mine)
            if not mine:
                continue
            out = stream.apply([params[k] for k in mine], dev, batched)
            at = torch.as_tensor(mine, device=dev)
            image[at] = out.image
            label[at] = torch.where(out.label > 0, out.label + offset, out.label) if part else out.label
            outs.append(out)

        def merged() -> list[dict]:
            found: dict[int, dict] = {}
            parts = iter(outs)
            for part, mine in enumerate(where):
                if mine:
                    for k, log in zip(mine, next(parts).logs):
                        found[k] = {**log, "mode": "mixed", "part": ("anatomy", "primitives")[part]}
            return [found[k] for k in range(len(params))]
        return SynthBatch(image=image, label=label, logs=merged)

    def _pack_labels(self, params: list[SampleParams], batched: bool):
        """Host arrays of the label program, and the device step ``paint(packed, dev) -> (label, logs thunk)``."""
        groups = [params] if batched else [[p] for p in params]
        if self.body is None:
            from anatosynth.synth.primitives import pack_primitives, paint_primitives
            arrays, boxes = {}, []
            for g, group in enumerate(groups):
                prim, b = pack_primitives([p.primitives for p in group], self.patch)
                arrays.update({f"prim{g}_{k}": v for k, v in prim.items()})
                boxes.append(b)

            def paint_primitives_(packed, dev):
                labels = []
                for g, group in enumerate(groups):
                    pre = f"prim{g}_"
                    labels.append(paint_primitives({k[len(pre):]: v for k, v in packed.items() if k.startswith(pre)},
                                                   boxes[g], self.patch, len(group), dev))
                label = labels[0] if len(labels) == 1 else torch.cat(labels)
                return label, lambda: self._primitive_logs(params, label)
            return arrays, paint_primitives_
        arrays, boxes = {}, []
        for g, group in enumerate(groups):
            arrays[f"rows{g}"], b = self.raster.pack(group)
            boxes.append(b)

        def paint(packed, dev):
            out = [self.raster.paint(packed[f"rows{g}"], boxes[g], dev) for g in range(len(groups))]
            label = out[0][0] if len(out) == 1 else torch.cat([o[0] for o in out])
            counts = out[0][1] if len(out) == 1 else torch.cat([o[1] for o in out], 1)
            return label, lambda: self._logs(params, counts)
        return arrays, paint

    def batch(self, indices: Sequence[int], device: str | torch.device = "cpu") -> SynthBatch:
        """``apply([draw(i) for i in indices], device)``."""
        return self.apply([self.draw(int(i)) for i in indices], device)

    def labels(self, params: Sequence[SampleParams],
               device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[dict]]:
        """Label maps [B, X, Y, Z] int64 and placement logs (no rendering)."""
        label, logs = self._labels(list(params), resolve_device(device))
        return label, logs()

    def _labels(self, params: list[SampleParams], dev: torch.device) -> tuple[torch.Tensor, Callable[[], list[dict]]]:
        """Label maps and a thunk that builds the logs (reading the device counts back once)."""
        from anatosynth.synth.raster import upload
        if self.parts is not None:  # mixed: the parts' label programs (and their renders: simple, not lean)
            out = self._apply_mixed(params, dev, dev.type == "cuda")
            return out.label, lambda: out.logs
        arrays, paint = self._pack_labels(params, dev.type == "cuda")
        return paint(upload(arrays, dev), dev)

    @property
    def raster(self):
        """The batched rasteriser of this stream (built on first use)."""
        if getattr(self, "_raster", None) is None:
            from anatosynth.synth.raster import Rasteriser
            self._raster = Rasteriser(self._body(), self.patch, self.config.max_carve)
        assert self._raster is not None
        return self._raster

    def _body(self) -> BodyModel:
        """The body model (anatomy and random modes; primitives mode has none)."""
        if self.body is None:
            raise ConfigError("primitives mode places no organs (no body model)")
        return self.body

    def organ_mask(self, p: SampleParams, pl: OrganPlacement,
                   dev: torch.device) -> tuple[tuple[slice, ...], torch.Tensor] | None:
        """One placed organ warped into the patch on its own (the rasteriser's geometry): (patch window,
        bool mask), or None outside the patch."""
        return self.raster.organ_mask(p, pl, dev)

    def _logs(self, params: list[SampleParams], counts: torch.Tensor) -> list[dict]:
        order = self.raster.order
        table = counts.cpu().numpy()  # [organs, B, 4]: the one read back of the batch
        logs = []
        for b, p in enumerate(params):
            stats = {order[k]: tuple(int(v) for v in table[k, b]) for k in range(len(order))}
            logs.append(self._log(p, stats))
        return logs

    # ---- logs -----------------------------------------------------------------------------
    def _log(self, p: SampleParams, stats: dict[int, tuple[int, ...]]) -> dict:
        """The placement log: organs placed (with position, anchor distance, voxels in the patch),
        organs dropped (with reason), and the forbidden-overlap voxel count of the painted patch."""
        assert self.bank is not None  # anatomy and random modes have a bank
        organs = self.bank.organs
        in_patch = {o: (c, k, v) for o, (c, k, _, v) in stats.items()}
        placed: list[dict[str, Any]] = []
        dropped = [dict(d) for d in p.dropped]
        for pl in p.placed:
            clash, voxels, carved = in_patch.get(pl.organ, (0, 0, 0))
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
                "forbidden_overlap_voxels": int(sum(f for _, _, f, _ in stats.values())),
                "anchor_distance_mm": {d["organ"]: d["anchor_distance_mm"] for d in placed}}

    def _primitive_logs(self, params: list[SampleParams], label: torch.Tensor) -> list[dict]:
        """Primitive logs: the classes present in each patch (one read back of a [B, C] table)."""
        B = label.shape[0]
        present = torch.zeros((B, self.num_classes), dtype=torch.bool, device=label.device)
        present.scatter_(1, label.reshape(B, -1), True)
        logs = []
        for p, row in zip(params, present.cpu().numpy()):
            classes = [int(c) for c in np.flatnonzero(row) if c]
            logs.append({"index": p.index, "seed": self.seed, "mode": "primitives", "placed":
                         [{"organ": self.class_names[c], "label": c} for c in classes],
                         "dropped": [], "organs_placed": len(classes), "organs_in_patch": len(classes),
                         "forbidden_overlap_voxels": 0, "anchor_distance_mm": {}})
        return logs
