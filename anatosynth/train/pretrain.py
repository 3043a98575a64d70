"""Supervised pre-training of a MONAI network on the synthetic stream: the loop.

One optimiser step: a DataLoader (:func:`~anatosynth.train.stream_index.step_loader`) hands over this
rank's sample parameters (drawn in worker processes on CUDA), the batch is rendered **on the training
device** in one batched ``apply`` (no host-to-device copies of images; on CUDA while the previous step
runs, by :class:`~anatosynth.synth.ahead.RenderAhead` on a side stream), the network runs under bf16
autocast on CUDA, DiceCE loss, AdamW, linear warm-up + cosine decay. Under ``torchrun`` the network is
wrapped in DistributedDataParallel and every rank draws disjoint samples; rank 0 alone writes the run
folder (:mod:`anatosynth.train.run_folder`).

Which samples a step uses is one integer, ``next_index`` (:mod:`anatosynth.train.stream_index`).
Checkpoints store it; a resumed run continues the stream exactly (nothing repeated or skipped).
SIGINT/SIGTERM end the current step, write a checkpoint and ``model.pt`` and raise
:class:`~anatosynth.errors.Interrupted`, whose message says what was saved.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anatosynth.errors import ConfigError, InputError, Interrupted
from anatosynth.io.nnunet import NnUNetPlan
from anatosynth.io.volume import atomic_write_text, check_output_dir, ensure_writable_dir
from anatosynth.synth.ahead import RenderAhead
from anatosynth.train.checkpoint import (
    check_compatible,
    load_state_strict,
    read_checkpoint,
    save_checkpoint,
    save_model,
    write_json,
)
from anatosynth.train.config import PretrainConfig
from anatosynth.train.distributed import (
    DistContext,
    all_mean,
    barrier,
    broadcast_flag,
    init_distributed,
    shutdown,
    wrap_model,
)
from anatosynth.train.models import build_model, place_model
from anatosynth.train.nnunet import DeepSupervisionLoss, network_input, to_anatosynth_axes
from anatosynth.train.progress import write_progress_png
from anatosynth.train.run_folder import (
    RunPaths,
    bank_hash,
    close_logger,
    jsonable,
    resume_config,
    run_sessions,
    setup_logger,
    versions,
)
from anatosynth.train.schedule import build_scheduler
from anatosynth.train.stopping import StopOnSignal
from anatosynth.train.stream_index import (
    StepBatches,
    auto_workers,
    batch_indices,
    build_stream,
    load_bank_for,
    pool_index,
    step_loader,
)

# RunPaths, resume_config, bank_hash, batch_indices, pool_index and build_stream live in run_folder and
# stream_index; they stay importable from here for the callers that know them by this module.
__all__ = ["pretrain", "PretrainResult", "RunPaths", "resume_config", "bank_hash", "batch_indices", "pool_index",
           "build_stream"]


@dataclass
class PretrainResult:
    """What a finished (or time-limited) run reports back."""

    out: Path
    step: int
    steps_per_s: float
    last_loss: float
    class_names: list[str]



def _slice_images(image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor, num_classes: int):
    """Middle axial slices of sample 0 as [1, H, W] tensors in [0, 1] (image, label, prediction)."""
    z = image.shape[-1] // 2
    img = image[0, 0, :, :, z].detach().float().cpu()
    lab = label[0, :, :, z].detach().float().cpu() / max(1, num_classes - 1)
    pred = logits[0, :, :, :, z].detach().float().argmax(0).float().cpu() / max(1, num_classes - 1)
    return [t.T.flip(0)[None] for t in (img, lab, pred)]  # x right, y up


class _Trainer:
    """State of one run in one process; :meth:`run` is the loop."""

    def __init__(self, cfg: PretrainConfig, ctx: DistContext, resume: bool, bank=None, stream=None,
                 echo: bool | None = None):
        self.cfg = cfg
        self.ctx = ctx
        self.device = self.ctx.device
        self.stopper = StopOnSignal("pretrain", announce=ctx.is_main)
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
        self.spacing = [float(v) for v in getattr(stream, "spacing", ())]  # mm per synthetic voxel (x, y, z)
        self.class_names = list(stream.class_names)
        self.spec = cfg.model_spec(int(stream.num_classes))
        self.plan = NnUNetPlan.from_dict(cfg.nnunet) if cfg.nnunet else None  # pre-training for nnU-Net
        torch.manual_seed(cfg.seed)
        model = place_model(build_model(self.spec), self.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, cfg.steps)
        self.step, self.next_index = 0, 0
        self.history = torch.zeros((0, 4), dtype=torch.float64)  # step, loss, lr, steps/s
        self.resumed_from: int | None = None
        self.saved_step: int | None = None  # step of the checkpoint on disk (None: none yet)
        self.sessions: list[dict] = []  # the code of each session of the run: start step, commit (metadata)
        if resume:
            self._restore(model)
            self.saved_step = self.step
        if self.ctx.is_main:  # only now: bad input above leaves no folder behind
            ensure_writable_dir(self.paths.root)
        barrier(self.ctx)
        self.model = wrap_model(model, self.ctx)
        self.net = model
        self.echo = (not sys.stderr.isatty()) if echo is None else echo
        self.log = setup_logger(self.paths, self.ctx, self.echo)
        self.writer: Any = None  # TensorBoard SummaryWriter on rank 0, during run()
        from monai.losses import DiceCELoss

        self.loss_fn: torch.nn.Module = DiceCELoss(to_onehot_y=True, softmax=True)
        if self.plan is not None:  # nnU-Net's networks return one output per decoder stage
            self.loss_fn = DeepSupervisionLoss(self.loss_fn)
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        self.workers = auto_workers(cfg, self.device, self.ctx.world_size)
        self.batches: RenderAhead | None = None  # drawn and rendered batches, during run()

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

    def _say_estimate(self, done: int, seconds: float) -> None:
        """Log (and print, on rank 0) the estimated time left, with a warning for a long CPU run."""
        from tqdm import tqdm

        from anatosynth.train.progress import estimate_line

        limit = self.cfg.minutes * 60 - seconds if self.cfg.minutes is not None else None
        line, _ = estimate_line(done, self.cfg.steps - (self.step - done), seconds, self.device.type, limit)
        self.log.info("%s", line)  # echoed as "pretrain: ..." when the log goes to the console
        if self.ctx.is_main and not self.echo:
            tqdm.write(f"pretrain: {line}", file=sys.stderr)

    def _pictures(self, image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor) -> list[torch.Tensor]:
        """Middle axial slices for TensorBoard; an nnU-Net batch back in anatosynth's axes, its image rescaled."""
        if self.plan is not None:
            image, label, logits = (to_anatosynth_axes(t, self.plan) for t in (image, label, logits))
            low, high = image.amin(), image.amax()
            image = (image - low) / (high - low).clamp_min(1e-8)
        return _slice_images(image, label, logits, len(self.class_names))

    def _check_spacing(self) -> None:
        """Warn when the stream's voxels differ from the plans' target spacing by more than a quarter."""
        assert self.plan is not None
        have = self.spacing
        want = self.plan.anatosynth_spacing()
        if have and any(abs(h - w) > 0.25 * w for h, w in zip(have, want)):
            self.log.warning("the synthetic patches have %s mm voxels, the plans %s mm (x, y, z): organs will span "
                             "other voxel counts than in the target's data; build the bank with --spacing %s",
                             tuple(have), want, ",".join(f"{w:g}" for w in want))

    def _write_static_files(self) -> None:
        """config.yaml and metadata.json (rank 0), before the first step; this session joins the run's list
        of sessions (start step, commit), which a model card reports as the code that trained the weights."""

        import yaml

        text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        atomic_write_text(self.paths.config, text)
        self.sessions = run_sessions(self.paths.metadata, self.step, self.resumed_from is not None)
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
            "spacing_mm": self.spacing or None,
            "seed": self.cfg.seed,
            "samples": self.cfg.samples,
            "steps_done": int(self.step),
            "steps": self.cfg.steps,
            "samples_seen": int(self.next_index),
            "world_size": self.ctx.world_size,
            "versions": versions(),
            "sessions": self.sessions,
            "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        write_json(self.paths.metadata, jsonable(meta))

    def _save_checkpoint(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.paths.checkpoint, model=self.net, optimizer=self.optimizer,
                            scheduler=self.scheduler, step=self.step, next_index=self.next_index,
                            world_size=self.ctx.world_size, spec=self.spec, class_names=self.class_names,
                            history=self.history, device=self.device)
        barrier(self.ctx)
        self.saved_step = self.step

    # -- SIGINT / SIGTERM (StopOnSignal): stop at the next step boundary with a checkpoint
    def _stop_requested(self) -> bool:
        return broadcast_flag(self.stopper.requested, self.ctx)

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
    def _one_step(self):
        cfg = self.cfg
        assert self.batches is not None
        # drawn ahead by the loader's workers (or here, without workers), rendered in one batched apply on
        # the training device: on CUDA by RenderAhead's thread on a side stream while the last step ran
        params, batch = next(self.batches)
        idx = [p.index for p in params]
        image, label = batch.image, batch.label
        if self.plan is not None:  # nnU-Net's axis order, patch and intensity normalisation
            image, label = network_input(image, label, self.plan)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(image)
        if self.plan is not None:
            loss = self.loss_fn(logits, label)
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits  # full resolution, for images
        else:
            loss = self.loss_fn(logits.float(), label.unsqueeze(1))
        self.lr_used = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.next_index += self.ctx.world_size * cfg.batch
        return idx, (image, label), logits, loss

    def run(self, stop_at: int | None = None) -> PretrainResult:
        from tqdm.auto import tqdm

        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self._write_static_files()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.paths.tensorboard), purge_step=self.step or None)
        barrier(ctx)
        if self.plan is not None:
            self._check_spacing()
        start_step = self.step
        self.log.info(f"resumed at step {self.step} (sample {self.next_index})" if self.resumed_from
                      is not None else "start at step 0")
        network = (f"nnU-Net {self.plan.network_class.rpartition('.')[2]} of {self.plan.plans_name} "
                   f"{self.plan.configuration} ({self.plan.normalization[0]})" if self.plan is not None
                   else f"{cfg.model} f{cfg.feature_size}")
        patch = "x".join(map(str, cfg.patch))
        if self.plan is not None:
            patch += " cropped to " + "x".join(map(str, self.plan.patch_size)) + " (nnU-Net axes)"
        self.log.info("%s patch %s batch %d x %d process(es) on %s (%d CPU threads), %d classes, %d steps, "
                      "mode %s render %s, %d draw worker(s)", network, patch, cfg.batch, ctx.world_size, self.device,
                      self.threads, len(self.class_names), cfg.steps, cfg.mode, cfg.render, self.workers)
        stop = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        sampler = StepBatches(self.next_index, ctx.rank, ctx.world_size, cfg.batch, stop - self.step,
                              cfg.samples, cfg.seed)
        self.batches = RenderAhead(step_loader(self.stream, sampler, self.workers),
                                   lambda params: self.stream.apply(params, self.device), self.device)
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True, disable=None,
                   desc="pretrain") if ctx.is_main else None
        trace = open(self.paths.indices(ctx.rank), "a") if cfg.trace_indices else None
        t0 = time.perf_counter()
        t_log, s_log = t0, self.step
        loss_sum = torch.zeros((), device=self.device)
        n_sum = 0
        last_loss, rate = float("nan"), 0.0
        last_ckpt = self.step
        said_eta = False
        with self.stopper:
            try:
                while self.step < stop:
                    idx, (image, label), logits, loss = self._one_step()
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
                        if not said_eta and self.step < cfg.steps:
                            said_eta = True  # once, after the first logged steps of this session
                            self._say_estimate(self.step - start_step, now - t0)
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
                                             self._pictures(image, label, logits)):
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
                if self.stopper.signum is not None:
                    name = self.stopper.signal_name
                    message = (f"stopped by {name} at step {self.step}: checkpoint and model.pt saved; continue "
                               f"with anatosynth pretrain --resume {self.paths.root}")
                    self.log.info("%s", message, extra={"file_only": True})  # the CLI prints it once
                    close_logger(self.log)
                    raise self.stopper.interrupted(message)
            except Interrupted:
                raise
            except BaseException as err:
                message = f"stopped by {err.__class__.__name__} at step {self.step}; {self._saved_note()}"
                self.log.info("%s", message)
                close_logger(self.log)
                if isinstance(err, KeyboardInterrupt):
                    raise self.stopper.interrupted(message) from None
                raise
            finally:
                if self.batches is not None:
                    self.batches.close()  # the render thread and the loader's workers stop
                self.batches = None
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
        close_logger(self.log)
        return PretrainResult(out=self.paths.root, step=self.step, steps_per_s=overall, last_loss=last_loss,
                              class_names=self.class_names)


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
