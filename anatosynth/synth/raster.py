"""Batched rasteriser: every placed organ of a batch of samples painted into label patches as one tensor program.

The host packs each sample's geometry (numpy, from the drawn :class:`~anatosynth.synth.placement.Layout`)
into one float32 array [B, organs, F]; it reaches the device in a single copy (pinned, ``non_blocking``
on CUDA). The device then runs a loop over the bank's organs in placement order (the same order for
every sample), each step vectorised over the batch:

1. a box of the patch per sample (same size for the batch, its own start) that holds the organ's
   window, i.e. the part of the patch its conservative bounding box covers;
2. the box's sampling grid: the affine map as three 1-D terms per axis, plus the elastic displacement,
   sampled by ``grid_sample`` on a grid ELASTIC_STRIDE voxels coarse that is aligned to the patch
   (nodes at patch indices 0, 4, 8, ...) and upsampled trilinearly with gathers, so a voxel's value
   depends only on its patch index and its sample, never on the box or the batch;
3. ``grid_sample`` of the organ's padded masks (its shapes stacked, one picked per sample), threshold
   0.5, restricted to the sample's own window;
4. painting with the forbidden-overlap accounting of the sequential method: a per-voxel bitmask of
   painted organs; a clash of at most ``max_carve`` of the organ's voxels is carved away, a larger one
   drops the organ; counts stay on the device ([organs, B, 4]) until a log is asked for.

No value is read back to the host and no Python branch depends on tensor values, so on CUDA the
program queues without synchronising, and its number of kernels depends on the bank's organs only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from anatosynth.synth.warp import ELASTIC_STRIDE, pad_mask

__all__ = ["Rasteriser", "upload"]

_FLIP = [2, 1, 0]  # grid_sample's last dim is (W, H, D) = (z, y, x) for a volume laid out [x, y, z]


def upload(arrays: dict[str, np.ndarray], dev: torch.device) -> dict[str, torch.Tensor]:
    """Host arrays to the device in ONE copy: packed into a flat float32 buffer (int32 arrays keep their
    bits), pinned and ``non_blocking`` on CUDA; returns device views of the original shapes and dtypes."""
    parts, spec, n = [], [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        flat = a.view(np.float32).ravel() if a.dtype == np.int32 else a.astype(np.float32).ravel()
        parts.append(flat)
        spec.append((name, n, a.shape, a.dtype == np.int32))
        n += flat.size
    host = torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.float32))
    if dev.type == "cuda":
        buf = host.pin_memory().to(dev, non_blocking=True)
    else:
        buf = host.to(dev)
    out = {}
    for name, start, shape, is_int in spec:
        v = buf[start:start + int(np.prod(shape, dtype=np.int64))]
        out[name] = (v.view(torch.int32) if is_int else v).view(shape)
    return out


@dataclass
class _Organ:
    """Static device data of one bank organ: its shapes' padded masks stacked [S, 1, D, H, W], and their
    summed-area tables [S, D + 1, H + 1, W + 1] (int32; entry (d, h, w) counts the mask voxels before it)."""

    masks: torch.Tensor
    size: np.ndarray  # (3,) stacked padded size - 1 (the normalisation of align_corners=True)
    sat: torch.Tensor


def _summed_area(masks: torch.Tensor) -> torch.Tensor:
    """Summed-area tables of binary masks [S, 1, D, H, W] (host tensors): int32 [S, D + 1, H + 1, W + 1].

    Raises:
        ValueError: a mask value other than 0 or 1 (a bank holds bool masks; the CPU path's block
            test relies on it)."""
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError("organ masks must be binary (0/1)")
    t = F.pad(masks[:, 0].to(torch.int32), (1, 0, 1, 0, 1, 0))
    return t.cumsum(1).cumsum(2).cumsum(3).to(torch.int32)


class _Fields:
    """Column layout of the packed per-(sample, organ) rows."""

    def __init__(self, n: int):
        names = [("valid", 1), ("shape", 1), ("slope1", 9), ("offset1", 9), ("bias1", 3), ("slope2", 9),
                 ("offset2", 9), ("bias2", 3), ("lo", 3), ("hi", 3), ("start", 3), ("coarse0", 3),
                 ("field", 3 * n ** 3)]
        self.slices, k = {}, 0
        for name, size in names:
            self.slices[name] = slice(k, k + size)
            k += size
        self.width = k
        self.n = n


def _upsample_axis(v: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Linear upsampling by ELASTIC_STRIDE along ``dim`` (nodes at 0, q, 2q, ...), cropped to ``size``.

    Phase ``r`` of every interval is ``v[j] (1 - r/q) + v[j + 1] r/q`` with exact weights (multiples of 1/4):
    plain elementwise products, broadcast over the phases, so every element is computed the same way
    whatever the batch, the box or the block."""
    q = ELASTIC_STRIDE
    n = (size - 1) // q + 1  # intervals that hold the wanted fine indices
    shape = [1] * (v.dim() + 1)
    shape[dim + 1] = q
    r = torch.arange(q, device=v.device, dtype=v.dtype).div_(q).view(shape)
    v0, v1 = v.narrow(dim, 0, n).unsqueeze(dim + 1), v.narrow(dim, 1, n).unsqueeze(dim + 1)
    out = v0 * (1.0 - r)
    out += v1 * r
    return out.flatten(dim, dim + 1).narrow(dim, 0, size)


class Boxes(list):
    """Each organ's box size (a list of (Ex, Ey, Ez), as :meth:`Rasteriser.pack` returns), and for a batch
    of ONE sample also its host geometry: ``windows`` (int64 [organs, 3 (start, lo, hi), 3], patch
    voxels) and ``shapes`` (int64 [organs], the bank shape placed), with which :meth:`Rasteriser.paint`
    works on the organ's exact window through slices."""

    windows: np.ndarray | None = None
    shapes: np.ndarray | None = None


class Rasteriser:
    """Paints the placed organs of a batch of samples (see the module docstring).

    Args:
        body: the stream's :class:`~anatosynth.synth.placement.BodyModel` (order, geometry, bitmasks).
        patch: (X, Y, Z) patch size in voxels.
        max_carve: the largest share of an organ's patch voxels that may be carved away.
    """

    def __init__(self, body, patch: tuple[int, int, int], max_carve: float):
        self.body = body
        self.bank = body.bank
        self.patch = tuple(int(v) for v in patch)
        self.max_carve = float(max_carve)
        self.order = list(body.order)
        self.spacing = np.asarray(body.spacing, dtype=np.float64)
        self.n_points = int(body.config.elastic_points)
        self.fields = _Fields(self.n_points)
        self.words = int(body.bits.shape[1])
        self.bits = [[int(v) for v in row] for row in body.bits.view(np.int64)]
        self.forbidden = [[int(v) for v in row] for row in body.forbidden_bits.view(np.int64)]
        self._devices: dict[str, list[_Organ]] = {}
        self._layouts: dict[int, tuple[object, np.ndarray]] = {}

    # ---- static device data -----------------------------------------------------------------
    def organs(self, dev: torch.device) -> list[_Organ]:
        """Per organ (bank index), its shapes' padded masks stacked on ``dev`` (cached per device)."""
        key = str(dev)
        if key not in self._devices:
            out = []
            for o in self.bank.organs:
                if not o.shapes:
                    empty = torch.zeros((1, 1, 2, 2, 2))
                    out.append(_Organ(empty.to(dev), np.ones(3), _summed_area(empty).to(dev)))
                    continue
                padded = [pad_mask(s.mask) for s in o.shapes]
                dims = np.max([p.shape[2:] for p in padded], axis=0)
                stack = torch.zeros((len(padded), 1, *dims), dtype=torch.float32)
                for i, p in enumerate(padded):
                    stack[i, :, :p.shape[2], :p.shape[3], :p.shape[4]] = p[0]
                out.append(_Organ(stack.to(dev), dims.astype(np.float64) - 1, _summed_area(stack).to(dev)))
            self._devices[key] = out
        return self._devices[key]

    # ---- host packing -----------------------------------------------------------------------
    def _layout_rows(self, placed: list) -> np.ndarray:
        """Rows of one body's layout that do not depend on the window (float64 [organs, F]); the
        window-dependent columns are filled per sample. Cached per layout (samples of a body share it)."""
        key = id(placed)
        hit = self._layouts.get(key)
        if hit is not None and hit[0] is placed:
            return hit[1]
        f, s = self.fields, self.fields.slices
        rows = np.zeros((len(self.order), f.width + 9), dtype=np.float64)  # + centre (3), bbox (6)
        slot = {o: k for k, o in enumerate(self.order)}
        sp = self.spacing
        for pl in placed:
            k = slot[pl.organ]
            g = self.body.geometry[pl.organ][pl.shape]
            size = self._static_size(pl.organ)
            m = np.asarray(pl.matrix, dtype=np.float64)
            lo = np.asarray(g.lo_mm, dtype=np.float64)
            k1 = 2.0 / np.asarray(g.span_mm, dtype=np.float64)
            k2 = 2.0 / (sp * size)
            a1 = (k1[:, None] * m)[_FLIP]
            a2 = (k2[:, None] * m)[_FLIP]
            row = rows[k]
            row[s["valid"]] = 1.0
            row[s["shape"]] = pl.shape
            row[s["slope1"]] = (a1 * sp[None, :]).ravel()
            row[s["bias1"]] = (-lo * k1 - 1.0)[_FLIP]
            row[s["slope2"]] = (a2 * sp[None, :]).ravel()
            row[s["bias2"]] = ((1.0 - lo / sp) * 2.0 / size - 1.0)[_FLIP]
            row[s["field"]] = (np.asarray(pl.elastic, dtype=np.float64) * k2[:, None, None, None])[_FLIP].ravel()
            # matrices kept for the per-sample offsets: offset[c, a] = A[c, a] * (origin - centre)[a]
            row[s["offset1"]] = a1.ravel()
            row[s["offset2"]] = a2.ravel()
            row[f.width:f.width + 3] = pl.centre_mm
            row[f.width + 3:f.width + 9] = np.asarray(pl.bbox_mm, dtype=np.float64).ravel()
        if len(self._layouts) >= 64:
            self._layouts.pop(next(iter(self._layouts)))
        self._layouts[key] = (placed, rows)
        return rows

    def _static_size(self, organ: int) -> np.ndarray:
        """Stacked padded size - 1 of an organ's masks (the same on every device)."""
        dims = np.max([np.asarray(s.mask.shape) + 2 for s in self.bank.organs[organ].shapes], axis=0)
        return dims.astype(np.float64) - 1

    def pack(self, params) -> tuple[np.ndarray, Boxes]:
        """The batch's rows (float32 [B, organs, F]) and each organ's box size (the batch's largest window;
        for one sample, with its windows, see :class:`Boxes`)."""
        f, s = self.fields, self.fields.slices
        sp = self.spacing
        P = np.asarray(self.patch)
        per_sample = []
        for p in params:
            base = self._layout_rows(p.placed)
            r = base[:, :f.width].copy()
            valid = base[:, 0] > 0
            rel0 = np.asarray(p.origin_mm, dtype=np.float64)[None, :] - base[:, f.width:f.width + 3]
            for name in ("offset1", "offset2"):
                a = base[:, s[name]].reshape(-1, 3, 3)
                r[:, s[name]] = (a * rel0[:, None, :]).reshape(-1, 9)
            bbox = base[:, f.width + 3:f.width + 9].reshape(-1, 2, 3)
            origin = np.asarray(p.origin_mm, dtype=np.float64)
            lo = np.maximum(np.ceil((bbox[:, 0] - origin) / sp - 1e-6), 0)
            hi = np.minimum(np.floor((bbox[:, 1] - origin) / sp + 1e-6) + 1, P)
            empty = ~valid | np.any(hi <= lo, axis=1)
            lo[empty] = 0
            hi[empty] = 0
            r[:, s["lo"]] = lo
            r[:, s["hi"]] = hi
            r[:, 0] = ~empty
            per_sample.append(r)
        rows = np.stack(per_sample)  # [B, organs, F]
        # boxes start on a multiple of the elastic stride (the coarse nodes are patch-aligned) and
        # have a size that is one, so that a box clamped to the patch end stays aligned
        q = ELASTIC_STRIDE
        aligned = np.floor_divide(rows[:, :, s["lo"]], q) * q
        extent = rows[:, :, s["hi"]] - aligned
        boxes = np.minimum(np.maximum(-np.floor_divide(-extent.max(0), q) * q, q), P).astype(np.int64)
        start = np.maximum(np.minimum(aligned, np.floor_divide(P - boxes[None], q) * q), 0)
        rows[:, :, s["start"]] = start
        rows[:, :, s["coarse0"]] = start / q
        out = Boxes(tuple(int(v) for v in b) for b in boxes)
        if len(rows) == 1:
            out.windows = np.stack([start[0], rows[0, :, s["lo"]], rows[0, :, s["hi"]]], 1).astype(np.int64)
            out.shapes = rows[0, :, s["shape"]][:, 0].astype(np.int64)
        return rows.astype(np.float32), out

    # ---- device program ---------------------------------------------------------------------
    @staticmethod
    def _affine(slope: torch.Tensor, offset: torch.Tensor, bias: torch.Tensor,
                g: list[torch.Tensor]) -> torch.Tensor:
        """``bias + sum_a (slope[:, :, a] g_a + offset[:, :, a])`` on the grid g_0 x g_1 x g_2: [B, 3, n0, n1, n2].

        Separable, elementwise and per sample, so a voxel's coordinates do not depend on the box or batch."""
        t = [g[a][:, None, :] * slope[:, :, a, None] + offset[:, :, a, None] for a in range(3)]
        out = (t[0] + bias[:, :, None])[:, :, :, None, None] + t[1][:, :, None, :, None]
        return out + t[2][:, :, None, None, :]

    def _nodes(self, rows: torch.Tensor, box: tuple[int, int, int], dev: torch.device) -> torch.Tensor:
        """The organ's sampling coordinates (normalised mask coordinates, grid_sample's (W, H, D) order)
        at the box's coarse nodes, every ELASTIC_STRIDE voxels: [B, 3, nx, ny, nz]."""
        s, n = self.fields.slices, self.n_points
        B = rows.shape[0]
        coarse0 = rows[:, s["coarse0"]].long()
        nodes = [-(-box[a] // ELASTIC_STRIDE) + 1 for a in range(3)]
        coarse = [(coarse0[:, a, None] + torch.arange(nodes[a], device=dev)).mul_(ELASTIC_STRIDE).float()
                  for a in range(3)]
        grid = self._affine(rows[:, s["slope1"]].view(B, 3, 3), rows[:, s["offset1"]].view(B, 3, 3),
                            rows[:, s["bias1"]], coarse)
        field = rows[:, s["field"]].reshape(B, 3, n, n, n)
        disp = F.grid_sample(field, grid.permute(0, 2, 3, 4, 1), mode="bilinear", padding_mode="border",
                             align_corners=True)  # [B, 3, nx, ny, nz]
        # the affine part is linear, so the coarse nodes carry it exactly: add it there and upsample once
        base = self._affine(rows[:, s["slope2"]].view(B, 3, 3), rows[:, s["offset2"]].view(B, 3, 3),
                            rows[:, s["bias2"]], coarse)
        base += disp
        return base

    def _grid(self, rows: torch.Tensor, box: tuple[int, int, int], dev: torch.device) -> torch.Tensor:
        """The organ's sampling grid on its box: [B, Ex, Ey, Ez, 3] as ``grid_sample`` reads it (the nodes
        upsampled X, then Y, then Z).

        Held [B, z, y, x, 3] in memory, so that the largest steps (Y, Z) run over long contiguous rows."""
        base = self._nodes(rows, box, dev).permute(0, 4, 3, 2, 1).contiguous()
        for a in range(3):
            base = _upsample_axis(base, 3 - a, box[a])
        return base.permute(0, 3, 2, 1, 4)

    def warp(self, rows: torch.Tensor, organ: int, box: tuple[int, int, int], dev: torch.device) -> torch.Tensor:
        """One organ of every sample warped into its box: bool [B, Ex, Ey, Ez] (False outside the window)."""
        s = self.fields.slices
        B = rows.shape[0]
        grid = self._grid(rows, box, dev)
        masks = self.organs(dev)[organ].masks.index_select(0, rows[:, s["shape"]].view(B).long())
        value = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
        start = rows[:, s["start"]].long()
        fine = [start[:, a, None] + torch.arange(box[a], device=dev) for a in range(3)]  # patch indices
        lo, hi = rows[:, s["lo"]].long(), rows[:, s["hi"]].long()
        inside = [(fine[a] >= lo[:, a, None]) & (fine[a] < hi[:, a, None]) for a in range(3)]
        window = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
        return (value > 0.5) & window

    def _warp_window(self, rows: torch.Tensor, organ: int, box: tuple[int, int, int], window: np.ndarray,
                     shape: int, dev: torch.device) -> torch.Tensor:
        """One organ of ONE sample warped into its exact window (host geometry ``window``: start, lo,
        hi; ``shape``: the bank shape): bool [wx, wy, wz], the same voxels :meth:`warp` gives (CPU path:
        compacts on the host).

        The window is cut into the ELASTIC_STRIDE blocks of the coarse nodes. A voxel's coordinates are
        a trilinear blend of its block's 8 nodes, so they lie in the box of those nodes (plus one mask
        voxel for rounding); the mask's summed-area table says whether that box is all inside the organ
        (every voxel True: its 8 interpolation weights sum to 1 > 0.5) or all outside (False). Only the
        other blocks are upsampled and sampled, with the same arithmetic as :meth:`warp`, one
        ``grid_sample`` batch entry per block (the CPU kernel runs batch entries in parallel)."""
        q = ELASTIC_STRIDE
        start, lo, hi = window
        b0 = (lo - start) // q
        nb = (hi - start - 1) // q + 1 - b0
        nodes = self._nodes(rows, box, dev)[0]
        nodes = nodes[:, b0[0]:b0[0] + nb[0] + 1, b0[1]:b0[1] + nb[1] + 1, b0[2]:b0[2] + nb[2] + 1]
        org = self.organs(dev)[organ]
        masks, sat = org.masks[shape:shape + 1], org.sat[shape]
        limit = torch.tensor(masks.shape[:1:-1], device=dev, dtype=torch.float32).sub_(1).view(3, 1, 1, 1)  # W, H, D
        corners = torch.stack([nodes[:, i:i + nb[0], j:j + nb[1], k:k + nb[2]]
                               for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        c_lo = (corners.amin(0) + 1).div_(2).mul_(limit).floor_().sub_(1)
        c_hi = (corners.amax(0) + 1).div_(2).mul_(limit).floor_().add_(2)
        inside = ((c_lo >= 0) & (c_hi <= limit)).all(0)
        a = torch.minimum(c_lo.clamp(min=0), limit + 1).long()  # first corner, clamped to the table
        b = torch.minimum((c_hi + 1).clamp(min=0), limit + 1).long()  # one past the last
        (aw, ah, ad), (bw, bh, bd) = a, b
        ones = (sat[bd, bh, bw] - sat[ad, bh, bw] - sat[bd, ah, bw] - sat[bd, bh, aw]
                + sat[ad, ah, bw] + sat[ad, bh, aw] + sat[bd, ah, aw] - sat[ad, ah, aw])
        full = ones == (b - a).prod(0)
        sure = inside & full
        mixed = ((ones > 0) & ~sure).nonzero()  # [M, 3] blocks to sample
        out = sure[:, :, :, None, None, None].repeat(1, 1, 1, q, q, q)
        if len(mixed):
            m = nodes.permute(1, 2, 3, 0).contiguous()
            ix, iy, iz = mixed.unbind(1)
            v = torch.stack([m[ix + i, iy + j, iz + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
            v = v.permute(2, 0, 1).contiguous().view(3, 2, 2, 2, -1)  # [3, 2, 2, 2, M]: the blocks' nodes
            for dim in (1, 2, 3):
                v = _upsample_axis(v, dim, q)
            grid = v.permute(4, 1, 2, 3, 0)  # [M, q, q, q, 3]
            value = F.grid_sample(masks.expand(len(mixed), *masks.shape[1:]), grid, mode="bilinear",
                                  padding_mode="zeros", align_corners=True)
            out[ix, iy, iz] = value[:, 0] > 0.5
        out = out.permute(0, 3, 1, 4, 2, 5).reshape(nb[0] * q, nb[1] * q, nb[2] * q)
        c0 = lo - start - b0 * q
        return out[c0[0]:c0[0] + hi[0] - lo[0], c0[1]:c0[1] + hi[1] - lo[1], c0[2]:c0[2] + hi[2] - lo[2]].contiguous()

    def paint(self, packed: torch.Tensor, boxes: Boxes | list[tuple[int, int, int]],
              dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Label maps int64 [B, X, Y, Z] and per-organ counts int64 [organs, B, 4]: (clash voxels of a
        dropped organ, kept voxels, forbidden voxels added, carved voxels).

        Boxes are read and written through flat voxel indices; a voxel an organ does not keep is sent to
        one extra "dump" entry past the end, so every write is unconditional (no mask compaction).
        With the host geometry of one sample (``boxes.windows``), :meth:`_paint_windows` does the same
        on each organ's exact window through slices."""
        if isinstance(boxes, Boxes) and boxes.windows is not None and boxes.shapes is not None and dev.type == "cpu":
            return self._paint_windows(packed, boxes, boxes.windows, boxes.shapes, dev)
        B = packed.shape[0]
        X, Y, Z = self.patch
        N = B * X * Y * Z
        label = torch.zeros(N + 1, dtype=torch.int64, device=dev)
        occ = torch.zeros((self.words, N + 1), dtype=torch.int64, device=dev)
        dump = torch.full((), N, dtype=torch.int64, device=dev)
        batch_base = torch.arange(B, device=dev).mul_(X * Y * Z).view(B, 1, 1, 1)
        strides = (Y * Z, Z, 1)
        counts = []
        for k, organ in enumerate(self.order):
            rows = packed[:, k]
            box = boxes[k]
            mask = self.warp(rows, organ, box, dev)
            start = rows[:, self.fields.slices["start"]].long()
            terms = [(start[:, a, None] + torch.arange(box[a], device=dev)).mul_(strides[a]) for a in range(3)]
            flat = (batch_base + terms[0].view(B, -1, 1, 1)) + terms[1].view(B, 1, -1, 1)
            flat = flat + terms[2].view(B, 1, 1, -1)
            clash = torch.zeros_like(mask)
            for w in range(self.words):
                if self.forbidden[organ][w]:
                    clash |= (occ[w].take(flat) & self.forbidden[organ][w]) != 0
            clash &= mask
            n_clash = clash.sum((1, 2, 3))
            # a small clash is carved away (the organ yields to the painted one); a larger one drops it
            yields = n_clash <= self.max_carve * mask.sum((1, 2, 3))
            keep = mask & ~clash & yields.view(B, 1, 1, 1)
            target = torch.where(keep, flat, dump).view(-1)
            label.index_fill_(0, target, organ + 1)
            w = organ // 64
            # the organ's own bit is not set yet anywhere, so adding it is OR-ing it (the dump takes the rest)
            occ[w].index_add_(0, target, torch.full_like(target, self.bits[organ][w]))
            # forbidden voxels this organ adds to the painted patch: zero by construction, counted anyway
            counts.append(torch.stack([n_clash * ~yields, keep.sum((1, 2, 3)), (clash & keep).sum((1, 2, 3)),
                                       n_clash * yields], 1))
        label = label[:N].view((B,) + self.patch)
        return label, torch.stack(counts) if counts else torch.zeros((0, B, 4), dtype=torch.int64, device=dev)

    def _paint_windows(self, packed: torch.Tensor, boxes: Boxes, windows: np.ndarray, shapes: np.ndarray,
                       dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`paint` for one sample whose windows the host knows: every step on the organ's window
        of the patch (views, no flat indices), the same labels and counts."""
        label = torch.zeros(self.patch, dtype=torch.int64, device=dev)
        occ = torch.zeros((self.words, *self.patch), dtype=torch.int64, device=dev)
        none = torch.zeros(4, dtype=torch.int64, device=dev)
        counts = []
        for k, organ in enumerate(self.order):
            window = windows[k]
            lo, hi = window[1], window[2]
            if np.any(hi <= lo):
                counts.append(none)
                continue
            mask = self._warp_window(packed[:, k], organ, boxes[k], window, int(shapes[k]), dev)
            region = tuple(slice(a, b) for a, b in zip(lo.tolist(), hi.tolist()))
            clash = torch.zeros_like(mask)
            for w in range(self.words):
                if self.forbidden[organ][w]:
                    clash |= (occ[w][region] & self.forbidden[organ][w]) != 0
            clash &= mask
            n_clash = clash.sum()
            # a small clash is carved away (the organ yields to the painted one); a larger one drops it
            yields = n_clash <= self.max_carve * mask.sum()
            keep = mask & ~clash & yields
            label[region].masked_fill_(keep, organ + 1)
            w = organ // 64
            occ[w][region].bitwise_or_(keep * self.bits[organ][w])
            counts.append(torch.stack([n_clash * ~yields, keep.sum(), (clash & keep).sum(), n_clash * yields]))
        return label[None], torch.stack(counts)[:, None]

    def paint_batch(self, params, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`pack`, one upload, :meth:`paint`."""
        rows, boxes = self.pack(params)
        return self.paint(upload({"rows": rows}, dev)["rows"], boxes, dev)

    def organ_mask(self, p, pl, dev: torch.device) -> tuple[tuple[slice, ...], torch.Tensor] | None:
        """One placed organ of one sample on its own: (patch window, bool mask) or None outside the patch."""
        from anatosynth.synth.params import SampleParams

        one = SampleParams(p.index, p.origin_mm, [pl])
        rows, boxes = self.pack([one])
        k = self.order.index(pl.organ)
        s = self.fields.slices
        lo, hi = rows[0, k, s["lo"]].astype(int), rows[0, k, s["hi"]].astype(int)
        if np.any(hi <= lo):
            return None
        mask = self.warp(upload({"rows": rows}, dev)["rows"][:, k], pl.organ, boxes[k], dev)[0]
        start = rows[0, k, s["start"]].astype(int)
        crop = tuple(slice(int(a - st), int(b - st)) for a, b, st in zip(lo, hi, start))
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), mask[crop]
