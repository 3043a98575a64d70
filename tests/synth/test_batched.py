"""The synthetic stream's apply is a batched tensor program: no host reads, kernels independent of the batch.

Recorded with a ``TorchDispatchMode`` (every aten op ``apply`` issues): no ``aten._local_scalar_dense``
(what ``.item()`` / ``int()`` / ``bool()`` of a tensor call), no copy between devices (the one packed
upload from host memory is a CPU-to-device copy; on this CPU machine it must stay on the apply device),
and the same op sequence for a batch of 8 as for a batch of 2, on banks of 5 and 13 organs. Because a
CPU tensor's ``.cpu()``, ``.numpy()`` and ``.tolist()`` issue no aten op, the device-side functions are
also checked to contain none of those calls.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from anatosynth.bank import load_bank
from anatosynth.synth import SynthConfig, SyntheticStream, artefacts, raster, render

aten = torch.ops.aten


class OpRecorder(TorchDispatchMode):
    """Records the overload of every aten op, and the ops that read a value back or change device."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append(str(func))
        if func is aten._local_scalar_dense.default:
            self.syncs.append(str(func))
        if func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            dst = args[0] if func is aten.copy_.default else out
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.device != dst.device:
                self.syncs.append(f"{func} {src.device} -> {dst.device}")
        return out


def _restricted(bank, n: int):
    """The bank's first ``n`` organs (edges among them only)."""
    organs = bank.organs[:n]
    names = {o.name for o in organs}
    return dataclasses.replace(bank, organs=organs, edges=[e for e in bank.edges if e.a in names and e.b in names])


def _record(stream: SyntheticStream, batch: int) -> OpRecorder:
    params = [stream.draw(i) for i in range(batch)]
    stream.apply(params[:1], batched=True)  # per-device caches (bank masks, index tables) outside the recording
    with OpRecorder() as rec:
        stream.apply(params, batched=True)  # the program the GPU runs (the CPU default goes sample by sample)
    return rec


@pytest.fixture(scope="module")
def phantom():
    return load_bank("builtin:phantom", spacing=(4.0, 4.0, 4.0))


@pytest.mark.parametrize("organs", [5, 13])
def test_anatomy_apply_has_no_host_reads_and_batch_independent_kernels(phantom, organs):
    bank = _restricted(phantom, organs)
    assert len(bank.organs) == organs
    stream = SyntheticStream(bank, SynthConfig(patch=(64, 64, 64)), seed=1)
    two, eight = _record(stream, 2), _record(stream, 8)
    assert two.syncs == [] and eight.syncs == []
    assert len(two.ops) == len(eight.ops) and two.ops == eight.ops
    # the organ loop is the only loop: the op count grows with the organs, never with the samples
    assert 0 < len(eight.ops) <= 300 * organs + 600


def test_op_count_grows_with_organs_only(phantom):
    counts = [len(_record(SyntheticStream(_restricted(phantom, n), SynthConfig(patch=(64, 64, 64))), 2).ops)
              for n in (5, 13)]
    assert counts[0] < counts[1]


@pytest.mark.parametrize("render_mode,clutter", [("shell+fill", 0.0), ("texture", 0.0), ("shell", 0.3)])
def test_random_mode_and_other_renders(phantom, render_mode, clutter):
    stream = SyntheticStream(_restricted(phantom, 5), SynthConfig(mode="random", render=render_mode,
                                                                   patch=(64, 64, 64), clutter=clutter))
    two, eight = _record(stream, 2), _record(stream, 8)
    assert two.syncs == [] and two.ops == eight.ops


def test_primitives_apply_has_no_host_reads_and_batch_independent_kernels():
    stream = SyntheticStream(None, SynthConfig(mode="primitives", render="contour", patch=(64, 64, 64)))
    two, eight = _record(stream, 2), _record(stream, 8)
    assert two.syncs == [] and eight.syncs == []
    assert two.ops == eight.ops


def test_logs_are_read_back_only_when_asked(phantom):
    stream = SyntheticStream(_restricted(phantom, 5), SynthConfig(patch=(64, 64, 64)))
    out = stream.apply([stream.draw(i) for i in range(2)])
    with OpRecorder() as rec:
        logs = out.logs
    assert len(logs) == 2 and rec.ops  # the counts are read now, once
    with OpRecorder() as again:
        assert out.logs is logs
    assert again.ops == []


@pytest.mark.parametrize("fn", [raster.Rasteriser.paint, raster.Rasteriser.warp, raster._upsample_axis,
                                render.render_packed, render.boundary_distance, artefacts.apply_packed_artefacts_,
                                artefacts._blur, artefacts._rescale_gamma, artefacts.upsample_x,
                                artefacts.gaussian_into])
def test_device_functions_never_read_back(fn):
    src = inspect.getsource(fn)
    bad = re.compile(r"\.(cpu|numpy|tolist|item)\(\)|(?<![.\w])(int|float|bool)\((?!GAMMA|ELASTIC)")
    lines = [ln for ln in src.splitlines() if bad.search(ln)]
    assert not lines, f"{fn.__qualname__} reads a value back: {lines}"


@pytest.mark.parametrize("mode", ["anatomy", "primitives"])
def test_cpu_sample_by_sample_equals_the_batched_program(phantom, mode):
    bank = None if mode == "primitives" else _restricted(phantom, 5)
    stream = SyntheticStream(bank, SynthConfig(mode=mode, render="texture", patch=(64, 64, 64)), seed=2)
    params = [stream.draw(i) for i in range(3)]
    one, whole = stream.apply(params, batched=False), stream.apply(params, batched=True)
    assert torch.equal(one.label, whole.label)
    assert one.image.numpy().tobytes() == whole.image.numpy().tobytes()
    assert one.logs == whole.logs


def test_cpu_window_warp_equals_the_batched_warp_and_samples_only_surface_blocks(phantom, monkeypatch):
    """The CPU path's organ masks (block-classified by the summed-area table, only surface blocks sampled)
    are the batched program's masks inside each window, for every organ of several samples."""
    stream = SyntheticStream(phantom, SynthConfig(patch=(64, 64, 64)), seed=4)
    ras = stream.raster
    sampled = []
    grid_sample = raster.F.grid_sample

    def counting(inp, grid, **kw):
        if kw.get("padding_mode") == "zeros":
            sampled.append(grid.shape[:-1].numel())
        return grid_sample(inp, grid, **kw)

    window_voxels = organ_voxels = 0
    for i in range(4):
        rows, boxes = ras.pack([stream.draw(i)])
        packed = torch.from_numpy(rows)
        for k, organ in enumerate(ras.order):
            start, lo, hi = boxes.windows[k]
            if (hi <= lo).any():
                continue
            whole = ras.warp(packed[:, k], organ, boxes[k], torch.device("cpu"))[0]
            crop = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
            with monkeypatch.context() as m:
                m.setattr(raster.F, "grid_sample", counting)
                window = ras._warp_window(packed[:, k], organ, boxes[k], boxes.windows[k], int(boxes.shapes[k]),
                                          torch.device("cpu"))
            assert torch.equal(window, whole[crop]), (i, organ)
            window_voxels += int((hi - lo).prod())
            organ_voxels += int(window.sum())
    assert 0 < organ_voxels < window_voxels
    assert 0 < sum(sampled) < window_voxels / 2  # most blocks are decided by the table alone


def test_summed_area_counts_mask_voxels_and_refuses_soft_masks():
    mask = (torch.rand((2, 1, 5, 6, 7), generator=torch.Generator().manual_seed(0)) > 0.5).float()
    sat = raster._summed_area(mask)
    assert sat.shape == (2, 6, 7, 8) and sat.dtype == torch.int32
    assert int(sat[1, 3, 4, 5]) == int(mask[1, 0, :3, :4, :5].sum())
    assert int(sat[0, -1, -1, -1]) == int(mask[0].sum())
    with pytest.raises(ValueError, match="binary"):
        raster._summed_area(torch.full((1, 1, 2, 2, 2), 0.5))
