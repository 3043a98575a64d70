"""The synthetic stream: contract, determinism, modes, class coverage, bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from anatosynth.errors import ConfigError
from anatosynth.options import SYNTH_MODES
from anatosynth.synth import SynthBatch, SynthConfig, SyntheticStream
from anatosynth.synth.config import check_patch
from anatosynth.synth.primitives import PRIMITIVE_CLASS_NAMES

PATCH = (64, 64, 32)


def _stream(bank, seed=0, **kw) -> SyntheticStream:
    kw.setdefault("patch", PATCH)
    return SyntheticStream(bank, SynthConfig(**kw), seed=seed)


@pytest.mark.parametrize("mode", SYNTH_MODES)
def test_batch_contract(toy_bank, mode):
    stream = _stream(toy_bank, mode=mode)
    out = stream.batch([0, 1])
    assert isinstance(out, SynthBatch)
    assert out.image.shape == (2, 1) + PATCH and out.image.dtype == torch.float32
    assert out.label.shape == (2,) + PATCH and out.label.dtype == torch.int64
    assert 0.0 <= float(out.image.min()) and float(out.image.max()) <= 1.0
    assert int(out.label.max()) < stream.num_classes
    assert stream.class_names[0] == "background"
    assert len(out.logs) == 2
    json.dumps(out.logs)  # JSON-serialisable
    for log in out.logs:
        assert {"placed", "dropped", "forbidden_overlap_voxels", "anchor_distance_mm"} <= set(log)
    if mode == "primitives":
        assert stream.class_names == list(PRIMITIVE_CLASS_NAMES) and stream.num_classes == 33
    elif mode == "mixed":
        assert stream.class_names == toy_bank.class_names + list(PRIMITIVE_CLASS_NAMES)[1:]
    else:
        assert stream.class_names == toy_bank.class_names
        assert int((out.label > 0).sum()) > 0


def test_same_seed_same_bytes_across_batches_and_processes(toy_bank):
    a = _stream(toy_bank, seed=3, render="texture")
    b = _stream(toy_bank, seed=3, render="texture")
    one = a.batch([5, 6, 7])
    # other stream object, other batch composition and order, params through pickle (as from a worker)
    params = [pickle.loads(pickle.dumps(b.draw(i))) for i in (7, 2, 5)]
    other = b.apply(params)
    assert torch.equal(one.label[2], other.label[0]) and torch.equal(one.label[0], other.label[2])
    assert one.image[2].numpy().tobytes() == other.image[0].numpy().tobytes()
    assert one.image[0].numpy().tobytes() == other.image[2].numpy().tobytes()
    single = a.batch([6])
    assert single.image[0].numpy().tobytes() == one.image[1].numpy().tobytes()
    assert one.logs[0] == other.logs[2]


def test_same_bytes_across_thread_counts(toy_bank):
    stream = _stream(toy_bank, render="texture")
    params = [stream.draw(i) for i in range(2)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = stream.apply(params)
        torch.set_num_threads(2)
        two = stream.apply(params)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.label, two.label)
    assert one.image.numpy().tobytes() == two.image.numpy().tobytes()


def test_different_seeds_and_indices_differ(toy_bank):
    a = _stream(toy_bank, seed=0).batch([0, 1])
    b = _stream(toy_bank, seed=1).batch([0])
    assert not torch.equal(a.label[0], b.label[0])
    assert not torch.equal(a.label[0], a.label[1])
    assert not torch.equal(a.image[0], b.image[0])


def test_bodies_are_shared_but_windows_differ(toy_bank):
    stream = _stream(toy_bank, patches_per_body=2)
    p0, p1, p2 = (stream.draw(i) for i in range(3))
    assert [pl.centre_mm.tolist() for pl in p0.placed] == [pl.centre_mm.tolist() for pl in p1.placed]
    assert [pl.centre_mm.tolist() for pl in p0.placed] != [pl.centre_mm.tolist() for pl in p2.placed]
    assert not np.allclose(p0.origin_mm, p1.origin_mm)


def test_class_coverage(toy_bank):
    stream = _stream(toy_bank)
    seen = set()
    for start in range(0, 24, 8):
        labels, _ = stream.labels([stream.draw(i) for i in range(start, start + 8)])
        seen |= set(torch.unique(labels).tolist())
    assert seen == set(range(toy_bank.num_classes))


def test_patches_show_partial_organs_in_context(toy_bank):
    stream = _stream(toy_bank, patch=(32, 32, 32))
    labels, logs = stream.labels([stream.draw(i) for i in range(8)])
    # several organs in view, and organs cut by the patch border
    assert np.mean([log["organs_in_patch"] for log in logs]) >= 1.5
    border = torch.cat([labels[:, 0].flatten(), labels[:, -1].flatten(), labels[:, :, 0].flatten()])
    assert int((border > 0).sum()) > 0


def test_logs_record_anchor_distance(toy_bank):
    stream = _stream(toy_bank)
    _, logs = stream.labels([stream.draw(0)])
    log = logs[0]
    assert log["organs_placed"] == len(log["placed"]) > 0
    for d in log["placed"]:
        assert d["anchor_distance_mm"] >= 0 and d["organ"] in log["anchor_distance_mm"]
        assert len(d["centre_mm"]) == 3 and d["attempts"] >= 1


def test_non_cubic_patch_and_axes(toy_bank):
    stream = _stream(toy_bank, patch=(32, 64, 96))
    out = stream.batch([0])
    assert out.label.shape == (1, 32, 64, 96)


@pytest.mark.parametrize("bad, match", [
    (dict(patch=(96, 96, 40)), "multiple of 32"),
    (dict(patch=(0, 32, 32)), "at least 32"),
    (dict(patch=(96.5, 96, 96)), "whole numbers"),
    (dict(mode="scribble"), "unknown mode"),
    (dict(render="glow"), "unknown render"),
    (dict(scale=(1.2, 0.8)), "scale"),
    (dict(retries=-1), "retries"),
    (dict(clutter=0.95), "clutter"),
])
def test_bad_config(bad, match):
    with pytest.raises(ConfigError, match=match):
        SynthConfig(**bad)


def test_config_round_trip_and_unknown_keys():
    cfg = SynthConfig(mode="random", patch=(96, 96, 32), anchors=False)
    again = SynthConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ConfigError, match=r"synth config: unknown option\(s\) colour"):
        SynthConfig.from_dict({"colour": 1})
    assert check_patch(64) == (64, 64, 64)


def test_bank_needed_and_cuda_checked(toy_bank):
    with pytest.raises(ConfigError, match="needs a shape bank"):
        SyntheticStream(None, SynthConfig(mode="anatomy"))
    assert SyntheticStream(None, SynthConfig(mode="primitives", patch=PATCH)).num_classes == 33
    if not torch.cuda.is_available():
        stream = _stream(toy_bank)
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            stream.batch([0], device="cuda")
    with pytest.raises(ConfigError, match="seed"):
        SyntheticStream(toy_bank, SynthConfig(patch=PATCH), seed=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_labels_match_cpu_closely(toy_bank):
    stream = _stream(toy_bank)
    params = [stream.draw(i) for i in range(2)]
    cpu = stream.apply(params, "cpu").label
    gpu = stream.apply(params, "cuda").label.cpu()
    assert float((cpu != gpu).float().mean()) < 1e-3


@pytest.mark.parametrize("render", ["shell", "shell+fill"])
def test_clutter_changes_images_not_labels_and_keeps_every_byte_contract(toy_bank, render):
    plain, cluttered = _stream(toy_bank, seed=2, render=render), _stream(toy_bank, seed=2, render=render, clutter=0.3)
    a, b = plain.batch([0, 1, 2]), cluttered.batch([0, 1, 2])
    assert torch.equal(a.label, b.label) and a.logs == b.logs  # the same bodies, windows and labels
    assert not torch.equal(a.image, b.image)
    assert float(b.image.min()) >= 0.0 and float(b.image.max()) <= 1.0
    params = [cluttered.draw(i) for i in (2, 0)]
    for batched in (False, True):  # any batch, either program: the same bytes
        other = cluttered.apply(params, batched=batched)
        assert other.image[0].numpy().tobytes() == b.image[2].numpy().tobytes()
        assert other.image[1].numpy().tobytes() == b.image[0].numpy().tobytes()


def test_mixed_stream_is_the_anatomy_and_primitives_streams_in_one_label_space():
    """mode 'mixed': each sample's coin picks a part; the sample is that part's own sample of the same index,
    primitive labels after the bank's organs, and its bytes do not depend on the batch."""
    import torch

    from anatosynth.bank import load_bank

    bank = load_bank("builtin:phantom")
    kw = dict(patch=(64, 64, 32), render="shell+fill")
    mixed = SyntheticStream(bank, SynthConfig(mode="mixed", **kw), 3)
    anatomy = SyntheticStream(bank, SynthConfig(mode="anatomy", **kw), 3)
    shapes = SyntheticStream(None, SynthConfig(mode="primitives", **{**kw, "render": "contour"}), 3)
    assert mixed.class_names == anatomy.class_names + shapes.class_names[1:]
    batch = mixed.batch(range(10))
    parts = [mixed.draw(i).part for i in range(10)]
    assert 0 < sum(parts) < 10  # both parts at mix_fraction 0.5
    for i, part in enumerate(parts):
        ref = (shapes if part else anatomy).batch([i])
        label = torch.where(ref.label[0] > 0, ref.label[0] + anatomy.num_classes - 1, 0) if part else ref.label[0]
        assert torch.equal(batch.image[i], ref.image[0]) and torch.equal(batch.label[i], label)
    assert torch.equal(mixed.batch([7]).label[0], batch.label[7])
    assert [log["part"] for log in batch.logs] == [("anatomy", "primitives")[p] for p in parts]
    only = SyntheticStream(bank, SynthConfig(mode="mixed", mix_fraction=0.0, **kw), 3)
    assert all(only.draw(i).part == 0 for i in range(10))
    with pytest.raises(ConfigError, match="needs a shape bank"):
        SyntheticStream(None, SynthConfig(mode="mixed", **kw), 3)
