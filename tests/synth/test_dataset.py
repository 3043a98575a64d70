"""The torch datasets: every form gives the stream's bytes; shards are disjoint and cover the range."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from anatosynth.bank import load_bank
from anatosynth.errors import ConfigError
from anatosynth.synth import SynthConfig, SyntheticStream
from anatosynth.synth.dataset import (
    BodyTasks,
    SyntheticDataset,
    SyntheticIterableDataset,
    SyntheticParamsDataset,
    dist_rank_world,
    params_loader,
    shard_bodies,
)

SEED = 7
CONFIG = SynthConfig(patch=(32, 32, 32), patches_per_body=2)


@pytest.fixture(scope="module")
def bank():
    return load_bank("builtin:phantom", spacing=(4.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def reference(bank):
    """Samples 0..7 straight from the stream, as one batch."""
    return SyntheticStream(bank, CONFIG, SEED).batch(range(8))


def _same(image, label, reference, i):
    return (image.numpy().tobytes() == reference.image[i].numpy().tobytes()
            and label.numpy().tobytes() == reference.label[i].numpy().tobytes())


def test_map_item_is_a_monai_dict_with_the_stream_bytes(bank, reference):
    ds = SyntheticDataset(bank, CONFIG, seed=SEED, length=8, log=True)
    item = ds[5]
    assert item["image"].shape == item["label"].shape == (1, 32, 32, 32)
    assert item["image"].dtype == torch.float32 and item["label"].dtype == torch.int64
    assert item["index"] == 5 and item["log"]["index"] == 5 and item["log"]["organs_placed"] > 0
    assert _same(item["image"][0], item["label"][0], reference, 5)
    batch = ds.__getitems__([3, 1])  # a DataLoader batch: one apply, the same bytes
    assert [b["index"] for b in batch] == [3, 1]
    assert _same(batch[0]["image"][0], batch[0]["label"][0], reference, 3)
    assert "log" not in SyntheticDataset(bank, CONFIG, seed=SEED, length=8)[0]
    with pytest.raises(IndexError):
        ds[8]


def test_patch_argument_overrides_the_config_and_bad_arguments_are_config_errors(bank):
    ds = SyntheticDataset(bank, {"render": "fill"}, seed=0, patch="64,32,32", length=2)
    assert ds.config.patch == (64, 32, 32) and ds.config.render == "fill" and ds[0]["image"].shape == (1, 64, 32, 32)
    with pytest.raises(ConfigError, match="multiple of 32"):
        SyntheticDataset(bank, CONFIG, patch=40)
    with pytest.raises(ConfigError, match="seed"):
        SyntheticDataset(bank, CONFIG, seed=-1)
    with pytest.raises(ConfigError, match="bank must be"):
        SyntheticDataset(3.5, CONFIG)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="length"):
        SyntheticDataset(bank, CONFIG, length=0)


def test_a_bank_path_is_loaded_and_primitives_need_none(bank, reference, tmp_path):
    from anatosynth.bank import save_bank

    ds = SyntheticDataset(None, SynthConfig(mode="primitives", patch=(32, 32, 32)), seed=1, length=2)
    assert ds[1]["label"].max() > 0 and ds.class_names[0] == "background"
    from_file = SyntheticDataset(save_bank(bank, tmp_path / "phantom.bank"), CONFIG, seed=SEED, length=8)
    item = from_file[4]
    assert from_file.class_names == list(bank.class_names)
    assert _same(item["image"][0], item["label"][0], reference, 4)


def test_two_spawned_workers_give_the_stream_bytes_and_monai_transforms_apply(bank, reference):
    from monai.transforms import Compose, RandFlipd, ScaleIntensityd

    ds = SyntheticDataset(bank, CONFIG, seed=SEED, length=8)
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    seen = []
    for batch in loader:
        assert batch["image"].shape == (2, 1, 32, 32, 32) and batch["label"].shape == (2, 1, 32, 32, 32)
        for k, i in enumerate(batch["index"].tolist()):
            assert _same(batch["image"][k, 0], batch["label"][k, 0], reference, i)
            seen.append(i)
    assert seen == list(range(8))
    flip = Compose([RandFlipd(keys=["image", "label"], prob=1.0, spatial_axis=0),
                    ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0)])
    flip.set_random_state(0)
    item = ds[2]
    out = flip(item)
    assert torch.equal(out["label"].as_tensor(), item["label"].flip(1))
    img = item["image"].flip(1)
    expected = (img - img.min()) / (img.max() - img.min()) * 2 - 1
    assert torch.allclose(out["image"].as_tensor(), expected, atol=1e-6)


@pytest.mark.parametrize("start,stop,ppb,shards", [(0, 40, 4, 3), (5, 23, 4, 2), (3, 4, 1, 5), (0, 16, 16, 4)])
def test_shards_are_disjoint_whole_bodies_and_cover_the_range(start, stop, ppb, shards):
    parts = [list(shard_bodies(start, stop, ppb, s, shards)) for s in range(shards)]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(start, stop)) and len(set(flat)) == len(flat)
    for s, part in enumerate(parts):
        assert all((i // ppb) % shards == s for i in part)


def test_endless_shards_interleave_bodies():
    it = shard_bodies(0, None, 2, 1, 3)
    assert [next(it) for _ in range(6)] == [2, 3, 8, 9, 14, 15]


def test_iterable_shards_over_ranks_and_workers_without_overlap(bank, reference):
    seen = []
    for rank in range(2):
        ds = SyntheticIterableDataset(bank, CONFIG, seed=SEED, start=0, stop=8, rank=rank, world_size=2)
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
        for item in loader:
            assert _same(item["image"][0], item["label"][0], reference, item["index"])
            seen.append((rank, item["index"]))
    indices = [i for _, i in seen]
    assert sorted(indices) == list(range(8)) and len(set(indices)) == 8
    # 2 ranks x 2 workers = 4 shards of whole bodies (2 patches each): rank 0 has bodies 0, 1; rank 1 has 2, 3
    assert {i for r, i in seen if r == 0} == {0, 1, 2, 3}
    assert dist_rank_world(1, 3) == (1, 3) and dist_rank_world() == (0, 1)
    with pytest.raises(ConfigError, match="rank 2 of world size 2"):
        dist_rank_world(2, 2)


def test_params_are_drawn_in_workers_and_rendered_as_one_batch(bank, reference):
    ds = SyntheticParamsDataset(bank, CONFIG, seed=SEED, length=8)
    render = ds.renderer("cpu", log=True)
    in_process = next(iter(DataLoader(ds, batch_size=4, collate_fn=render)))
    assert in_process["image"].shape == (4, 1, 32, 32, 32) and in_process["index"].tolist() == [0, 1, 2, 3]
    assert [log["index"] for log in in_process["log"]] == [0, 1, 2, 3]
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=list, multiprocessing_context="fork")
    batches = [render(params) for params in loader]  # drawn in the worker, rendered here
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for b in (in_process, *batches):
        for k, i in enumerate(b["index"].tolist()):
            assert _same(b["image"][k, 0], b["label"][k, 0], reference, i)
    with pytest.raises(TypeError, match="no length"):
        len(SyntheticParamsDataset(bank, CONFIG))
    assert np.array_equal(ds[3].origin_mm, SyntheticStream(bank, CONFIG, SEED).draw(3).origin_mm)


class _DyingParams(SyntheticParamsDataset):
    """A draw worker that dies (as one killed for memory would) on the batch holding sample 2."""

    def __getitems__(self, indices):
        if 2 in indices:
            os._exit(3)
        return super().__getitems__(indices)


def test_a_dead_draw_worker_is_an_error_not_a_hang(bank):
    loader = params_loader(_DyingParams(bank, CONFIG, seed=SEED), [[0, 1], [2, 3], [4, 5]], workers=1, timeout=120)
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        list(loader)


@pytest.mark.parametrize("batches,ppb", [([[0, 1], [2, 3], [4, 5], [6, 7]], 4), ([[0, 1, 2], [3, 4, 5], [6]], 2),
                                         ([[5, 9, 2], [3, 4]], 4)])
def test_body_tasks_are_runs_of_one_body_in_the_batches_order(batches, ppb):
    tasks = list(BodyTasks(batches, ppb))
    assert [i for t in tasks for i in t] == [i for b in batches for i in b]
    assert all(len({i // ppb for i in t}) == 1 for t in tasks)
    assert all(a[-1] // ppb != b[0] // ppb for a, b in zip(tasks, tasks[1:]))  # maximal runs


class _WhoDraws(SyntheticParamsDataset):
    """Says which worker process drew each sample instead of drawing it."""

    def __getitems__(self, indices):
        return [(os.getpid(), i) for i in indices]


def test_two_draw_workers_never_lay_out_one_body_twice(bank):
    # patches_per_body 4 over batches of 2: batch-sized tasks would put each body in both workers
    data = _WhoDraws(bank, SynthConfig(patch=(32, 32, 32), patches_per_body=4), seed=SEED)
    batches = [[2 * t, 2 * t + 1] for t in range(8)]
    loader = params_loader(data, batches, workers=2, timeout=120)
    drawn = list(loader)
    assert len(loader) == 8 and [[i for _, i in b] for b in drawn] == batches
    pids = {body: {pid for b in drawn for pid, i in b if i // 4 == body} for body in range(4)}
    assert all(len(p) == 1 for p in pids.values())
    assert len(set().union(*pids.values())) == 2  # both workers had work
