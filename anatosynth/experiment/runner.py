"""Run an expanded protocol: banks, pre-training runs, fine-tune + evaluate runs, then tables and plots.

Each job runs the same command a user would type (``anatosynth bank build``, ``pretrain``, ``finetune``,
``evaluate``) in a subprocess, with its output in ``OUT/<kind>/<job key>``. A job is done when its
``done.json`` exists; a half-finished pre-training run is resumed with ``--resume``; any other
half-finished job is started again from scratch. So re-running the same command after an interruption
reuses everything that finished and resumes the grid.

With ``results: DIR`` in the protocol, each finished fine-tune job's metrics are also kept as
``DIR/<job key>.json``; a job whose metrics are there is not run again, and reports are drawn from them,
so a grid committed to the repository survives a move to a new machine. An arm's ``weights: DIR`` is
used as its pre-trained model when present, and written (``anatosynth release``) after pre-training when not.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from anatosynth.errors import AnatosynthError
from anatosynth.experiment.protocol import (
    BankJob,
    FinetuneJob,
    PretrainJob,
    Protocol,
    _digest,
    pick_eval_cases,
    resolved_finetune,
    resolved_pretrain,
)
from anatosynth.io.splits import SPLIT_METHOD
from anatosynth.io.volume import atomic_write_text, check_output_dir, ensure_writable_dir
from anatosynth.options import bar_disable

__all__ = ["run_protocol", "collect_results", "write_reports"]

RESULT_FIELDS = ["arm", "dataset", "seed", "train_cases", "samples", "subjects", "budget", "recipe", "dice",
                 "test_dice", "per_class", "job"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_args(options: dict) -> list[str]:
    """Options as flags: ``{"feature_size": 12, "patch": [64, 64, 32], "quiet": True}`` →
    ``--feature-size 12 --patch 64,64,32 --quiet``."""
    args: list[str] = []
    for k, v in options.items():
        if v is None or v is False:
            continue
        if v is True:
            args.append(_flag(k))
        elif isinstance(v, (list, tuple)):
            args += [_flag(k), ",".join(str(x) for x in v)]
        else:
            args += [_flag(k), str(v)]
    return args


class Runner:
    """Executes jobs as subprocesses, logging each one's output to its folder."""

    def __init__(self, out: Path, protocol: Protocol, dry_run: bool = False, threads: int | None = None,
                 report_only: bool = False):
        self.out = out
        self.protocol = protocol
        self.dry_run = dry_run
        self.env = dict(os.environ)
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.log = out / "experiment.log"
        self.report_only = report_only
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # set when the run fails or is interrupted: waiting jobs give up
        self.lock_poll_s = 5.0
        self.running: set[subprocess.Popen] = set()  # job processes now running (signalled when the run stops)

    def _say(self, text: str) -> None:
        if self.dry_run:  # a dry run writes nothing at all: the commands go to stdout
            with self.lock:
                print(text, flush=True)
            return
        line = f"{time.strftime('%H:%M:%S')} {text}"
        with self.lock, open(self.log, "a") as f:
            f.write(line + "\n")

    def call(self, args: list[str], folder: Path) -> None:
        cmd = [sys.executable, "-m", "anatosynth", *args]
        self._say("$ anatosynth " + " ".join(args))
        if self.dry_run:
            return
        folder.parent.mkdir(parents=True, exist_ok=True)
        log = folder.parent / f"{folder.name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env)
            with self.lock:
                self.running.add(proc)
            try:
                proc.wait()
            finally:
                with self.lock:
                    self.running.discard(proc)
        if self.stopping.is_set() and proc.returncode != 0:
            raise AnatosynthError(f"job {folder.name}: stopped with the experiment (exit {proc.returncode}); the "
                                  "same command continues it")
        if proc.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise AnatosynthError(f"job {folder.name} failed (exit {proc.returncode}): {tail[0]} — see {log}")

    def stop_jobs(self) -> None:
        """Ask every running job to stop (SIGTERM): pre-training and fine-tuning finish their step, write a
        checkpoint and exit, so the next run of the same command continues them."""
        import signal

        self.stopping.set()
        with self.lock:
            for proc in self.running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    @staticmethod
    def done(folder: Path) -> bool:
        return (folder / "done.json").exists()

    def mark_done(self, folder: Path, info: dict) -> None:
        if not self.dry_run:
            atomic_write_text(folder / "done.json", json.dumps(info, indent=1))

    def fresh(self, folder: Path) -> None:
        """Empty ``folder`` for a job that starts from scratch (a dry run touches nothing)."""
        if not self.dry_run:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)

    @contextmanager
    def job_lock(self, folder: Path) -> Iterator[None]:
        """Hold ``folder``'s job against other ``experiment`` processes on the same folder: a job is never
        run by two at once. The second waits for it (polling, so an interrupted run stops waiting), then
        finds it finished and reuses it. This is for safety, not speed: two processes that walk the same
        jobs mostly wait for each other; for parallel work use ``--jobs N`` or give each its own ``--arms``.
        The lock is an ``flock`` on ``<folder>.lock`` beside the folder, dropped by the system when a
        process dies; dry runs and ``--report-only`` take none."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no locking
            fcntl = None  # type: ignore[assignment]
        if self.dry_run or self.report_only or fcntl is None:
            yield
            return
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{folder.name}.lock", "a") as handle:
            said = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not said:
                        note = f"{folder.name}: another experiment process is running this job; waiting for it"
                        self._say(note)
                        print(f"experiment: {note}", file=sys.stderr, flush=True)
                        said = True
                    if self.stopping.wait(self.lock_poll_s):
                        raise AnatosynthError(f"job {folder.name}: stopped while waiting for another "
                                              "experiment process to finish it") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- jobs (each under its folder's lock) -----------------------------------------------------------
    def bank(self, job: BankJob) -> Path:
        with self.job_lock(self.out / "banks" / job.key):
            return self._bank(job)

    def pretrain(self, job: PretrainJob, bank_paths: dict[str, Path]) -> Path:
        with self.job_lock(self.out / "pretrain" / job.key):
            return self._pretrain(job, bank_paths)

    def finetune(self, job: FinetuneJob, init: Path | None) -> dict | None:
        with self.job_lock(self.out / "finetune" / job.key):
            return self._finetune(job, init)

    def _bank(self, job: BankJob) -> Path:
        folder = self.out / "banks" / job.key
        path = folder / "bank.bank"
        if self.done(folder) or self.report_only:
            return path
        self.fresh(folder)
        pick = ["--cases", ",".join(job.cases)] if job.cases else ["--subjects", str(job.subjects)]
        self.call(["bank", "build", job.source, *pick, "--spacing", ",".join(str(s) for s in job.spacing),
                   "--seed", str(job.seed), "--out", str(path)], folder)
        self.mark_done(folder, {"key": job.key})
        return path

    def _pretrain(self, job: PretrainJob, bank_paths: dict[str, Path]) -> Path:
        folder = self.out / "pretrain" / job.key
        from anatosynth.train.release import read_card

        weights = job.weights
        card = read_card(weights) if weights else None
        if weights and card is not None:  # released: do not pre-train again
            made_by = card.get("job_key")
            if made_by != job.key:
                self._say(f"arm {job.arm}: using released weights {job.weights} (made by job {made_by}; "
                          f"the protocol's options now give job {job.key})")
            return Path(weights)
        if self.report_only:
            return folder / "model.pt"
        if self.done(folder):
            return self.release(job, folder)
        if not weights and self.all_kept(job):  # a new machine: every fine-tune from it is in results/ already
            self._say(f"{job.key}: not pre-trained (every fine-tune from it is kept in {self.protocol.results})")
            return folder / "model.pt"
        cfg = dict(job.config)
        if job.bank is not None:
            cfg["bank"] = str(bank_paths.get(job.bank, job.bank))
        cfg["out"] = str(folder)
        archive = self.archive(job)
        if (folder / "checkpoint.pt").exists():
            self.call(["pretrain", "--resume", str(folder)], folder)
        elif archive is not None and archive.is_file():  # a new machine: continue from the committed archive
            self.fresh(folder)
            self._say(f"{job.key}: continuing from its resumable archive {archive}")
            self.call(["pretrain", "--resume", str(archive), "--out", str(folder)], folder)
        else:
            self.fresh(folder)
            cfg_path = self.out / "pretrain" / f"{job.key}.yaml"
            text = yaml.safe_dump(cfg, sort_keys=False)
            if self.dry_run:  # the config the command reads, as a command too: the listing pastes into a shell
                self._say(f"$ mkdir -p {cfg_path.parent} && cat > {cfg_path} <<'EOF'\n{text}EOF")
            else:
                atomic_write_text(cfg_path, text)
            self.call(["pretrain", "--config", str(cfg_path), "--out", str(folder)], folder)
        if not self.dry_run:
            self.mark_done(folder, {"key": job.key})
        return self.release(job, folder)

    def release(self, job: PretrainJob, folder: Path) -> Path:
        """The model a fine-tune starts from: the run's model.pt, or its release in ``weights:`` if the arm
        names one. A finished run's resumable archive is deleted (the commit that adds the weights drops it)."""
        archive = self.archive(job)
        if archive is not None and archive.is_file() and not self.dry_run:
            archive.unlink()
            self._say(f"{job.key}: finished; its resumable archive {archive} is deleted")
        if not job.weights:
            return folder / "model.pt"
        self.call(["release", str(folder), "--out", job.weights, "--job-key", job.key, "--command",
                   f"{release_command(self.protocol, job.arm)} (pre-training job {job.key})"],
                  folder / "release")  # log: folder/release.log
        return Path(job.weights)

    def archive(self, job: PretrainJob) -> Path | None:
        """Where the protocol keeps pre-training ``job``'s resumable archive (``resume:``; None without it)."""
        return Path(self.protocol.resume) / f"{job.key}.resume" if self.protocol.resume else None

    def save_resumable(self) -> list[str]:
        """Archive every unfinished pre-training that has a checkpoint into the protocol's ``resume:`` folder
        (replacing its earlier archive); returns one line per archive written."""
        from anatosynth.train.archive import write_archive

        if not self.protocol.resume:
            raise AnatosynthError(f"protocol {self.protocol.name} has no 'resume:' folder for archives")
        said = []
        for job in self.protocol.pretrains:
            folder = self.out / "pretrain" / job.key
            if self.done(folder) or not (folder / "checkpoint.pt").is_file():
                continue
            archive = self.archive(job)
            assert archive is not None
            info = write_archive(folder, archive)
            said.append(f"{archive}: step {info['step']} of {info['steps']} ({info['archive_bytes'] / 1e6:.1f} MB)")
        return said

    def all_kept(self, job: PretrainJob) -> bool:
        """Whether every fine-tune of this protocol that starts from pre-training ``job`` has a kept result
        (so the pre-training is not needed; an arm with ``weights:`` still pre-trains to release them)."""
        runs = [f for f in self.protocol.finetunes if f.pretrain == job.key]
        return bool(runs) and all(self.is_kept(f) for f in runs)

    def is_kept(self, job: FinetuneJob) -> bool:
        """Whether fine-tune ``job`` has a kept result in the protocol's ``results:`` folder."""
        kept = self.result_file(job)
        return kept is not None and kept.is_file()

    def result_file(self, job: FinetuneJob) -> Path | None:
        return Path(self.protocol.results) / f"{job.key}.json" if self.protocol.results else None

    def _finetune(self, job: FinetuneJob, init: Path | None) -> dict | None:
        folder = self.out / "finetune" / job.key
        report = folder / "report"
        kept = self.result_file(job)
        if kept is not None and self.is_kept(job):
            return self.complete_kept(kept, job, folder)
        if self.report_only:
            return read_report(report, validation_cases(folder)) if self.done(folder) else None
        if not self.done(folder):
            options = dict(job.options)
            ev = options.pop("evaluate", {}) or {}
            # an interrupted run (a session's end, a new machine with the folder copied) continues from its
            # checkpoint; one that finished training but not evaluation is only evaluated
            resumable = (folder / "checkpoint.pt").is_file() and (folder / "config.yaml").is_file()
            if resumable and (folder / "model.pt").is_file():
                self._say(f"{job.key}: fine-tuning had finished; evaluating")
            elif resumable:
                self.call(["finetune", "--resume", str(folder), "--quiet"], folder)
            else:
                if not self.dry_run:
                    shutil.rmtree(folder, ignore_errors=True)
                if job.eval_cases is not None:
                    options["val_cases"] = self.eval_cases(job)
                else:
                    options["split"] = self.split_file(job)
                self.call(["finetune", "--data", job.data, "--init", str(init) if init else "none",
                           "--train-cases", str(job.train_cases), "--seed", str(job.seed), "--out", str(folder),
                           "--quiet", *_cli_args(options)], folder)
            if not self.dry_run:
                shutil.rmtree(report, ignore_errors=True)  # a half-written report of an interrupted evaluation
            self.call(["evaluate", "--data", job.data, "--model", str(folder), "--out", str(report),
                       "--quiet", *_cli_args(ev)], report)
            if self.dry_run:
                return None
            self.mark_done(folder, {"key": job.key})
        result = read_report(report, validation_cases(folder))
        if kept is not None:
            keep_result(kept, job, result, folder)
            return read_result(kept)  # with the validation curve, as a later report reads it
        return result


    def complete_kept(self, kept: Path, job: FinetuneJob, folder: Path) -> dict:
        """A kept result; one kept before results had ``test_dice`` gains it (with Dice per case and class
        and the validation cases; nothing else in the file changes) from its run folder when that is still
        here and gives the same Dice. This is the one place ``--report-only`` writes outside ``--out``."""
        result = read_result(kept)
        report = folder / "report" / "summary.json"
        if result["test_dice"] is not None or self.dry_run or not (self.done(folder) and report.is_file()):
            return result
        again = read_report(report.parent, validation_cases(folder))
        if again["test_dice"] is None or not math.isclose(again["dice"], result["dice"], abs_tol=1e-6):
            return result
        record = json.loads(kept.read_text(encoding="utf-8"))
        record.update({k: again[k] for k in ("test_dice", "per_case", "validation_cases")})
        atomic_write_text(kept, json.dumps(record, indent=1) + "\n")
        self._say(f"{job.key}: kept result completed with its test Dice ({again['test_dice']:.2f} %)")
        return read_result(kept)

    def split_file(self, job: FinetuneJob) -> str:
        """The dataset's test / validation / pool split as a file: a split-file path as given (checked), else
        the default split of the protocol's sizes, written once to ``OUT/splits/``."""
        from anatosynth.io.splits import load_split, write_split

        if isinstance(job.split, str):
            load_split(job.split, labelled_names(job.data))
            return job.split
        path = self.out / "splits" / f"{job.dataset}-{_digest([job.split, SPLIT_METHOD])}.json"
        if not path.is_file() and not self.dry_run:
            write_split(dataset_split(job), path)
        return str(path)

    def eval_cases(self, job: FinetuneJob) -> list[str] | None:
        return pick_eval_cases(labelled_names(job.data), job.eval_cases)


@functools.lru_cache(maxsize=16)
def _dataset_cases(data: str) -> tuple:
    """A dataset's cases, read once per process: a report asks for every job's split and labelled cases."""
    from anatosynth.io.datasets import read_dataset

    return tuple(read_dataset(data).cases)


def labelled_names(data: str) -> list[str]:
    """The names of the cases with an image and a label map, the ones a fine-tune splits."""
    return [c.name for c in _dataset_cases(data) if c.image is not None and c.label is not None]


def dataset_split(job: FinetuneJob):
    """The :class:`~anatosynth.io.splits.Split` a fine-tune job with a ``split`` uses (sizes or a file)."""
    from anatosynth.io.splits import load_split, make_split

    names = labelled_names(job.data)
    if isinstance(job.split, str):
        return load_split(job.split, names)
    return make_split(names, **(job.split or {}))


def labelled_set(job: FinetuneJob, folder: Path | None = None) -> list[str]:
    """The cases fine-tune ``job`` trained on: from its run folder's ``split.json`` when there, else made
    again as the fine-tune makes them (both splits are deterministic functions of the case names and seed)."""
    split = folder / "split.json" if folder is not None else None
    if split is not None and split.is_file():
        return list(json.loads(split.read_text(encoding="utf-8"))["train"])
    if job.eval_cases is None:
        from anatosynth.io.splits import draw_labelled

        return draw_labelled(dataset_split(job).pool, job.train_cases, job.seed)["train"]
    from anatosynth.train.finetune import make_split

    evaluation = pick_eval_cases(labelled_names(job.data), job.eval_cases)
    return make_split(list(_dataset_cases(job.data)), job.train_cases, job.seed, evaluation)["train"]


def validation_cases(folder: Path) -> list[str] | None:
    """The cases that chose a fine-tuning run's best checkpoint (``split.json``'s ``val``; None if unknown)."""
    split = folder / "split.json"
    if not split.is_file():
        return None
    val = json.loads(split.read_text(encoding="utf-8")).get("val")
    return [str(c) for c in val] if isinstance(val, list) else None


def dice_without(per_case: dict, exclude: Iterable[str]) -> float | None:
    """Mean foreground Dice (%) over the evaluation cases not in ``exclude``, as the evaluation computes it
    (:func:`~anatosynth.evaluate.report.mean_dice`).

    The evaluation set holds the validation cases that chose the best checkpoint (the BTCV recipe, see
    docs/method.md "Splits"); without them, the score is of cases that played no part in the run.
    """
    from anatosynth.evaluate.report import mean_dice

    mean = mean_dice(per_case, exclude)
    return None if mean is None else 100.0 * mean


def release_command(protocol: Protocol, arm: str) -> str:
    """The command a model card records: the protocol file (relative to the working directory, never an
    absolute local path) and the arm; ``OUT`` stands for the experiment folder."""
    source = protocol.source
    if source is not None and Path(source).is_absolute():
        try:
            source = Path(source).resolve().relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            source = Path(source).name
    return f"anatosynth experiment {source or protocol.name} --out OUT --arms {arm}"


def read_report(report: Path, exclude: Iterable[str] | None = None) -> dict:
    """Mean foreground Dice (%) and per-class Dice from an evaluation ``summary.json``; with ``exclude``
    (the run's validation cases) also ``test_dice`` (without them) and ``per_case`` (case -> class -> Dice).
    ``per_case_dice``: each case's mean over its classes."""
    summary = json.loads((report / "summary.json").read_text())
    classes = summary["classes"]
    per_class = {name: 100.0 * float(c["dice"]["mean"]) for name, c in classes.items()
                 if c["dice"]["mean"] is not None and math.isfinite(float(c["dice"]["mean"]))}
    # no scorable class at all (every class absent from reference and prediction) -> NaN, kept out of means
    mean = float("nan") if summary.get("mean_dice") is None else float(summary["mean_dice"]) * 100.0
    per_case = {case: {name: v.get("dice") for name, v in per.items()}
                for case, per in (summary.get("per_case") or {}).items()}
    result = {"dice": mean, "per_class": per_class, "test_dice": None,
              "per_case_dice": summary.get("case_mean_dice")}
    if exclude is not None and per_case:
        result.update(test_dice=dice_without(per_case, exclude), per_case=per_case, validation_cases=list(exclude),
                      test_cases=test_case_dice(per_case, exclude))
    return result


def keep_result(path: Path, job: FinetuneJob, result: dict, folder: Path) -> None:
    """Write a finished job's metrics (not its checkpoints) where the repository keeps them: Dice over the
    evaluation cases and over its test cases (``test_dice``: the validation cases left out), Dice per case
    and class, the validation curve, and the sessions of its fine-tuning (start step, code commit)."""
    meta_path = folder / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    split = json.loads((folder / "split.json").read_text()) if (folder / "split.json").is_file() else {}
    record = {"key": job.key, "arm": job.arm, "dataset": job.dataset, "seed": job.seed,
              "train_cases": job.train_cases, "samples": job.samples, "subjects": job.subjects,
              "pretrain": job.pretrain, "options": job.options, "labelled": split.get("train"),
              "draw": split.get("draw"), **{k: v for k, v in result.items() if k != "test_cases"},
              "validation": validation_curve(folder), "sessions": meta.get("sessions")}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def validation_curve(folder: Path) -> list[list[float]]:
    """``[[step, loss, validation Dice], ...]`` of a fine-tuning run, from its ``train.log``."""
    log = folder / "train.log"
    if not log.is_file():
        return []
    found = re.findall(r"step (\d+) loss ([-\d.eE+naif]+) val dice ([-\d.eE+naif]+)", log.read_text(encoding="utf-8"))
    return [[int(s), float(loss), float(dice)] for s, loss, dice in found]


def read_result(path: Path) -> dict:
    """A kept job's ``{"dice", "per_class", "validation", "test_dice", "test_cases", "labelled"}`` (see
    :func:`keep_result`; older files may lack the validation curve, the test Dice, the per-case Dice or the
    labelled cases: None)."""
    record = json.loads(path.read_text(encoding="utf-8"))
    test = record.get("test_dice")
    return {"dice": float(record["dice"]), "per_class": record["per_class"], "validation": record.get("validation"),
            "test_dice": None if test is None else float(test), "labelled": record.get("labelled"),
            "test_cases": test_case_dice(record.get("per_case"), record.get("validation_cases"))}


def test_case_dice(per_case: dict | None, validation: Iterable[str] | None) -> dict[str, float] | None:
    """Each test case's Dice (%, the mean over its scored classes), the validation cases left out: what the
    case-level bootstrap resamples. None without Dice per case."""
    if not per_case:
        return None
    left = set(validation or [])
    out = {}
    for case, classes in per_case.items():
        values = [float(v) for v in classes.values() if v is not None and math.isfinite(float(v))]
        if case not in left and values:
            out[case] = 100.0 * float(sum(values) / len(values))
    return out


def run_protocol(protocol: Protocol, out: Path, dry_run: bool = False, progress: bool = True,
                 threads: int | None = None, jobs: int = 1, report_only: bool = False) -> list[dict]:
    """Run every job of ``protocol`` under ``out`` (reusing finished ones) and return the result rows.

    Banks are built one after another; then pre-training and fine-tune+evaluate runs go ``jobs`` at a
    time (each its own process with ``threads`` CPU threads; default: the free cores shared among them), a
    fine-tune run starting as soon as its pre-trained model is there. Rows keep the
    protocol's order whatever order the jobs finish in. ``report_only`` runs nothing and reports the
    finished jobs (e.g. while the grid still runs elsewhere).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from tqdm import tqdm

    check_output_dir(out)
    reports = report_dir(out, protocol)
    if not dry_run:
        ensure_writable_dir(reports)
    if not report_only and not dry_run:
        atomic_write_text(reports / "protocol.yaml", yaml.safe_dump(protocol.raw, sort_keys=False))
    if not threads:  # share the free cores among the jobs that run at once
        from anatosynth.options import default_threads

        threads = max(1, default_threads() // max(1, int(jobs)))
    runner = Runner(out, protocol, dry_run, threads, report_only)
    total = len(protocol.banks) + len(protocol.pretrains) + len(protocol.finetunes)
    with tqdm(total=total, desc=f"experiment {protocol.name}", unit="job", disable=bar_disable(progress)) as bar:
        bank_paths = {}
        for job in protocol.banks:
            bar.set_postfix_str(job.key)
            bank_paths[job.key] = runner.bank(job)
            bar.update()
        results: dict[str, dict] = {}

        def pretrain_one(job: PretrainJob) -> Path:
            model = runner.pretrain(job, bank_paths)
            with runner.lock:
                bar.update()
            return model

        def finetune_one(job: FinetuneJob) -> None:
            init = models[job.pretrain].result() if job.pretrain else None
            result = runner.finetune(job, init)
            with runner.lock:
                bar.update()
                if result is not None:
                    results[job.key] = result
                    if not report_only:
                        write_results_csv(_rows(protocol, results), reports / "results.csv")

        # Pre-training runs are submitted first, so a fine-tune run that waits for its model only ever
        # waits for a run that has already started (the pool takes jobs in order): no deadlock, and
        # scratch fine-tunes or a second pre-training run use the other cores meanwhile.
        pool = ThreadPoolExecutor(max_workers=max(1, int(jobs)))
        try:
            models = {job.key: pool.submit(pretrain_one, job) for job in protocol.pretrains}
            # fine-tunes that need no model (scratch) first: they fill the cores while models pre-train
            order = sorted(protocol.finetunes, key=lambda job: job.pretrain is not None)
            futures: list[Future] = [*models.values(), *(pool.submit(finetune_one, job) for job in order)]
            for future in futures:
                future.result()  # re-raises the first failure
        except BaseException:
            runner.stop_jobs()  # running jobs checkpoint and stop; jobs waiting for another process's lock give up
            pool.shutdown(wait=True, cancel_futures=True)  # let running jobs end; start no new ones
            raise
        pool.shutdown()
    rows = _rows(protocol, results)
    if report_only:
        write_results_csv(rows, reports / "results.csv")
    return rows


def report_dir(out: Path, protocol: Protocol) -> Path:
    """Where a protocol's tables, plots and resolved YAML go: ``OUT/<protocol name>/``.

    Jobs (banks, pre-training, fine-tuning) live at ``OUT`` and are shared by key, so several protocols can
    use one experiment folder (cpu-scaling reuses cpu-mini's runs) without overwriting each other's reports.
    """
    return out / protocol.name


def _budget_and_recipe(protocol: Protocol, job: FinetuneJob) -> tuple[int | None, str | None]:
    """Synthetic patches the job's model was pre-trained on (steps x batch; None from scratch), and its
    recipe: a digest of everything but that budget (the pre-training without ``steps``/``warmup``, and
    the arm's fine-tuning overrides), so arms that differ only in budget draw one line against it. Where the
    pre-training ran is not the recipe: a budget point made in fp32 on a GPU joins the line of those made on
    the CPU (the job key still tells them apart). Its precision is: ``amp`` (bf16 autocast) acts only off
    the CPU, so the recipe holds whether bf16 was in effect (on a ``cuda`` device), not the two options."""
    pre = next((p for p in protocol.pretrains if p.key == job.pretrain), None)
    if pre is None:
        return None, None
    full = resolved_pretrain(pre.config)
    budget = int(full["steps"]) * int(full["batch"])
    arm = next((a for a in protocol.raw.get("arms", []) if isinstance(a, dict) and a.get("name") == job.arm), {})
    rest = {k: v for k, v in full.items() if k not in ("steps", "warmup", "device", "amp")}
    rest["bf16"] = bool(full.get("amp")) and str(full.get("device")).startswith("cuda")  # "auto": counted as the CPU
    return budget, _digest([rest, pre.bank, arm.get("finetune") or {}, job.samples, job.subjects])


def _labelled(job: FinetuneJob) -> list[str] | None:
    """The labelled cases of a job whose kept result predates their recording (made again; None if the
    dataset is not here)."""
    try:
        return labelled_set(job)
    except AnatosynthError:
        return None


def _rows(protocol: Protocol, results: dict[str, dict]) -> list[dict]:
    rows = []
    for job in protocol.finetunes:
        if job.key in results:
            budget, recipe = _budget_and_recipe(protocol, job)
            result = results[job.key]
            rows.append({"arm": job.arm, "dataset": job.dataset, "seed": job.seed, "train_cases": job.train_cases,
                         "samples": job.samples, "subjects": job.subjects, "budget": budget, "recipe": recipe,
                         "dice": result["dice"], "test_dice": result.get("test_dice"),
                         "per_class": result["per_class"],
                         "job": job.key, "validation": result.get("validation"),
                         "test_cases": result.get("test_cases"),
                         "labelled": result.get("labelled") or _labelled(job)})
    return rows


def write_results_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_FIELDS, lineterminator="\n", extrasaction="ignore")  # curves: JSON
    w.writeheader()
    for r in rows:
        test = r.get("test_dice")
        w.writerow({**r, "per_class": json.dumps(r["per_class"]), "dice": f"{r['dice']:.4f}",
                    "test_dice": "" if test is None else f"{test:.4f}"})
    atomic_write_text(path, buf.getvalue())


def collect_results(path: Path) -> list[dict]:
    """Read ``results.csv`` back into rows."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({"arm": r["arm"], "dataset": r["dataset"], "seed": int(r["seed"]),
                         "train_cases": int(r["train_cases"]),
                         "samples": int(r["samples"]) if r["samples"] else None,
                         "subjects": int(r["subjects"]) if r["subjects"] else None,
                         "budget": int(r["budget"]) if r.get("budget") else None, "recipe": r.get("recipe") or None,
                         "dice": float(r["dice"]),
                         "test_dice": float(r["test_dice"]) if r.get("test_dice") else None,
                         "per_class": json.loads(r["per_class"]), "job": r["job"]})
    return rows


def split_section(protocol: Protocol, rows: list[dict], reports: Path | None = None) -> str:
    """How each dataset was split and how distinct the seeds' labelled cases are, in words a reviewer checks:
    test / validation / pool sizes (or the earlier evaluation set with validation inside it), and per setting
    the seeds run, the distinct labelled sets among them, and which seeds repeat a set. With ``reports``, each
    dataset's split is also written there as ``splits/<dataset>.json`` (the case lists themselves)."""
    from anatosynth.io.splits import write_split

    lines = ["## Splits", ""]
    for ds in dict.fromkeys(j.dataset for j in protocol.finetunes):
        job = next(j for j in protocol.finetunes if j.dataset == ds)
        if job.eval_cases is not None:
            n = job.eval_cases if isinstance(job.eval_cases, int) else len(job.eval_cases)
            val = resolved_finetune(job.options)["val_max_cases"]
            lines.append(f"- **{ds}**: the earlier split (exploratory): one evaluation set of {n} cases whose first "
                         f"{val} also chose each run's checkpoint (validation inside evaluation); test Dice leaves "
                         "those out. Labelled cases drawn per seed from the rest, repeats allowed.")
        else:
            try:
                split = dataset_split(job)
                lines.append(f"- **{ds}**: test {len(split.test)}, validation {len(split.validation)}, training "
                             f"pool {len(split.pool)} cases ({split.method}); no choice used the test cases "
                             f"(case lists: `splits/{ds}.json`).")
                if reports is not None:
                    write_split(split, reports / "splits" / f"{ds}.json")
            except AnatosynthError as err:
                lines.append(f"- **{ds}**: split not readable here ({err})")
        for k in dict.fromkeys(j.train_cases for j in protocol.finetunes if j.dataset == ds):
            mine = [r for r in rows if r["dataset"] == ds and r["train_cases"] == k and r.get("labelled")]
            by_set: dict[tuple, set[int]] = {}
            for r in mine:
                by_set.setdefault(tuple(sorted(r["labelled"])), set()).add(int(r["seed"]))
            if not by_set:
                continue
            shared = [sorted(seeds) for seeds in by_set.values() if len(seeds) > 1]
            said = ("; seeds sharing one: " + ", ".join("+".join(map(str, s)) for s in shared)) if shared else \
                " (no repeats)"
            lines.append(f"  - {k} labelled: {len({r['seed'] for r in mine})} seeds finished, {len(by_set)} "
                         f"distinct labelled sets{said}")
    return "\n".join(lines) + "\n\n"


def progress_line(protocol: Protocol, rows: list[dict]) -> str:
    """How much of the grid the report covers: finished fine-tune runs of all, and per arm (a grid that runs
    for days is reported while it runs)."""
    done = {r["job"] for r in rows}
    per_arm = {arm: (sum(j.key in done for j in protocol.finetunes if j.arm == arm),
                     sum(j.arm == arm for j in protocol.finetunes))
               for arm in dict.fromkeys(j.arm for j in protocol.finetunes)}
    arms = ", ".join(f"{arm} {d}/{n}" for arm, (d, n) in per_arm.items())
    return f"Finished: {len(done)} of {len(protocol.finetunes)} fine-tune runs ({arms})."


def write_reports(rows: list[dict], out: Path, protocol: Protocol) -> dict[str, Path]:
    """Results table (Markdown), summary.json and plots from result rows, in the protocol's report folder."""
    from anatosynth.experiment.plots import plot_all, plots_section
    from anatosynth.experiment.stats import (
        case_level_comparisons,
        case_level_table,
        compare_arms,
        compare_table,
        json_ready,
        markdown_table,
        per_class_summary,
        per_class_table,
        primary_table,
        scaling_differences,
        summarise,
    )

    reports = report_dir(out, protocol)
    reports.mkdir(parents=True, exist_ok=True)
    pairs = protocol.raw.get("compare") or []
    summary = summarise(rows, protocol.baseline)
    # the protocol's comparisons, then each scaling point against its own arm's main-grid run
    comparisons = compare_arms(rows, pairs) + scaling_differences(rows)
    text = f"# {protocol.name}\n\n{progress_line(protocol, rows)}\n\n{markdown_table(summary, protocol.baseline)}\n"
    text += f"{compare_table(comparisons)}\n" if comparisons else ""
    # the same on the test cases only (the validation cases that chose each checkpoint left out)
    tested = [r for r in rows if r.get("test_dice") is not None]
    test_summary = summarise(tested, protocol.baseline, "test_dice") if tested else []
    test_comparisons = (compare_arms(tested, pairs, "test_dice") + scaling_differences(tested, "test_dice")
                        if tested else [])
    if tested:
        text += (f"## Test cases only\n\nDice on the evaluation cases that did not choose the checkpoint "
                 f"(test Dice is known for {len(tested)} of {len(rows)} runs).\n\n"
                 f"{markdown_table(test_summary, protocol.baseline, 'test Dice %')}\n")
        text += f"{compare_table(test_comparisons, 'Δ test Dice %')}\n" if test_comparisons else ""
    # the same comparisons with labelled sets and test cases both resampled (and repeated labelled sets once)
    case_level = case_level_comparisons(rows, pairs, protocol.baseline)
    primary = protocol.raw.get("primary") or []
    if primary:
        planned = {(q["a"], q["b"], q["dataset"], int(q["train_cases"])):
                   len({j.seed for j in protocol.finetunes if j.arm == q["a"] and j.dataset == q["dataset"]
                        and j.train_cases == int(q["train_cases"])}) for q in primary}
        section, answered = primary_table(case_level, primary, planned=planned)
        text = text.replace("\n\n", f"\n\n{section}", 1)  # the answers right under the progress line
    text += f"{case_level_table(case_level)}\n" if case_level else ""
    text += split_section(protocol, rows, reports)
    # where a gain comes from: each class's Dice over the evaluation cases
    by_class = per_class_summary(rows, protocol.baseline)
    table = per_class_table(by_class, protocol.baseline)
    if table:
        text += ("## Per class\n\nDice per class over the evaluation cases, as in the first table; Δ: paired "
                 "differences [95 % bootstrap CI], the t-interval and the pairs ahead, per class and uncorrected "
                 "for the number of classes, so a descriptive view of where a gain comes from.\n\n" f"{table}\n")
    bank_subjects = int((protocol.raw.get("bank") or {}).get("subjects", 5))
    plots = plot_all(rows, reports, protocol.baseline, bank_subjects, pairs)
    atomic_write_text(reports / "results.md", text + plots_section(plots))
    everything = {"arms": summary, "comparisons": comparisons, "test_arms": test_summary,
                  "test_comparisons": test_comparisons, "case_level_comparisons": case_level, "per_class": by_class,
                  "primary": [{k: v for k, v in r.items() if k != "found"} | {"result": r["found"]}
                              for r in (answered if primary else [])]}
    atomic_write_text(reports / "summary.json", json.dumps(json_ready(everything), indent=1, allow_nan=False))
    return {"table": reports / "results.md", **plots}
