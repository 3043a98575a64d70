"""Pre-training on the real synthetic stream: a few CPU steps per model, exact resume, run-folder contents."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from anatosynth.cli import main
from anatosynth.errors import ConfigError
from anatosynth.train.checkpoint import load_pretrained, read_checkpoint
from anatosynth.train.config import PretrainConfig
from anatosynth.train.models import ModelSpec, build_model
from anatosynth.train.pretrain import pretrain, resume_config

TINY = dict(bank="builtin:phantom", mode="anatomy", render="shell", model="unet", feature_size=4,
            patch=[32, 32, 32], batch=1, steps=4, warmup=1, lr=1e-3, checkpoint_every=2, log_every=1,
            image_every=2, device="cpu", threads=2, trace_indices=True, seed=5)


def _cfg(out, **kw):
    return PretrainConfig.from_dict({**TINY, "out": str(out), **kw})


def _weights(run):
    return torch.load(run / "model.pt", weights_only=True)


def _trace(run, rank=0):
    """step -> indices, the last occurrence of each step winning (steps redone after a crash)."""
    steps = {}
    for line in (run / f"indices-rank{rank}.txt").read_text().splitlines():
        step, *idx = map(int, line.split())
        steps[step] = idx
    return steps


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 4-step run (shared by the tests below)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    result = pretrain(_cfg(run), echo=False)
    return run, result


def test_interrupted_then_resumed_run_equals_uninterrupted_run(straight, tmp_path):
    run_a, result_a = straight
    run_b = tmp_path / "run"
    pretrain(_cfg(run_b), echo=False, stop_at=2)
    assert read_checkpoint(run_b / "checkpoint.pt")["step"] == 2
    result_b = pretrain(resume_config(run_b), resume=True, echo=False)
    assert result_a.step == result_b.step == 4
    a, b = _weights(run_a), _weights(run_b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = read_checkpoint(run_a / "checkpoint.pt"), read_checkpoint(run_b / "checkpoint.pt")
    assert ca["next_index"] == cb["next_index"] == 4
    for k, v in ca["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], cb["optimizer"]["state"][k]["exp_avg_sq"])
    assert torch.equal(ca["history"][:, :3], cb["history"][:, :3])  # step, loss, lr (not the timing)
    # the same sample stream: nothing repeated, nothing skipped
    assert _trace(run_a) == _trace(run_b) == {s: [s - 1] for s in range(1, 5)}
    log = (run_b / "train.log").read_text()
    assert "resumed at step 2 (sample 2)" in log and "step 4/4" in log
    sessions = json.loads((run_b / "metadata.json").read_text())["sessions"]  # the code of each session
    assert [s["from_step"] for s in sessions] == [0, 2] and len({s["commit"] for s in sessions}) == 1


def test_run_folder_holds_config_metadata_curves_and_weights(straight):
    run, result = straight
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert PretrainConfig.from_dict(saved) == _cfg(run)
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["mode"] == "anatomy" and meta["render"] == "shell" and meta["steps_done"] == 4
    assert len(meta["bank_sha256"]) == 64 and meta["class_names"][0] == "background"
    assert meta["class_names"] == result.class_names and len(result.class_names) == meta["model"]["out_channels"]
    assert {"torch", "monai", "numpy", "anatosynth"} <= set(meta["versions"])
    assert meta["synth"]["patch"] == [32, 32, 32]
    assert (run / "progress.png").read_bytes()[:4] == b"\x89PNG"
    model, meta2 = load_pretrained(run)
    assert meta2 == meta and isinstance(model, torch.nn.Module)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert {"train/lr", "train/steps_per_s"} <= set(events.Tags()["scalars"])
    assert {"sample/image", "sample/label", "sample/prediction"} <= set(events.Tags()["images"])
    assert all(torch.isfinite(torch.tensor(e.value)) for e in events.Scalars("train/loss"))


def test_existing_run_and_incompatible_checkpoint_are_refused(straight, tmp_path):
    run, _ = straight
    with pytest.raises(ConfigError, match="already holds a run; continue it with --resume"):
        pretrain(_cfg(run), echo=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.yaml", "checkpoint.pt"):
        (copy / name).write_bytes((run / name).read_bytes())
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["feature_size"] = 8  # someone edited the run's config: the checkpoint no longer fits
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"checkpoint is for unet f4 .* builds unet f8"):
        pretrain(resume_config(copy), resume=True, echo=False)


@pytest.mark.parametrize("spec", [
    ModelSpec("dynunet", 1, 0, 4, (32, 32, 32)),
    pytest.param(ModelSpec("unetr", 1, 0, 12, (32, 32, 32)), marks=pytest.mark.slow),
    pytest.param(ModelSpec("swinunetr", 1, 0, 12, (64, 64, 32)), marks=pytest.mark.slow),
], ids=lambda s: s.name)
def test_each_model_trains_on_the_fixed_primitive_pool(spec, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(run, mode="primitives", bank=None, model=spec.name, feature_size=spec.feature_size,
               patch=list(spec.patch), steps=2, samples=2, checkpoint_every=10)
    result = pretrain(cfg, echo=False)
    assert result.step == 2 and result.last_loss == result.last_loss  # finite, not NaN
    assert sorted(_trace(run)[1] + _trace(run)[2]) == [0, 1]  # a pass over the pool
    assert set(sum(_trace(run).values(), [])) <= {0, 1}
    state = _weights(run)
    n = len(result.class_names)
    built = build_model(ModelSpec(spec.name, 1, n, spec.feature_size, spec.patch))
    built.load_state_dict(state, strict=True)
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 2  # final checkpoint off the interval
    if spec.name == "swinunetr":
        from monai.networks.nets import SwinUNETR

        SwinUNETR(in_channels=1, out_channels=n, feature_size=12).load_state_dict(state, strict=True)


def test_cli_trains_from_yaml_with_flag_overrides(tmp_path, capsys):
    conf = tmp_path / "run.yaml"
    conf.write_text(yaml.safe_dump({**TINY, "mode": "primitives", "bank": None, "steps": 50, "trace_indices": False}))
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(conf), "--steps", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "pre-trained to step 2" in out and str(run / "model.pt") in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["steps"] == 2 and saved["mode"] == "primitives" and saved["feature_size"] == 4
    assert main(["pretrain", "--resume", str(run), "--feature-size", "8"]) == 2
    assert "cannot change feature_size" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(run), "--steps", "3"]) == 0
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 3


@pytest.mark.slow
def test_draw_workers_give_the_same_run(straight, tmp_path):
    run_a, _ = straight
    run = tmp_path / "run"
    pretrain(_cfg(run, workers=1), echo=False)
    assert "1 draw worker(s)" in (run / "train.log").read_text()
    a, b = _weights(run_a), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _trace(run) == _trace(run_a)


def test_rendering_ahead_in_a_thread_gives_the_same_run(straight, tmp_path, monkeypatch):
    # what CUDA does (a render thread one batch ahead), forced on the CPU: the same steps, the same weights
    import anatosynth.train.pretrain as loop
    from anatosynth.synth.ahead import RenderAhead

    made = []

    def threaded(*args, **kw):
        made.append(RenderAhead(*args, threaded=True, **kw))
        return made[-1]

    monkeypatch.setattr(loop, "RenderAhead", threaded)
    run_a, _ = straight
    run = tmp_path / "run"
    pretrain(_cfg(run), echo=False)
    assert made and made[0].threaded and not made[0]._thread.is_alive()  # closed at the end of the run
    a, b = _weights(run_a), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _trace(run) == _trace(run_a)


def test_time_limit_stops_cleanly_and_the_run_can_continue(tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(run, mode="primitives", bank=None, steps=50, minutes=1e-6, checkpoint_every=10, log_every=10)
    result = pretrain(cfg, echo=False)
    assert result.step == 1  # the limit is checked after each step
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 1 and (run / "model.pt").is_file()
    assert json.loads((run / "metadata.json").read_text())["steps_done"] == 1
    assert "time limit" in (run / "train.log").read_text()
    more = pretrain(resume_config(run, {"steps": 2, "minutes": 10.0}), resume=True, echo=False)
    assert more.step == 2 and _trace(run) == {1: [0], 2: [1]}


def test_bank_file_is_hashed_into_metadata(tmp_path):
    import hashlib

    from anatosynth.bank import load_bank, save_bank

    bank_file = save_bank(load_bank("builtin:phantom"), tmp_path / "phantom.bank")
    run = tmp_path / "run"
    pretrain(_cfg(run, bank=str(bank_file), steps=1), echo=False)
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["bank"] == str(bank_file)
    assert meta["bank_sha256"] == hashlib.sha256(bank_file.read_bytes()).hexdigest()


def test_same_seed_and_threads_1_give_byte_identical_model_files(tmp_path):
    """The README's promise: same options, same seed, --threads 1 -> the same model.pt bytes (issue 14).

    torch.save used to store the temporary file's random name as the archive root, so equal weights
    still gave different files.
    """
    runs = [tmp_path / name for name in ("a", "b")]
    for run in runs:
        pretrain(_cfg(run, mode="primitives", bank=None, steps=2, threads=1, trace_indices=False), echo=False)
    a, b = ((run / "model.pt").read_bytes() for run in runs)
    assert a == b
    assert b"archive/" in a and b".model-" not in a  # fixed archive root, no temporary name inside


def test_resume_without_a_checkpoint_fails_and_a_fresh_start_is_allowed(tmp_path, capsys):
    """A run stopped before its first checkpoint: --resume says so (exit 2); the same command starts it again."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = {**TINY, "mode": "primitives", "bank": None, "steps": 1, "trace_indices": False, "out": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "train.log").write_text("start at step 0\n")
    assert main(["pretrain", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt" in err[0] and "nothing to resume" in err[0]
    assert not (run / "checkpoint.pt").exists()
    assert main(["pretrain", "--config", str(run / "config.yaml"), "--out", str(run)]) == 0
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 1


def test_a_mixed_stream_pre_trains_one_head_over_organs_and_primitives(tmp_path):
    result = pretrain(_cfg(tmp_path / "run", mode="mixed", steps=2, image_every=0), echo=False)
    meta = json.loads((result.out / "metadata.json").read_text())
    assert meta["model"]["out_channels"] == len(meta["class_names"]) > 33
    assert meta["class_names"][-1] == "nonagon_rhombus" and meta["mode"] == "mixed"
