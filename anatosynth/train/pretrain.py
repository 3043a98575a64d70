"""Supervised pre-training of a MONAI network on the synthetic stream.

One optimiser step: the synthetic stream renders this rank's batch **on the training device** (no data
loader, no host-to-device copies), the network runs under bf16 autocast on CUDA, DiceCE loss, AdamW,
linear warm-up + cosine decay. Under ``torchrun`` the network is wrapped in DistributedDataParallel and
every rank draws disjoint samples; rank 0 alone writes the run folder.

Stream position: sample ``i`` of seed ``s`` is bit-identical whatever batch it lands in, so the position
is one integer, ``next_index``. At each step rank ``r`` of ``W`` takes samples
``next_index + r*B + k`` (k < B) and ``next_index`` grows by ``W*B``; with ``samples=N`` sample ``i`` is
replaced by ``pool_index(i)``, a fresh permutation of the fixed pool ``0..N-1`` on every pass (the pool is
not cached: samples are re-rendered from their index, bit-identical, so memory does not grow with N).
Checkpoints store ``next_index``; a resumed run continues the stream exactly (nothing repeated or skipped).
SIGINT/SIGTERM end the current step, write a checkpoint and ``model.pt`` and raise
:class:`~anatosynth.errors.Interrupted`, whose message says what was saved.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anatosynth.errors import ConfigError, InputError, Interrupted
from anatosynth.io.volume import atomic_write_text, check_output_dir, ensure_writable_dir
from anatosynth.train.checkpoint import (check_compatible, load_state_strict, read_checkpoint, save_checkpoint,
                                         save_model, write_json)
from anatosynth.train.config import RESUME_MUTABLE, PretrainConfig, load_yaml
from anatosynth.train.distributed import (DistContext, all_mean, barrier, broadcast_flag, init_distributed,
                                          shutdown, wrap_model)
from anatosynth.train.models import build_model
from anatosynth.train.progress import write_progress_png
from anatosynth.train.schedule import build_scheduler

__all__ = ["pretrain", "resume_config", "batch_indices", "pool_index", "bank_hash", "RunPaths", "PretrainResult"]

LOGGER_NAME = "anatosynth.pretrain"


# --------------------------------------------------------------------------------------------- files
@dataclass
class RunPaths:
    """The files of a run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def progress(self) -> Path:
        return self.root / "progress.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def indices(self, rank: int) -> Path:
        return self.root / f"indices-rank{rank}.txt"


@dataclass
class PretrainResult:
    """What a finished (or time-limited) run reports back."""

    out: Path
    step: int
    steps_per_s: float
    last_loss: float
    class_names: list[str]


# ---------------------------------------------------------------------------------------- the stream
def batch_indices(next_index: int, rank: int, batch: int) -> list[int]:
    """Stream indices of this rank's batch at stream position ``next_index`` (see module docstring)."""
    start = next_index + rank * batch
    return list(range(start, start + batch))


@functools.lru_cache(maxsize=8)
def _pool_permutation(samples: int, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0x9001]))
    return rng.permutation(samples)


def pool_index(index: int, samples: int | None, seed: int) -> int:
    """Map a stream index onto the fixed pool ``0..samples-1``: each pass over the pool is a new permutation."""
    if samples is None:
        return int(index)
    epoch, pos = divmod(int(index), int(samples))
    return int(_pool_permutation(int(samples), int(seed), epoch)[pos])


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _update_array(h, a) -> None:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def bank_hash(bank, source: str | None) -> str | None:
    """sha256 of the bank file (or folder), or of a canonical serialisation of an in-memory bank (builtin)."""
    if bank is None:
        return None
    if source and not str(source).startswith("builtin:") and Path(source).exists():
        return _file_sha256(Path(source))
    h = hashlib.sha256()
    h.update(json.dumps({"spacing": [float(s) for s in bank.spacing], "subjects": list(bank.subjects),
                         "frame": bank.frame, "version": bank.version}, sort_keys=True).encode())
    for organ in bank.organs:
        h.update(f"organ:{organ.name}:{organ.label}".encode())
        _update_array(h, organ.anchor_mean_mm)
        _update_array(h, organ.anchor_cov_mm)
        for s in organ.shapes:
            h.update(f"shape:{s.subject}:{float(s.volume_ml)!r}".encode())
            _update_array(h, np.asarray(s.mask, dtype=bool))
            for a in (s.origin_mm, s.centroid_mm, s.axes, s.extent_mm):
                _update_array(h, np.asarray(a, dtype=np.float64))
    for e in bank.edges:
        h.update(f"edge:{e.a}:{e.b}:{e.n_subjects}:{float(e.contact)!r}:{float(e.consistency)!r}:"
                 f"{float(e.min_gap_mm)!r}:{e.overlap}".encode())
        for a in (e.direction, e.offset_mean_mm, e.offset_cov_mm):
            _update_array(h, np.asarray(a, dtype=np.float64))
    return h.hexdigest()


def synth_api():
    """``(SynthConfig, SyntheticStream)`` from the synthesis stage."""
    try:
        from anatosynth.synth import SynthConfig, SyntheticStream
    except ImportError:  # package namespace not filled in
        from anatosynth.synth.generator import SynthConfig, SyntheticStream
    return SynthConfig, SyntheticStream


def auto_workers(cfg: PretrainConfig, device: torch.device, world_size: int) -> int:
    """Worker processes that draw sample parameters: none on the CPU (they would compete with the
    training threads), up to 4 per process on CUDA (placement is CPU work, rendering runs on the GPU)."""
    if cfg.workers is not None:
        return int(cfg.workers)
    if device.type != "cuda":
        return 0
    import os

    return int(max(1, min(4, (os.cpu_count() or 2) // max(1, world_size) - 1)))


def load_bank_for(cfg: PretrainConfig):
    """The bank this run synthesises from (None for ``primitives``)."""
    if cfg.mode == "primitives":
        return None
    from anatosynth.bank import load_bank

    return load_bank(cfg.bank)


def build_stream(cfg: PretrainConfig, bank):
    """The synthetic stream of this run: SynthConfig from ``cfg.synth`` plus mode, render and patch."""
    SynthConfig, SyntheticStream = synth_api()
    d = {**cfg.synth, "mode": cfg.mode, "render": cfg.render, "patch": tuple(cfg.patch)}
    try:
        synth_cfg = SynthConfig.from_dict(d)
    except TypeError as err:
        raise ConfigError(f"invalid synth options {sorted(cfg.synth)}: {err}") from None
    return SyntheticStream(bank, synth_cfg, cfg.seed), synth_cfg


# ------------------------------------------------------------------------------------------- resume
def resume_config(run: str | Path, overrides: dict | None = None) -> PretrainConfig:
    """The saved config of ``run`` with the few options that may change on resume (e.g. ``steps``) applied.

    Raises:
        InputError: ``run`` has no config.yaml; ConfigError: a flag tries to change what the run trains.
    """
    paths = RunPaths(Path(run))
    if not paths.config.is_file():
        raise InputError(paths.root, "not a pre-training run folder (no config.yaml); nothing to resume")
    saved = load_yaml(paths.config)
    cfg = PretrainConfig.from_dict(saved, str(paths.config))
    merged = cfg.to_dict()
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in RESUME_MUTABLE:
            current = merged.get(key)
            if key == "patch":
                from anatosynth.train.config import parse_patch

                value = list(parse_patch(value))
            if key == "synth":
                value = {**(current or {}), **value}
            if value != current:
                raise ConfigError(f"--resume {run}: cannot change {key} of an existing run "
                                  f"(saved {current!r}, given {value!r})")
            continue
        merged[key] = value
    merged["out"] = str(paths.root)
    return PretrainConfig.from_dict(merged, str(paths.config))


# ---------------------------------------------------------------------------------------- reporting
def _versions() -> dict:
    import monai

    from anatosynth.version import __version__

    return {"anatosynth": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _setup_logger(paths: RunPaths, ctx: DistContext, echo: bool) -> logging.Logger:
    """File log on rank 0 (appending, so a resumed run keeps its history), echoed to stderr when asked."""
    log = logging.getLogger(f"{LOGGER_NAME}.{paths.root.resolve()}")
    _close_logger(log)  # a run of the same folder earlier in this process
    log.setLevel(logging.INFO)
    log.propagate = False
    if ctx.is_main:
        fh = logging.FileHandler(paths.log, mode="a")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(fh)
        if echo:
            sh = logging.StreamHandler(sys.stderr)
            sh.setFormatter(logging.Formatter("pretrain: %(message)s"))
            log.addHandler(sh)
    else:
        log.addHandler(logging.NullHandler())
    return log


def _close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)


def _slice_images(image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor, num_classes: int):
    """Middle axial slices of sample 0 as [1, H, W] tensors in [0, 1] (image, label, prediction)."""
    z = image.shape[-1] // 2
    img = image[0, 0, :, :, z].detach().float().cpu()
    lab = label[0, :, :, z].detach().float().cpu() / max(1, num_classes - 1)
    pred = logits[0, :, :, :, z].detach().float().argmax(0).float().cpu() / max(1, num_classes - 1)
    return [t.T.flip(0)[None] for t in (img, lab, pred)]  # x right, y up


# ----------------------------------------------------------------------------------------- the loop
class _Trainer:
    """State of one run in one process; :meth:`run` is the loop."""

    def __init__(self, cfg: PretrainConfig, ctx: DistContext, resume: bool, bank=None, stream=None,
                 echo: bool | None = None):
        self.cfg = cfg
        self.ctx = ctx
        self.device = self.ctx.device
        self.paths = RunPaths(Path(cfg.out))
        from anatosynth.options import apply_threads

        self.threads = apply_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._check_out(resume)
        self.bank = bank if bank is not None or stream is not None else load_bank_for(cfg)
        self.synth_cfg = getattr(stream, "config", None)
        if stream is None:
            stream, self.synth_cfg = build_stream(cfg, self.bank)
        self.stream = stream
        self.class_names = list(stream.class_names)
        self.spec = cfg.model_spec(int(stream.num_classes))
        torch.manual_seed(cfg.seed)
        model = build_model(self.spec).to(self.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, cfg.steps)
        self.step, self.next_index = 0, 0
        self.history = torch.zeros((0, 4), dtype=torch.float64)  # step, loss, lr, steps/s
        self.resumed_from = None
        self.saved_step = None  # step of the checkpoint on disk (None: none yet)
        if resume:
            self._restore(model)
            self.saved_step = self.step
        if self.ctx.is_main:  # only now: bad input above leaves no folder behind
            ensure_writable_dir(self.paths.root)
        barrier(self.ctx)
        self.model = wrap_model(model, self.ctx)
        self.net = model
        self.echo = (not sys.stderr.isatty()) if echo is None else echo
        self.log = _setup_logger(self.paths, self.ctx, self.echo)
        self.writer = None
        from monai.losses import DiceCELoss

        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        self.workers = auto_workers(cfg, self.device, self.ctx.world_size)
        self.prefetch = None
        self.ahead = 2 if self.workers else 0

    # -- setup helpers
    def _check_out(self, resume: bool) -> None:
        """A new run needs a folder without trained state; a resumed one needs its checkpoint.

        A folder with only config.yaml and logs (stopped before its first checkpoint) holds nothing to
        lose, so a new run may start there.
        """
        root = self.paths.root
        check_output_dir(root)
        if resume:
            if not self.paths.checkpoint.is_file():
                raise InputError(self.paths.checkpoint, "not found: nothing to resume (the run stopped before "
                                                        "its first checkpoint); start it again with --config "
                                                        f"{self.paths.config} --out {root}")
            return
        if self.paths.checkpoint.exists() or self.paths.model.exists():
            raise ConfigError(f"{root} already holds a run; continue it with --resume "
                              f"{root} or choose another --out")

    def _restore(self, model: torch.nn.Module) -> None:
        state = read_checkpoint(self.paths.checkpoint)
        check_compatible(state["model_spec"], state.get("class_names"), self.spec, self.class_names,
                         self.paths.checkpoint)
        load_state_strict(model, state["model"], self.paths.checkpoint)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise ConfigError(f"{self.paths.checkpoint}: optimizer state does not fit this run ({err})") from None
        self.step = int(state["step"])
        self.next_index = int(state["next_index"])
        self.history = state.get("history", self.history).to(torch.float64)
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.resumed_from = self.step

    def _write_static_files(self) -> None:
        """config.yaml and metadata.json (rank 0), before the first step."""
        import yaml

        text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        atomic_write_text(self.paths.config, text)
        self._write_metadata()

    def _write_metadata(self) -> None:
        meta = {
            "model": self.spec.to_dict(),
            "class_names": self.class_names,
            "mode": self.cfg.mode,
            "render": self.cfg.render,
            "synth": self.synth_cfg.to_dict() if self.synth_cfg is not None else None,
            "bank": self.cfg.bank if self.cfg.mode != "primitives" else None,
            "bank_sha256": bank_hash(self.bank, self.cfg.bank),
            "seed": self.cfg.seed,
            "samples": self.cfg.samples,
            "steps_done": int(self.step),
            "steps": self.cfg.steps,
            "samples_seen": int(self.next_index),
            "world_size": self.ctx.world_size,
            "versions": _versions(),
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(self.paths.metadata, _jsonable(meta))

    def _save_checkpoint(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.paths.checkpoint, model=self.net, optimizer=self.optimizer,
                            scheduler=self.scheduler, step=self.step, next_index=self.next_index,
                            world_size=self.ctx.world_size, spec=self.spec, class_names=self.class_names,
                            history=self.history, device=self.device)
        barrier(self.ctx)
        self.saved_step = self.step

    # -- SIGINT / SIGTERM: stop at the next step boundary with a checkpoint
    def _catch_signals(self) -> dict:
        """Turn the first SIGINT/SIGTERM into a request to stop after the current step (main thread only)."""
        self.stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.stop_signal is not None:  # a second signal: stop at once, as the default would
                raise KeyboardInterrupt
            self.stop_signal = signum
            if self.ctx.is_main:
                print(f"\npretrain: {signal.Signals(signum).name} received: saving a checkpoint after this step "
                      "(send it again to stop at once)", file=sys.stderr, flush=True)

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, handler)
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def _stop_requested(self) -> bool:
        return broadcast_flag(self.stop_signal is not None, self.ctx)

    def _saved_note(self) -> str:
        """What is on disk after a stop, said truthfully."""
        if self.saved_step is None:
            return "nothing was saved (no checkpoint yet); start it again with the same command"
        return (f"the checkpoint of step {self.saved_step} is in {self.paths.root}; continue with "
                f"anatosynth pretrain --resume {self.paths.root}")

    def _finish_files(self) -> None:
        if self.ctx.is_main:
            save_model(self.paths.model, self.net)
            self._write_metadata()
            write_progress_png(self.paths.progress, self.history.numpy(), "synthetic pre-training")
        barrier(self.ctx)

    # -- the loop
    def _indices(self, ahead: int = 0) -> list[int]:
        """This rank's sample indices ``ahead`` steps after the current stream position."""
        cfg = self.cfg
        start = self.next_index + ahead * self.ctx.world_size * cfg.batch
        return [pool_index(i, cfg.samples, cfg.seed) for i in batch_indices(start, self.ctx.rank, cfg.batch)]

    def _one_step(self, stop: int):
        cfg = self.cfg
        idx = self._indices(0)
        if self.ahead and self.step + self.ahead < stop:
            self.prefetch.schedule(self._indices(self.ahead))
        # on CUDA the next batch renders on a side stream while this step runs
        batch = self.prefetch.next_batch(idx, self.device, self._indices(1) if self.step + 1 < stop else None)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(batch.image)
        loss = self.loss_fn(logits.float(), batch.label.unsqueeze(1))
        self.lr_used = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.next_index += self.ctx.world_size * cfg.batch
        return idx, batch, logits, loss

    def run(self, stop_at: int | None = None) -> PretrainResult:
        from tqdm.auto import tqdm

        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self._write_static_files()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.paths.tensorboard), purge_step=self.step or None)
        barrier(ctx)
        start_step = self.step
        self.log.info(("resumed at step %d (sample %d)" % (self.step, self.next_index)) if self.resumed_from
                      is not None else "start at step 0")
        self.log.info("%s f%d patch %s batch %d x %d process(es) on %s (%d CPU threads), %d classes, %d steps, "
                      "mode %s render %s, %d draw worker(s)", cfg.model, cfg.feature_size,
                      "x".join(map(str, cfg.patch)), cfg.batch, ctx.world_size, self.device, self.threads,
                      len(self.class_names), cfg.steps, cfg.mode, cfg.render, self.workers)
        stop = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        from anatosynth.train.prefetch import ParamPrefetcher

        self.prefetch = ParamPrefetcher(self.stream, self.workers)
        for k in range(min(self.ahead, max(0, stop - self.step))):
            self.prefetch.schedule(self._indices(k))
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True, disable=None,
                   desc="pretrain") if ctx.is_main else None
        trace = open(self.paths.indices(ctx.rank), "a") if cfg.trace_indices else None
        t0 = time.perf_counter()
        t_log, s_log = t0, self.step
        loss_sum = torch.zeros((), device=self.device)
        n_sum = 0
        last_loss, rate = float("nan"), 0.0
        last_ckpt = self.step
        previous_handlers = self._catch_signals()
        try:
            while self.step < stop:
                idx, batch, logits, loss = self._one_step(stop)
                loss_sum += loss.detach()
                n_sum += 1
                if trace is not None:
                    trace.write(f"{self.step} " + " ".join(map(str, idx)) + "\n")
                    trace.flush()
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    mean = all_mean(loss_sum / n_sum, ctx)
                    last_loss = float(mean.item())
                    now = time.perf_counter()
                    rate = (self.step - s_log) / max(now - t_log, 1e-9)
                    t_log, s_log = now, self.step
                    lr = self.lr_used
                    loss_sum.zero_()
                    n_sum = 0
                    self.history = torch.cat([self.history, torch.tensor(
                        [[self.step, last_loss, lr, rate]], dtype=torch.float64)])
                    self.log.info("step %d/%d loss %.4f lr %.3g %.3f steps/s", self.step, cfg.steps,
                                  last_loss, lr, rate)
                    if self.writer is not None:
                        self.writer.add_scalar("train/loss", last_loss, self.step)
                        self.writer.add_scalar("train/lr", lr, self.step)
                        self.writer.add_scalar("train/steps_per_s", rate, self.step)
                        self.writer.add_scalar("train/samples_per_s", rate * cfg.batch * ctx.world_size,
                                               self.step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{last_loss:.4f}")
                if (self.writer is not None and cfg.image_every
                        and (self.step % cfg.image_every == 0 or self.step == start_step + 1)):
                    for name, img in zip(("image", "label", "prediction"),
                                         _slice_images(batch.image, batch.label, logits, len(self.class_names))):
                        self.writer.add_image(f"sample/{name}", img, self.step)
                if self.step % cfg.checkpoint_every == 0:
                    self._save_checkpoint()
                    last_ckpt = self.step
                if self._stop_requested():
                    break
                if cfg.minutes is not None:
                    out_of_time = (time.perf_counter() - t0) > cfg.minutes * 60
                    if broadcast_flag(out_of_time, ctx):
                        self.log.info("time limit of %g min reached at step %d", cfg.minutes, self.step)
                        break
            if self.step != last_ckpt:
                self._save_checkpoint()
            self._finish_files()
            if self.stop_signal is not None:
                name = signal.Signals(self.stop_signal).name
                message = (f"stopped by {name} at step {self.step}: checkpoint and model.pt saved; continue "
                           f"with anatosynth pretrain --resume {self.paths.root}")
                self.log.info("%s", message)
                _close_logger(self.log)
                raise Interrupted(message, self.stop_signal)
        except Interrupted:
            raise
        except BaseException as err:
            message = f"stopped by {err.__class__.__name__} at step {self.step}; {self._saved_note()}"
            self.log.info("%s", message)
            _close_logger(self.log)
            if isinstance(err, KeyboardInterrupt):
                raise Interrupted(message, self.stop_signal or signal.SIGINT) from None
            raise
        finally:
            self._restore_signals(previous_handlers)
            self.prefetch.close()
            if bar is not None:
                bar.close()
            if trace is not None:
                trace.close()
            if self.writer is not None:
                self.writer.close()
        if last_loss != last_loss and len(self.history):  # nothing trained this session: report the last logged
            last_loss = float(self.history[-1, 1])
        elapsed = time.perf_counter() - t0
        overall = (self.step - start_step) / max(elapsed, 1e-9)
        self.log.info("done: step %d, %.3f steps/s over this session, weights in %s", self.step, overall,
                      self.paths.model)
        _close_logger(self.log)
        return PretrainResult(out=self.paths.root, step=self.step, steps_per_s=overall, last_loss=last_loss,
                              class_names=self.class_names)


def _jsonable(obj):
    """Tuples → lists, numpy scalars → Python numbers (for metadata.json)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def pretrain(cfg: PretrainConfig, *, resume: bool = False, bank=None, stream=None,
             echo: bool | None = None, stop_at: int | None = None) -> PretrainResult:
    """Run (or continue) a pre-training run described by ``cfg``; see the module docstring.

    Args:
        cfg: resolved configuration (for a resume, from :func:`resume_config`).
        resume: continue from ``cfg.out``'s checkpoint (an InputError when there is none: a run stopped
            before its first checkpoint is started again without ``resume``).
        bank: an already-loaded bank (the demo passes the one it previewed); default: loaded from ``cfg.bank``.
        stream: an already-built synthetic stream (tests); default: built from ``cfg`` and the bank.
        echo: also print log lines to stderr (default: when stderr is not a terminal, i.e. no progress bar).
        stop_at: stop early at this step, as an interruption would (checkpoint written, schedule kept for
            ``cfg.steps``); used to test exact resumption.
    """
    ctx = init_distributed(cfg.device)
    try:
        return _Trainer(cfg, ctx, resume, bank=bank, stream=stream, echo=echo).run(stop_at)
    finally:
        shutdown(ctx)
