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
    monkeypatch.setattr(runner_mod, "read_report", lambda report, exclude=None: {"dice": 50.0, "per_class": {}})
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


def test_a_pre_training_whose_fine_tunes_are_all_kept_is_not_run_again(tmp_path, data_dir, monkeypatch):
    """On a new machine a pre-training that ships no weights (a budget point, a pilot) is needed only for
    fine-tunes that are not kept in results/ yet: with all of them kept it is skipped, with one missing it runs."""
    from anatosynth.experiment import runner as runner_mod

    path = _protocol(tmp_path, data_dir)
    raw = yaml.safe_load(path.read_text())
    raw["results"] = str(tmp_path / "repo" / "results")
    path.write_text(yaml.safe_dump(raw))
    calls: list[str] = []
    monkeypatch.setattr(runner_mod.Runner, "call", lambda self, args, where: calls.append(args[0]))
    monkeypatch.setattr(runner_mod, "read_report", lambda report, exclude=None: {"dice": 50.0, "per_class": {}})
    assert main(["experiment", str(path), "--out", str(tmp_path / "machine1"), "--quiet"]) == 0
    assert calls.count("pretrain") == 1 and calls.count("finetune") == 4
    calls.clear()
    assert main(["experiment", str(path), "--out", str(tmp_path / "machine2"), "--quiet"]) == 0
    assert "pretrain" not in calls and "finetune" not in calls
    assert "not pre-trained" in (tmp_path / "machine2" / "experiment.log").read_text()
    next((tmp_path / "repo" / "results").glob("ft-chaos-anatomy-k1-s1-*.json")).unlink()
    calls.clear()
    assert main(["experiment", str(path), "--out", str(tmp_path / "machine3"), "--quiet"]) == 0
    assert calls.count("pretrain") == 1 and calls.count("finetune") == 1


def test_test_dice_leaves_out_the_validation_cases_and_averages_as_the_evaluation_does(tmp_path):
    """The evaluation set holds the cases that chose the checkpoint; ``test_dice`` is the same mean Dice
    (classes' means over cases, undefined values left out) without them, and a kept result carries it."""
    import json
    import math

    from anatosynth.experiment.runner import dice_without, read_report, read_result, validation_cases

    per_case = {"a": {"liver": 0.9, "spleen": 0.5}, "b": {"liver": 0.7, "spleen": None},
                "c": {"liver": 0.3, "spleen": 0.1}}
    assert dice_without(per_case, []) == pytest.approx(100 * ((0.9 + 0.7 + 0.3) / 3 + (0.5 + 0.1) / 2) / 2)
    # without "a": liver (0.7 + 0.3) / 2, spleen only c (b's spleen undefined)
    assert dice_without(per_case, ["a"]) == pytest.approx(100 * (0.5 + 0.1) / 2)
    assert dice_without(per_case, ["a", "b", "c"]) is None
    summary = {"mean_dice": 0.5, "classes": {n: {"dice": {"mean": 0.5}} for n in ("liver", "spleen")},
               "per_case": {c: {n: {"dice": v, "hd95": 1.0} for n, v in per.items()} for c, per in per_case.items()}}
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "summary.json").write_text(json.dumps(summary))
    assert validation_cases(tmp_path) is None
    (tmp_path / "split.json").write_text(json.dumps({"train": ["d"], "eval": ["a", "b", "c"], "val": ["a"]}))
    assert validation_cases(tmp_path) == ["a"]
    got = read_report(tmp_path / "report", validation_cases(tmp_path))
    assert got["dice"] == 50.0 and got["test_dice"] == pytest.approx(30.0) and got["validation_cases"] == ["a"]
    assert read_report(tmp_path / "report")["test_dice"] is None  # unknown validation cases: no test score
    kept = tmp_path / "kept.json"
    kept.write_text(json.dumps({"dice": 50.0, "per_class": {}, **got}))
    assert read_result(kept)["test_dice"] == pytest.approx(30.0)
    kept.write_text(json.dumps({"dice": 50.0, "per_class": {}}))  # a result kept before test Dice existed
    assert read_result(kept)["test_dice"] is None and not math.isnan(read_result(kept)["dice"])


def test_the_report_adds_a_test_cases_table_for_runs_that_know_their_validation_cases(tmp_path):
    import json

    from anatosynth.experiment.protocol import expand, load_protocol
    from anatosynth.experiment.runner import _rows, write_reports

    protocol = expand(load_protocol(_protocol(tmp_path, tmp_path)))
    results = {j.key: {"dice": 60.0 + j.seed + (2 if j.arm == "anatomy" else 0), "per_class": {"liver": 60.0},
                       "test_dice": 50.0 + j.seed + (1 if j.arm == "anatomy" else 0)} for j in protocol.finetunes}
    write_reports(_rows(protocol, results), tmp_path / "out", protocol)
    text = (tmp_path / "out" / "tiny" / "results.md").read_text()
    assert "Finished: 4 of 4 fine-tune runs (scratch 2/2, anatomy 2/2)." in text
    main_part, test_part = text.split("## Test cases only")
    assert "| anatomy | 1 | endless | – | 2 | 62.50 ± 0.71 | 2.00 [2.00, 2.00] |" in main_part
    assert "known for 4 of 4 runs" in test_part and "test Dice % (mean ± std)" in test_part
    assert "| anatomy | 1 | endless | – | 2 | 51.50 ± 0.71 | 1.00 [1.00, 1.00] |" in test_part
    assert "| chaos | 1 | anatomy − scratch | 2 | 1.00 [1.00, 1.00] |" in test_part and "Δ test Dice %" in test_part
    assert "## Per class" in test_part and "| liver | 60.00 ± 0.00 (2) | 0.00 [0.00, 0.00], t [0.00, 0.00], 0/2 ahead |" in test_part
    # the report says what each plot shows, and what a missing one waits for
    assert "- `paired_differences.png`: paired differences" in text
    assert "- `dice_vs_budget.png`: not drawn (needs one recipe with finished pairs at two or more budgets)" in text
    assert {c["class"] for c in json.loads((tmp_path / "out" / "tiny" / "summary.json").read_text())["per_class"]} == {"liver"}
    # results kept before test Dice existed: no second table; a grid half done says so
    for r in results.values():
        r["test_dice"] = None
    del results[next(j.key for j in protocol.finetunes if j.arm == "anatomy")]
    write_reports(_rows(protocol, results), tmp_path / "out", protocol)
    text = (tmp_path / "out" / "tiny" / "results.md").read_text()
    assert "Test cases only" not in text and "Finished: 3 of 4 fine-tune runs (scratch 2/2, anatomy 1/2)." in text


def test_a_result_kept_before_test_dice_gains_it_from_its_run_folder(tmp_path, data_dir):
    import dataclasses
    import json

    from anatosynth.experiment import runner as runner_mod
    from anatosynth.experiment.protocol import expand, load_protocol

    protocol = expand(load_protocol(_protocol(tmp_path, data_dir)))
    protocol = dataclasses.replace(protocol, results=str(tmp_path / "results"))
    job = next(j for j in protocol.finetunes if j.arm == "scratch")
    out = tmp_path / "exp"
    folder = out / "finetune" / job.key
    (folder / "report").mkdir(parents=True)
    summary = {"mean_dice": 0.5, "classes": {"liver": {"dice": {"mean": 0.5}}},
               "case_mean_dice": {"a": 0.8, "b": 0.2},
               "per_case": {"a": {"liver": {"dice": 0.8}}, "b": {"liver": {"dice": 0.2}}}}
    (folder / "report" / "summary.json").write_text(json.dumps(summary))
    (folder / "split.json").write_text(json.dumps({"train": ["c"], "eval": ["a", "b"], "val": ["a"]}))
    run = runner_mod.Runner(out, protocol, threads=1)
    kept = run.result_file(job)
    kept.parent.mkdir(parents=True)
    old = {"key": job.key, "dice": 50.0, "per_class": {"liver": 50.0}, "validation": [[100, 0.5, 0.4]],
           "sessions": [{"from_step": 0, "commit": "abc"}]}
    kept.write_text(json.dumps(old))
    assert run.finetune(job, None)["test_dice"] is None  # the run folder is not finished: left alone
    (folder / "done.json").write_text("{}")
    assert run.finetune(job, None)["test_dice"] == pytest.approx(20.0)
    record = json.loads(kept.read_text())
    assert record["validation_cases"] == ["a"] and record["per_case"]["b"] == {"liver": 0.2}
    assert {k: record[k] for k in old} == old  # nothing else changes (the folder has no train.log here)
    # a folder whose Dice disagrees with the kept one (another computation) does not touch the result
    old["dice"] = 55.0
    kept.write_text(json.dumps(old))
    assert run.finetune(job, None)["test_dice"] is None and json.loads(kept.read_text()) == old


def test_a_model_card_command_names_the_protocol_file_and_arm_without_local_paths(tmp_path, monkeypatch):
    from anatosynth.experiment.protocol import expand, load_protocol, subset
    from anatosynth.experiment.runner import release_command

    path = _protocol(tmp_path, tmp_path)  # absolute
    protocol = expand(load_protocol(path), str(path))
    assert subset(protocol, arms=["anatomy"]).source == str(path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert release_command(protocol, "anatomy") == "anatosynth experiment tiny.yaml --out OUT --arms anatomy"
    monkeypatch.chdir(tmp_path / "sub")  # the file is not below the working directory: its name only
    assert release_command(protocol, "anatomy") == "anatosynth experiment tiny.yaml --out OUT --arms anatomy"
    relative = expand(load_protocol(path), "protocols/tiny.yaml")
    assert release_command(relative, "x") == "anatosynth experiment protocols/tiny.yaml --out OUT --arms x"
    assert release_command(expand(load_protocol(path)), "x") == "anatosynth experiment tiny --out OUT --arms x"


def test_a_second_runner_waits_for_a_job_another_runs_and_then_reuses_it(tmp_path, data_dir, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    import threading
    import time

    from anatosynth.experiment import runner as runner_mod
    from anatosynth.experiment.protocol import expand, load_protocol

    protocol = expand(load_protocol(_protocol(tmp_path, data_dir)))
    job = next(j for j in protocol.finetunes if j.arm == "scratch")
    out = tmp_path / "exp"
    folder = out / "finetune" / job.key
    calls: list[str] = []
    monkeypatch.setattr(runner_mod.Runner, "call", lambda self, args, where: calls.append(args[0]))
    monkeypatch.setattr(runner_mod, "read_report", lambda report, exclude=None: {"dice": 50.0, "per_class": {}})
    run = runner_mod.Runner(out, protocol, threads=1)
    run.lock_poll_s = 0.05
    folder.parent.mkdir(parents=True)
    other = open(folder.parent / f"{job.key}.lock", "a")  # another runner holds the job
    fcntl.flock(other, fcntl.LOCK_EX)
    got: list = []
    waiting = threading.Thread(target=lambda: got.append(run.finetune(job, None)))
    waiting.start()
    log = out / "experiment.log"
    deadline = time.monotonic() + 30
    while not (log.is_file() and "another experiment process" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert waiting.is_alive() and calls == [] and "another experiment process" in log.read_text()
    folder.mkdir()
    (folder / "done.json").write_text("{}")  # the other runner finishes the job, then lets go
    fcntl.flock(other, fcntl.LOCK_UN)
    other.close()
    waiting.join(timeout=30)
    assert not waiting.is_alive() and got == [{"dice": 50.0, "per_class": {}}] and calls == []  # reused, not re-run
    (folder / "done.json").unlink()
    assert run.finetune(job, None) == {"dice": 50.0, "per_class": {}} and calls[0] == "finetune"  # free: it runs
    # a run that stops (a failure elsewhere, Ctrl-C) stops waiting too, with one line
    fcntl.flock(other := open(folder.parent / f"{job.key}.lock", "a"), fcntl.LOCK_EX)
    (folder / "done.json").unlink()
    errors: list = []

    def wait_then_fail():
        try:
            run.finetune(job, None)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            errors.append(err)

    waiting = threading.Thread(target=wait_then_fail)
    waiting.start()
    run.stopping.set()
    waiting.join(timeout=30)
    other.close()
    assert not waiting.is_alive() and "stopped while waiting for another experiment process" in str(errors[0])


def test_an_unfinished_pre_training_moves_to_a_new_machine_through_its_resumable_archive(tmp_path, data_dir):
    """`experiment --save-resumable` archives a pre-training stopped half-way into the protocol's `resume:`
    folder; a new machine continues from it, releases the same weights as an uninterrupted run, and deletes it."""
    import json
    import shutil

    from anatosynth.experiment.protocol import expand, load_protocol
    from anatosynth.train.config import PretrainConfig
    from anatosynth.train.pretrain import pretrain

    path = _protocol(tmp_path, data_dir)
    raw = yaml.safe_load(path.read_text())
    raw.update(seeds=[0], resume=str(tmp_path / "repo" / "resume"))
    raw["pretrain"].update(steps=4, checkpoint_every=2, threads=1)
    raw["arms"][1]["weights"] = str(tmp_path / "repo" / "weights" / "tiny-anatomy")
    path.write_text(yaml.safe_dump(raw))
    job = expand(load_protocol(path), str(path)).pretrains[0]
    first = tmp_path / "machine1"
    pretrain(PretrainConfig.from_dict({**job.config, "bank": "builtin:phantom",
                                       "out": str(first / "pretrain" / job.key)}), echo=False, stop_at=2)
    assert main(["experiment", str(path), "--out", str(first), "--save-resumable"]) == 0
    archive = tmp_path / "repo" / "resume" / f"{job.key}.resume"
    assert archive.is_file()
    shutil.rmtree(first)  # the machine is gone; the repository (with the archive) is not

    second = tmp_path / "machine2"
    assert main(["experiment", str(path), "--out", str(second), "--quiet", "--arms", "anatomy"]) == 0
    log = (second / "experiment.log").read_text()
    assert "continuing from its resumable archive" in log and "resumable archive" in log and not archive.exists()
    assert "resumed at step 2" in (second / "pretrain" / job.key / "train.log").read_text()
    resumed = json.loads((tmp_path / "repo" / "weights" / "tiny-anatomy" / "card.json").read_text())

    shutil.rmtree(tmp_path / "repo" / "weights")  # the same protocol uninterrupted, on a third machine
    raw["results"] = str(tmp_path / "elsewhere")
    path.write_text(yaml.safe_dump(raw))
    assert main(["experiment", str(path), "--out", str(tmp_path / "machine3"), "--quiet", "--arms", "anatomy"]) == 0
    straight = json.loads((tmp_path / "repo" / "weights" / "tiny-anatomy" / "card.json").read_text())
    assert resumed["weights_sha256"] == straight["weights_sha256"] and resumed["steps"] == straight["steps"] == 4


def test_a_dataset_split_gives_each_fine_tune_a_split_file_and_the_report_describes_it(tmp_path, data_dir,
                                                                                        monkeypatch):
    """`split: {test, validation}` (instead of eval_cases): the runner writes the dataset's split once under
    OUT/splits/, hands it to every fine-tune, and the report names its sizes and the seeds' labelled sets."""
    import json

    from anatosynth.experiment import runner as runner_mod
    from anatosynth.experiment.protocol import expand, load_protocol

    path = _protocol(tmp_path, data_dir)
    raw = yaml.safe_load(path.read_text())
    del raw["datasets"][0]["eval_cases"]
    raw["datasets"][0]["split"] = {"test": 8, "validation": 3}
    raw["seeds"] = [10, 11, 12]
    path.write_text(yaml.safe_dump(raw))
    calls: list[list[str]] = []
    monkeypatch.setattr(runner_mod.Runner, "call", lambda self, args, where: calls.append(args))
    monkeypatch.setattr(runner_mod, "read_report", lambda report, exclude=None: {"dice": 50.0, "per_class": {}})
    assert main(["experiment", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    tunes = [a for a in calls if a[0] == "finetune"]
    files = {a[a.index("--split") + 1] for a in tunes}
    assert len(tunes) == 6 and len(files) == 1 and all("--val-cases" not in a for a in tunes)
    split = json.loads(open(files.pop()).read())
    assert (len(split["test"]), len(split["validation"]), len(split["pool"])) == (8, 3, 9)
    protocol = expand(load_protocol(path), str(path))
    drawn = {j.seed: runner_mod.labelled_set(j) for j in protocol.finetunes}
    assert len({tuple(v) for v in drawn.values()}) == 3 and all(v[0] in split["pool"] for v in drawn.values())
    rows = [{"arm": j.arm, "dataset": j.dataset, "train_cases": 1, "seed": j.seed, "labelled": drawn[j.seed]}
            for j in protocol.finetunes]
    text = runner_mod.split_section(protocol, rows, tmp_path / "report")
    assert "test 8, validation 3, training pool 9 cases" in text and "3 distinct labelled sets (no repeats)" in text
    assert json.loads((tmp_path / "report" / "splits" / "chaos.json").read_text())["test"] == split["test"]
    raw["datasets"][0]["eval_cases"] = 4
    path.write_text(yaml.safe_dump(raw))
    assert main(["experiment", str(path), "--out", str(tmp_path / "o2"), "--dry-run"]) == 2  # not both


def test_sigterm_stops_the_grid_and_its_running_job_with_a_checkpoint(tmp_path, data_dir):
    """A session's end (SIGTERM to `experiment`) reaches the running pre-training: it writes a checkpoint and
    stops, rather than running on as an orphan; the same command continues it later."""
    import signal
    import subprocess
    import sys
    import time

    path = _protocol(tmp_path, data_dir)
    raw = yaml.safe_load(path.read_text())
    raw["pretrain"].update(steps=100000, checkpoint_every=2, threads=1)
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "anatosynth", "experiment", str(path), "--out", str(out),
                             "--quiet", "--arms", "anatomy"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not list(out.glob("pretrain/*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(1)
    (run,) = [p.parent for p in out.glob("pretrain/*/checkpoint.pt")]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    time.sleep(2)
    log = (run / "train.log").read_text()
    assert proc.returncode != 0 and "stopped by SIGTERM" in log
    mtime = (run / "checkpoint.pt").stat().st_mtime
    time.sleep(3)
    assert (run / "checkpoint.pt").stat().st_mtime == mtime  # nothing trains on after the stop


def test_a_dry_run_listing_pastes_into_a_shell(tmp_path, data_dir, capsys):
    """`experiment --dry-run` writes nothing, and what it prints runs as a script: the pre-training config it
    names is written by the listing itself (a here-document) before the command that reads it."""
    import subprocess

    path = _protocol(tmp_path, data_dir)
    out = tmp_path / "dry"
    assert main(["experiment", str(path), "--out", str(out), "--dry-run", "--quiet", "--arms", "anatomy",
                 "--seeds", "0"]) == 0
    assert not out.exists()
    listing = capsys.readouterr().out
    script = "\n".join(line[2:] if line.startswith("$ ") else line for line in listing.splitlines()
                       if line.startswith("$ ") or not line.startswith(("protocol ", "dry run")))
    cut = script.index("anatosynth pretrain")  # run up to the pre-training: the config must be there
    subprocess.run(["bash", "-e", "-c", script[:cut]], check=True, cwd=tmp_path)
    (cfg,) = out.glob("pretrain/*.yaml")
    assert yaml.safe_load(cfg.read_text())["mode"] == "anatomy" and f"--config {cfg}" in script
