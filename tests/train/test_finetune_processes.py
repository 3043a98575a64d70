"""Fine-tuning as a real process on real scans (CHAOS T2): kill -9 mid-run, then ``--resume``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anatosynth.train.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data" / "chaos-t2"
STEPS = 16
TINY = ["--data", str(DATA), "--model", "unet", "--feature-size", "4", "--patch", "32", "--spacing", "5,5,5",
        "--train-cases", "2", "--val-cases", "chaos_01", "--steps", str(STEPS), "--val-every", "5",
        "--checkpoint-every", "4", "--log-every", "1", "--overlap", "0", "--lr", "1e-3", "--seed", "2",
        "--device", "cpu", "--threads", "1", "--quiet"]


def _finetune(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "anatosynth", "finetune", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _last_logged_step(log: Path) -> int:
    steps = re.findall(r"step (\d+) loss", log.read_text()) if log.exists() else []
    return int(steps[-1]) if steps else 0


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run that stopped and resumed runs must end as."""
    if not (DATA / "dataset.json").is_file():
        pytest.skip(f"real data {DATA} not available")
    run = tmp_path_factory.mktemp("finetune") / "straight"
    done = _finetune(*TINY, "--out", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def _assert_same_weights(a_run: Path, b_run: Path) -> None:
    for name in ("model.pt", "model_best.pt"):
        a = torch.load(a_run / name, weights_only=True)
        b = torch.load(b_run / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_kill_9_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, straight):

    run = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "anatosynth", "finetune", *TINY, "--out", str(run)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _last_logged_step(run / "train.log") < 9:  # past 2 checkpoints, 1 validation
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = read_checkpoint(run / "checkpoint.pt")["step"]
    assert 8 <= saved < STEPS and not (run / "model.pt").exists()

    resumed = _finetune("--resume", str(run), "--threads", "1", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {saved}" in (run / "train.log").read_text()
    sessions = json.loads((run / "metadata.json").read_text())["sessions"]  # the code of each session
    assert [s["from_step"] for s in sessions] == [0, saved] and len({s["commit"] for s in sessions}) == 1
    _assert_same_weights(straight, run)
    assert (straight / "postprocessing.json").read_text() == (run / "postprocessing.json").read_text()


def test_sigterm_saves_a_checkpoint_says_so_and_resumes_to_the_same_weights(tmp_path, straight):
    """A scheduler's SIGTERM ends the current step, writes checkpoint.pt there (not only at the last
    --checkpoint-every), prints how to continue and exits 143; --resume then ends as a straight run."""
    run = tmp_path / "stopped"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "anatosynth", "finetune", *TINY, "--out", str(run)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and _last_logged_step(run / "train.log") < 5:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    step = read_checkpoint(run / "checkpoint.pt")["step"]
    assert 5 <= step < STEPS and not (run / "model.pt").exists()
    assert err.strip().splitlines()[-1] == (f"anatosynth finetune: stopped by SIGTERM at step {step}: checkpoint "
                                            f"saved; continue with anatosynth finetune --resume {run}")

    resumed = _finetune("--resume", str(run), "--threads", "1", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {step}" in (run / "train.log").read_text()
    _assert_same_weights(straight, run)
