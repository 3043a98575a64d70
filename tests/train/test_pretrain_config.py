"""Pre-training configuration: defaults < YAML < flags, validation, resume rules, CLI errors."""

from __future__ import annotations

import pytest
import yaml

from anatosynth.cli import main
from anatosynth.errors import ConfigError, InputError
from anatosynth.train.config import PretrainConfig, resolve_config
from anatosynth.train.pretrain import batch_indices, pool_index, resume_config


def _yaml(tmp_path, d, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = _yaml(tmp_path, {"model": "unet", "feature_size": 8, "patch": 64, "lr": "1e-4", "steps": 50,
                            "synth": {"anchors": False}})
    cfg = resolve_config(path, {"steps": 7, "batch": None, "synth": {"graph": False}})
    assert (cfg.model, cfg.feature_size, cfg.patch, cfg.steps) == ("unet", 8, (64, 64, 64), 7)
    assert cfg.lr == pytest.approx(1e-4) and cfg.batch == PretrainConfig().batch
    synth = cfg.synth
    assert (synth.anchors, synth.graph, synth.patch, synth.mode) == (False, False, (64, 64, 64), "anatomy")
    again = PretrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize("d,msg", [
    ({"modle": "unet"}, "unknown option.*modle"),
    ({"mode": "fractal"}, "mode must be one of"),
    ({"batch": 0}, "batch must be a positive integer"),
    ({"patch": [96, 96]}, "patch must be one or three"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"samples": -3}, "samples must be a positive integer"),
    ({"device": "tpu"}, r"unknown device .tpu. \(use auto, cpu, cuda or cuda:N\)"),
    ({"mode": "anatomy", "bank": None}, "mode .anatomy. needs a bank"),
])
def test_bad_options_name_the_file_and_the_problem(tmp_path, d, msg):
    path = _yaml(tmp_path, d)
    with pytest.raises(ConfigError, match=f"run.yaml: {msg}"):
        resolve_config(path, {})


def test_broken_or_missing_yaml_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unet\nsteps: 3\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML at line"):
        resolve_config(bad, {})
    with pytest.raises(InputError, match="config file not found"):
        resolve_config(tmp_path / "none.yaml", {})
    _yaml(tmp_path, [1, 2], "list.yaml")
    with pytest.raises(InputError, match="expected a mapping"):
        resolve_config(tmp_path / "list.yaml", {})


def test_resume_keeps_what_the_run_trains(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = PretrainConfig.from_dict({"model": "unet", "feature_size": 4, "patch": [32, 32, 32], "steps": 4,
                                    "out": str(run)})
    _yaml(run, cfg.to_dict(), "config.yaml")
    more = resume_config(run, {"steps": 10, "model": "unet", "patch": [32]})
    assert more.steps == 10 and more.model == "unet" and more.out == str(run)
    with pytest.raises(ConfigError, match="cannot change feature_size"):
        resume_config(run, {"feature_size": 8})
    with pytest.raises(InputError, match="nothing to resume"):
        resume_config(tmp_path / "empty", {})


def test_ranks_and_steps_get_disjoint_contiguous_indices():
    world, batch, steps = 3, 2, 4
    seen = []
    for step in range(steps):
        for rank in range(world):
            seen += batch_indices(step * world * batch, rank, batch)
    assert seen == list(range(steps * world * batch))


def test_fixed_pool_reshuffles_every_pass():
    n = 7
    passes = [[pool_index(e * n + i, n, seed=3) for i in range(n)] for e in range(3)]
    assert all(sorted(p) == list(range(n)) for p in passes)
    assert passes[0] != passes[1]
    assert passes[0] == [pool_index(i, n, seed=3) for i in range(n)]  # deterministic
    assert pool_index(12345, None, 0) == 12345


def test_cli_bad_options_exit_2_with_one_line(tmp_path, capsys):
    assert main(["pretrain", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.yaml: config file not found" in err[0]
    assert main(["pretrain", "--batch", "0", "--out", str(tmp_path / "r")]) == 2
    assert "batch must be a positive integer" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["pretrain", "--bank", str(tmp_path / "none.bank"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.bank" in err[0]
    assert not (tmp_path / "r2").exists()


def test_synthesis_options_nest_as_a_synth_config_and_old_files_still_read(tmp_path):
    from anatosynth.synth.config import SynthConfig

    # config.yaml as earlier versions wrote it: synth holds only the options that were given
    old = {"mode": "random", "render": "fill", "patch": [64, 64, 64], "synth": {"anchors": False, "mode": "anatomy"}}
    cfg = resolve_config(_yaml(tmp_path, old), {})
    assert isinstance(cfg.synth, SynthConfig)
    assert (cfg.synth.mode, cfg.synth.render, cfg.synth.patch) == ("random", "fill", (64, 64, 64))  # top level wins
    assert cfg.synth.anchors is False and cfg.synth.graph is True
    saved = cfg.to_dict()
    assert not {"mode", "render", "patch"} & set(saved["synth"]) and saved["synth"]["anchors"] is False
    assert PretrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(saved))) == cfg
    assert resolve_config(_yaml(tmp_path, {"synth": {}}), {}).synth == SynthConfig()
    direct = PretrainConfig(mode="primitives", patch=(32, 32, 32), synth=SynthConfig(primitive_objects=5))
    assert (direct.synth.mode, direct.synth.patch, direct.synth.primitive_objects) == ("primitives", (32, 32, 32), 5)
    with pytest.raises(ConfigError, match="run.yaml: synth: unknown option.*anchor"):
        resolve_config(_yaml(tmp_path, {"synth": {"anchor": False}}), {})
    with pytest.raises(ConfigError, match="run.yaml: synth: .*multiple of 32"):
        resolve_config(_yaml(tmp_path, {"patch": 40}), {})


def test_step_batches_resume_where_the_stream_stopped():
    from anatosynth.train.stream_index import StepBatches

    for samples in (None, 10):
        whole = [b for r in range(2) for b in StepBatches(0, r, 2, 3, steps=5, samples=samples, seed=4)]
        by_rank = {r: list(StepBatches(0, r, 2, 3, steps=5, samples=samples, seed=4)) for r in range(2)}
        later = {r: list(StepBatches(2 * 2 * 3, r, 2, 3, steps=3, samples=samples, seed=4)) for r in range(2)}
        assert all(later[r] == by_rank[r][2:] for r in range(2))
        if samples is None:
            assert sorted(i for b in whole for i in b) == list(range(30))
        else:  # three passes over the pool, each a permutation of it
            flat = [i for s in range(5) for r in range(2) for i in by_rank[r][s]]
            assert [sorted(flat[k:k + 10]) for k in (0, 10, 20)] == [list(range(10))] * 3
