"""Pre-training as real processes: 2 ranks under torchrun (gloo, CPU), and kill -9 then --resume."""

from __future__ import annotations

import os
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
TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = ["--mode", "primitives", "--model", "unet", "--feature-size", "4", "--patch", "32", "--batch", "1",
        "--lr", "1e-3", "--warmup", "1", "--log-every", "1", "--image-every", "0", "--device", "cpu",
        "--threads", "1", "--seed", "3", "--trace-indices"]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _trace(run: Path, rank: int = 0) -> dict[int, list[int]]:
    steps = {}
    for line in (run / f"indices-rank{rank}.txt").read_text().splitlines():
        step, *idx = map(int, line.split())
        steps[step] = idx  # a step redone after a crash: the last occurrence is the one that counted
    return steps


def _pretrain(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anatosynth", "pretrain", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_two_gloo_ranks_draw_disjoint_samples_and_rank0_writes(tmp_path):
    run = tmp_path / "ddp"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "anatosynth", "pretrain", *TINY,
           "--batch", "2", "--steps", "3", "--checkpoint-every", "2", "--out", str(run)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _trace(run, 0), _trace(run, 1)
    assert sorted(r0) == sorted(r1) == [1, 2, 3]
    # step t: rank r takes (t*W + r)*B + k
    assert all(r0[s] == [(s - 1) * 4, (s - 1) * 4 + 1] and r1[s] == [(s - 1) * 4 + 2, (s - 1) * 4 + 3] for s in r0)
    assert sorted(sum(r0.values(), []) + sum(r1.values(), [])) == list(range(12))
    files = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metadata.json", "checkpoint.pt", "model.pt", "progress.png", "train.log",
            "tensorboard"} <= files
    state = read_checkpoint(run / "checkpoint.pt")
    assert (state["step"], state["next_index"], state["world_size"]) == (3, 12, 2)
    assert not any(k.startswith("module.") for k in torch.load(run / "model.pt", weights_only=True))
    assert "2 process(es)" in (run / "train.log").read_text()


def test_kill_9_then_resume_continues_the_same_stream(tmp_path):
    steps = "7"
    straight = tmp_path / "straight"
    done = _pretrain(*TINY, "--steps", steps, "--checkpoint-every", "2", "--out", str(straight))
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "anatosynth", "pretrain", *TINY, "--steps", steps,
                             "--checkpoint-every", "2", "--out", str(run)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            trace = run / "indices-rank0.txt"
            if trace.exists() and len(trace.read_text().splitlines()) >= 3:  # mid-way, past one checkpoint
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = read_checkpoint(run / "checkpoint.pt")["step"]
    assert 2 <= saved < int(steps)
    assert not (run / "model.pt").exists()

    resumed = _pretrain("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {saved}" in (run / "train.log").read_text()
    assert _trace(run) == _trace(straight) == {s: [s - 1] for s in range(1, int(steps) + 1)}
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_says_so(tmp_path, sig):
    """Ctrl-C (or SIGTERM) stops at the next step boundary with checkpoint.pt and model.pt, says so, exits 128+sig."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "anatosynth", "pretrain", *TINY, "--steps", "1000",
                             "--checkpoint-every", "1000", "--out", str(run)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        trace = run / "indices-rank0.txt"
        while time.time() < deadline and proc.poll() is None:
            if trace.exists() and len(trace.read_text().splitlines()) >= 2:  # past step 2, far from a checkpoint
                break
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    step = read_checkpoint(run / "checkpoint.pt")["step"]
    assert 2 <= step < 1000 and (run / "model.pt").is_file()
    last = err.strip().splitlines()[-1]
    assert last == (f"anatosynth pretrain: stopped by {signal.Signals(sig).name} at step {step}: checkpoint and "
                    f"model.pt saved; continue with anatosynth pretrain --resume {run}")
    assert err.count("stopped by") == 1  # said once, by the command line (the log file has it too)
    assert "stopped by" in (run / "train.log").read_text()
    if sig == signal.SIGINT:
        resumed = _pretrain("--resume", str(run), "--steps", str(step + 1))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed at step {step}" in (run / "train.log").read_text()
        assert read_checkpoint(run / "checkpoint.pt")["step"] == step + 1
