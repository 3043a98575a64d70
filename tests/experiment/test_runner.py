"""End to end: a tiny protocol runs every stage as a user would, writes tables and plots, and reuses jobs."""

from __future__ import annotations

import csv

import pytest
import yaml

from anatosynth.cli import main


def _protocol(tmp_path, data_dir):
    raw = {
        "name": "tiny",
        "bank": {"source": "builtin:phantom"},
        "pretrain": {"model": "unet", "feature_size": 4, "patch": [32, 32, 32], "batch": 1, "steps": 2,
                     "device": "cpu", "image_every": 0, "log_every": 1},
        "finetune": {"model": "unet", "feature_size": 4, "patch": [32, 32, 32], "steps": 2, "spacing": [6, 6, 12],
                     "val_every": 2, "val_max_cases": 1},
        "evaluate": {"overlap": 0.0, "no_predictions": True},
        "datasets": [{"name": "chaos", "path": str(data_dir / "chaos-t2"), "train_cases": [1], "eval_cases": 1}],
        "arms": [{"name": "scratch", "pretrain": "none"},
                 {"name": "anatomy", "pretrain": {"mode": "anatomy", "render": "shell"}}],
        "seeds": [0, 1],
        "compare": [["anatomy", "scratch"]],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_tiny_protocol_end_to_end_and_reuse(tmp_path, data_dir, capsys):
    path = _protocol(tmp_path, data_dir)
    out = tmp_path / "exp"
    assert main(["experiment", str(path), "--out", str(out), "--quiet", "--jobs", "2", "--threads", "1"]) == 0
    reports = out / "tiny"  # reports per protocol name; jobs shared at the top of the folder
    rows = list(csv.DictReader(open(reports / "results.csv")))
    # rows in protocol order although two jobs ran at a time
    assert [(r["arm"], r["seed"]) for r in rows] == [("scratch", "0"), ("scratch", "1"),
                                                     ("anatomy", "0"), ("anatomy", "1")]
    assert all(0.0 <= float(r["dice"]) <= 100.0 for r in rows)
    table = (reports / "results.md").read_text()
    assert "| anatomy | 1 | endless |" in table and "Δ vs scratch" in table
    assert "| chaos | 1 | anatomy − scratch | 2 |" in table
    assert (reports / "dice_per_arm.png").stat().st_size > 1000
    assert yaml.safe_load((reports / "protocol.yaml").read_text())["name"] == "tiny"
    # one pre-training run is shared by both seeds
    assert len(list((out / "pretrain").glob("pre-anatomy-*/model.pt"))) == 1
    # the evaluation set is the same for every arm and seed
    import json
    evals = {json.dumps(json.load(open(p))["eval"]) for p in (out / "finetune").glob("*/split.json")}
    assert len(evals) == 1
    # a second run reuses every finished job: no command is run again
    log_before = (out / "experiment.log").read_text().count("$ anatosynth")
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 0
    assert (out / "experiment.log").read_text().count("$ anatosynth") == log_before
    assert list(csv.DictReader(open(reports / "results.csv"))) == rows
    # --report-only runs nothing and reports only what is finished
    next((out / "finetune").glob("ft-chaos-anatomy-k1-s1-*/done.json")).unlink()
    assert main(["experiment", str(path), "--out", str(out), "--quiet", "--report-only"]) == 0
    assert (out / "experiment.log").read_text().count("$ anatosynth") == log_before
    assert [(r["arm"], r["seed"]) for r in csv.DictReader(open(reports / "results.csv"))] == [
        ("scratch", "0"), ("scratch", "1"), ("anatomy", "0")]
    # a second protocol in the same folder reuses the shared jobs and keeps its own report
    raw = yaml.safe_load(path.read_text())
    raw.update(name="tiny-scratch", arms=[{"name": "scratch", "pretrain": "none"}], compare=[])
    (tmp_path / "tiny-scratch.yaml").write_text(yaml.safe_dump(raw))
    assert main(["experiment", str(tmp_path / "tiny-scratch.yaml"), "--out", str(out), "--quiet"]) == 0
    assert (out / "experiment.log").read_text().count("$ anatosynth") == log_before
    assert [(r["arm"], r["seed"]) for r in csv.DictReader(open(out / "tiny-scratch" / "results.csv"))] == [
        ("scratch", "0"), ("scratch", "1")]
    assert len(list(csv.DictReader(open(reports / "results.csv")))) == 3


def test_dry_run_lists_commands_and_writes_nothing(tmp_path, data_dir, capsys):
    """A dry run prints the commands and writes nothing: no done.json, no folders, no log (issue 14)."""
    path = _protocol(tmp_path, data_dir)
    out = tmp_path / "dry"
    assert main(["experiment", str(path), "--out", str(out), "--dry-run", "--quiet"]) == 0
    log = capsys.readouterr().out
    assert log.count("$ anatosynth pretrain") == 1 and log.count("$ anatosynth finetune") == 4
    assert "--val-cases" in log
    assert not out.exists()
    # in a folder with earlier work the dry run leaves every file as it was
    (out / "finetune" / "ft-unfinished").mkdir(parents=True)
    (out / "finetune" / "ft-unfinished" / "train.log").write_text("half done\n")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["experiment", str(path), "--out", str(out), "--dry-run", "--quiet"]) == 0
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.slow
def test_committed_results_and_released_weights_survive_a_new_machine(tmp_path, data_dir):
    """`results:` keeps each job's metrics and an arm's `weights:` its release: a fresh experiment folder
    (a new machine with the repository's results/ and weights/) reports and runs nothing again."""
    import json
    import shutil

    path = _protocol(tmp_path, data_dir)
    raw = yaml.safe_load(path.read_text())
    raw["seeds"] = [0]
    raw["results"] = str(tmp_path / "repo" / "results" / "tiny")
    raw["arms"][1]["weights"] = str(tmp_path / "repo" / "weights" / "tiny-anatomy")
    path.write_text(yaml.safe_dump(raw))
    first = tmp_path / "machine1"
    assert main(["experiment", str(path), "--out", str(first), "--quiet"]) == 0
    kept = sorted((tmp_path / "repo" / "results" / "tiny").glob("*.json"))
    assert [p.name.split("-")[2] for p in kept] == ["anatomy", "scratch"]
    record = json.loads(kept[0].read_text())
    assert record["arm"] == "anatomy" and 0 <= record["dice"] <= 100 and record["validation"]
    assert [s["from_step"] for s in record["sessions"]] == [0] and "commit" in record["sessions"][0]
    card = json.loads((tmp_path / "repo" / "weights" / "tiny-anatomy" / "card.json").read_text())
    assert card["steps"] == 2 and card["architecture"]["name"] == "unet"
    rows = list(csv.DictReader(open(first / "tiny" / "results.csv")))

    shutil.rmtree(first)  # the machine is gone; the repository is not
    second = tmp_path / "machine2"
    assert main(["experiment", str(path), "--out", str(second), "--quiet", "--report-only"]) == 0
    assert list(csv.DictReader(open(second / "tiny" / "results.csv"))) == rows
    assert (second / "tiny" / "dice_per_arm.png").stat().st_size > 1000
    assert main(["experiment", str(path), "--out", str(second), "--quiet"]) == 0
    log = (second / "experiment.log").read_text() if (second / "experiment.log").exists() else ""
    assert "$ anatosynth pretrain" not in log and "$ anatosynth finetune" not in log
    assert list(csv.DictReader(open(second / "tiny" / "results.csv"))) == rows


def test_an_interrupted_fine_tune_resumes_and_a_trained_one_is_only_evaluated(tmp_path, data_dir, monkeypatch):
    """A grid that outlives a session: the runner continues a fine-tune from its checkpoint instead of
    starting it again, and only evaluates one whose training had finished."""
    from anatosynth.experiment import runner as runner_mod
    from anatosynth.experiment.protocol import expand, load_protocol

    protocol = expand(load_protocol(_protocol(tmp_path, data_dir)))
    job = next(j for j in protocol.finetunes if j.arm == "scratch")
    out = tmp_path / "exp"
    out.mkdir()
    calls: list[list[str]] = []

    def fake_call(self, args, folder):
        calls.append(args)
        if args[0] == "evaluate":
            (folder / "summary.json").parent.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(runner_mod.Runner, "call", fake_call)
    monkeypatch.setattr(runner_mod, "read_report", lambda report: {"dice": 50.0, "per_class": {}})
    run = runner_mod.Runner(out, protocol, threads=1)
    folder = out / "finetune" / job.key

    def verbs():
        got = [(a[0], "--resume" in a) for a in calls]
        calls.clear()
        (folder / "done.json").unlink(missing_ok=True)  # as if the job had not finished
        return got

    run.finetune(job, None)  # nothing there: a fresh run
    assert verbs() == [("finetune", False), ("evaluate", False)]
    (folder / "checkpoint.pt").write_bytes(b"x")
    (folder / "config.yaml").write_text("steps: 2\n")
    run.finetune(job, None)  # interrupted: resumed, not restarted (the folder is kept)
    assert verbs() == [("finetune", True), ("evaluate", False)] and (folder / "checkpoint.pt").is_file()
    (folder / "model.pt").write_bytes(b"x")
    run.finetune(job, None)  # trained, not evaluated: evaluated only
    assert verbs() == [("evaluate", False)]
