"""Fine-tuning's loop: steps, the pre-trained tensors' own schedule, validation (sliding-window Dice on the
validation cases), checkpoints that resume bit-exact, and the stop on a signal."""

from __future__ import annotations

import logging
import sys
import time
import warnings

import numpy as np

from anatosynth.errors import InputError, Interrupted
from anatosynth.options import bar_disable
from anatosynth.train.finetune_config import FinetuneConfig, FinetunePaths
from anatosynth.train.finetune_data import (
    _augmentations,
    _batch,
    _crop_source,
    _sampler_state,
    _set_sampler_state,
    lateralised,
)
from anatosynth.train.models import ModelSpec
from anatosynth.train.stopping import StopOnSignal
from anatosynth.transforms.preprocess import ClassMap, PreparedCase

__all__ = ["class_dice"]

log = logging.getLogger("anatosynth.finetune")

def class_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class index (NaN where the class is absent from both)."""
    out = []
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        denom = int(p.sum()) + int(r.sum())
        out.append(float("nan") if denom == 0 else 2.0 * int((p & r).sum()) / denom)
    return out


def _validate(model, cases: list[PreparedCase], cfg: FinetuneConfig,
              classes: ClassMap) -> tuple[float, list[float], dict]:
    """Mean foreground Dice over validation cases on the canonical grid (NaN classes excluded).

    Also returns the largest-connected-component decision taken on the same predictions.
    """
    from anatosynth.transforms.inferer import sliding_probs
    from anatosynth.transforms.postprocess import decide_largest_component, keep_largest_component

    model.eval()
    per_case, per_case_lcc = [], []
    foreground = range(1, classes.num_classes)
    for case in cases:
        assert case.label is not None, case.name  # validation cases come with their label maps
        pred = sliding_probs(model, case.image, cfg.patch, cfg.overlap, cfg.sw_batch).argmax(0).numpy()
        per_case.append(class_dice(pred, case.label, classes.num_classes))
        per_case_lcc.append(class_dice(keep_largest_component(pred, foreground), case.label, classes.num_classes))
    model.train()
    arr = np.asarray(per_case, dtype=np.float64)
    with warnings.catch_warnings():  # all-NaN columns (class absent everywhere) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class = np.nanmean(arr, axis=0) if arr.size else np.full(classes.num_classes - 1, np.nan)
    mean = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else 0.0
    decision = decide_largest_component(per_case, per_case_lcc, classes.names[1:])
    return mean, [float(v) for v in per_class], decision


# ------------------------------------------------------------------------------------------- run folder
def _pretrained_schedule(cfg: FinetuneConfig):
    """Learning-rate multiplier of the pre-trained tensors: 0 while frozen, then their own warm-up and
    cosine over the remaining steps, times ``pretrained_lr_scale``."""
    from anatosynth.train.schedule import warmup_cosine

    frozen, scale = int(cfg.freeze_pretrained_steps), float(cfg.pretrained_lr_scale)
    warmup = min(cfg.warmup_steps, max(0, cfg.steps - frozen - 1))

    def multiplier(step: int) -> float:
        return 0.0 if step < frozen else scale * warmup_cosine(step - frozen, warmup, cfg.steps - frozen)

    return multiplier


class _Loop:
    """The optimisation loop with periodic validation, best-weights keeping and resumable checkpoints."""

    def __init__(self, cfg: FinetuneConfig, model, train: list[PreparedCase], val: list[PreparedCase],
                 classes: ClassMap, paths: FinetunePaths, device, pretrained: set[str] | None = None):
        import torch
        from monai.losses import DiceCELoss

        from anatosynth.train.schedule import build_scheduler

        self.cfg, self.model, self.val, self.classes, self.paths, self.device = cfg, model, val, classes, paths, device
        self.sources = [_crop_source(c, cfg.patch) for c in train]
        seq = np.random.SeedSequence(cfg.seed)
        case_seed, aug_seed = seq.spawn(2)
        self.rng = np.random.default_rng(case_seed)
        self.flip_lr = not lateralised(classes.names)
        self.pipeline = _augmentations(cfg, int(aug_seed.generate_state(1)[0]), self.flip_lr)
        # tensors transferred from --init may train on their own schedule (lower rate; frozen at first, as in
        # linear-probing-then-fine-tuning): a second parameter group, only when asked for (bytes unchanged else)
        named, keys = list(model.named_parameters()), pretrained or set()
        self.frozen_params = [p for n, p in named if n in keys]
        if self.frozen_params:
            fresh = [p for n, p in named if n not in keys]
            groups = [{"params": fresh}, {"params": self.frozen_params}]
            self.optimiser = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
            self.scheduler = build_scheduler(self.optimiser, cfg.warmup_steps, cfg.steps,
                                             extra=[_pretrained_schedule(cfg)])
        else:
            self.optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            self.scheduler = build_scheduler(self.optimiser, cfg.warmup_steps, cfg.steps)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # one patch size: let cuDNN pick its fastest kernels
        self.step, self.best, self.best_step = 0, -1.0, 0
        self.history = torch.zeros((0, 3), dtype=torch.float64)  # step, mean loss since last row, lr
        self.validation: list[dict] = []  # {"step", "dice", "per_class"}
        self.decisions: dict[str, dict] = {}  # weights file name -> post-processing decision
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_n = 0
        self.metadata: dict = {}

    # -- checkpoints
    def _state(self) -> dict:
        import json

        import torch

        from anatosynth.train.checkpoint import CHECKPOINT_FORMAT

        state = {"format": CHECKPOINT_FORMAT, "kind": "finetune", "step": self.step,
                 "model_spec": self.metadata["model"], "class_names": list(self.classes.names),
                 "model": self.model.state_dict(), "optimizer": self.optimiser.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
                 "rng_cases": json.dumps(self.rng.bit_generator.state), "rng_crops": _sampler_state(self.pipeline),
                 "best": float(self.best), "best_step": int(self.best_step), "history": self.history.clone(),
                 "validation": json.dumps(self.validation), "decisions": json.dumps(self.decisions),
                 "loss_sum": self.loss_sum.detach().cpu().clone(), "loss_n": int(self.loss_n)}
        if self.cuda:
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save_checkpoint(self) -> None:
        from anatosynth.train.checkpoint import _torch_save

        _torch_save(self.paths.checkpoint, self._state())

    def restore(self) -> None:
        """Load ``checkpoint.pt`` into the model, optimiser, scheduler, RNGs and bookkeeping."""
        import json

        import torch

        from anatosynth.train.checkpoint import check_compatible, load_state_strict, read_checkpoint

        path = self.paths.checkpoint
        state = read_checkpoint(path)
        if state.get("kind") != "finetune":
            raise InputError(path, "not a fine-tuning checkpoint (a pre-training one?)")
        spec = ModelSpec(self.cfg.model, 1, self.classes.num_classes, self.cfg.feature_size, self.cfg.patch)
        check_compatible(state["model_spec"], state.get("class_names"), spec, self.classes.names, path)
        load_state_strict(self.model, state["model"], path)
        try:
            self.optimiser.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.rng.bit_generator.state = json.loads(state["rng_cases"])
            _set_sampler_state(self.pipeline, state["rng_crops"], path)
            self.step, self.best, self.best_step = int(state["step"]), float(state["best"]), int(state["best_step"])
            self.history = state["history"].to(torch.float64)
            self.validation, self.decisions = json.loads(state["validation"]), json.loads(state["decisions"])
            self.loss_sum = state["loss_sum"].to(self.device, torch.float64)
            self.loss_n = int(state["loss_n"])
        except (ValueError, KeyError, RuntimeError, TypeError) as err:
            raise InputError(path, f"checkpoint does not fit this run ({err.__class__.__name__}: {err})") from None
        torch.set_rng_state(state["rng_cpu"])
        if self.cuda and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    # -- files
    def write_metadata(self, **extra) -> None:
        from anatosynth.train.checkpoint import write_json

        write_json(self.paths.metadata, {**self.metadata, "steps_done": self.step, "best_step": self.best_step,
                                         "best_val_dice": self.best if self.best >= 0 else None,
                                         "best_weights": self.paths.best.name, "final_weights": self.paths.model.name,
                                         **extra})

    def write_postprocessing(self) -> None:
        from anatosynth.train.checkpoint import write_json

        write_json(self.paths.postprocessing, {"weights": self.decisions})

    def write_progress(self) -> None:
        from anatosynth.train.progress import write_progress_png

        write_progress_png(self.paths.progress, self.history.numpy(), "fine-tuning",
                           [[v["step"], v["dice"]] for v in self.validation])

    # -- the loop
    def _one_step(self):
        import torch

        image, label = _batch(self.pipeline, self.sources[int(self.rng.integers(len(self.sources)))])
        if self.frozen_params:  # frozen tensors get no gradient (no backward through them, no Adam state)
            train_them = self.step >= self.cfg.freeze_pretrained_steps
            for p in self.frozen_params:
                p.requires_grad_(train_them)
        if self.cuda:  # pinned host memory: the copies overlap with work already queued on the GPU
            image = image.pin_memory().to(self.device, non_blocking=True)
            label = label.pin_memory().to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            logits = self.model(image)
        loss = self.loss_fn(logits.float(), label)  # the loss in fp32 whatever the forward pass ran in
        lr = float(self.optimiser.param_groups[0]["lr"])
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.scheduler.step()
        self.step += 1
        self.loss_sum += loss.detach().to(torch.float64)  # stays on the device: no sync per step
        self.loss_n += 1
        return lr

    def _log_loss(self, writer, lr: float) -> float:
        import torch

        mean = float(self.loss_sum) / max(self.loss_n, 1)  # the one device->host read per log interval
        self.loss_sum.zero_()
        self.loss_n = 0
        self.history = torch.cat([self.history, torch.tensor([[self.step, mean, lr]], dtype=torch.float64)])
        writer.add_scalar("train/loss", mean, self.step)
        writer.add_scalar("train/lr", lr, self.step)
        return mean

    def _validate(self, writer, loss: float) -> None:
        from anatosynth.train.checkpoint import save_model

        dice, per_class, decision = _validate(self.model, self.val, self.cfg, self.classes)
        self.validation.append({"step": self.step, "dice": dice,
                                "per_class": [v if np.isfinite(v) else None for v in per_class]})
        writer.add_scalar("val/dice", dice, self.step)
        for name, value in zip(self.classes.names[1:], per_class):
            if np.isfinite(value):
                writer.add_scalar(f"val/dice_{name}", value, self.step)
        log.info("step %d loss %.4f val dice %.4f (%s)", self.step, loss, dice,
                 ", ".join(f"{n} {v:.3f}" for n, v in zip(self.classes.names[1:], per_class)))
        decision = {**decision, "step": self.step, "val_dice": dice}
        if dice > self.best:
            self.best, self.best_step = dice, self.step
            save_model(self.paths.best, self.model)
            self.decisions[self.paths.best.name] = decision
            self.write_postprocessing()
            self.write_metadata()
        if self.step == self.cfg.steps:
            self.decisions[self.paths.model.name] = decision

    def run(self, writer, progress: bool, stop_at: int | None) -> None:
        from tqdm import tqdm

        from anatosynth.train.checkpoint import save_model

        cfg = self.cfg
        if not self.flip_lr:
            log.info("left/right classes present: no flips along the left-right axis")
        self.model.train()
        start, start_step, saved = time.time(), self.step, self.step
        said_eta = False
        stop = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="fine-tuning", unit="step", disable=bar_disable(progress))
        with StopOnSignal("finetune") as stopper:
            try:
                while self.step < stop:
                    lr = self._one_step()
                    bar.update(1)
                    validate = self.step % cfg.val_every == 0 or self.step == cfg.steps
                    loss = None
                    if validate or self.step % cfg.log_every == 0:
                        loss = self._log_loss(writer, lr)
                        bar.set_postfix(loss=f"{loss:.3f}", best=f"{max(self.best, 0):.3f}")
                    if validate and loss is not None:  # (validation steps always log the loss)
                        self._validate(writer, loss)
                    elif loss is not None:
                        log.info("step %d loss %.4f", self.step, loss)
                    if loss is not None and not said_eta and self.step < cfg.steps:  # once, at the first log
                        from anatosynth.train.progress import estimate_line

                        said_eta = True
                        line, _ = estimate_line(self.step - start_step, cfg.steps - start_step,
                                                time.time() - start, self.device.type)
                        log.info("%s", line)
                        tqdm.write(f"finetune: {line}", file=sys.stderr)
                    if self.step % cfg.checkpoint_every == 0 or self.step == stop or stopper.requested:
                        self.save_checkpoint()
                        saved = self.step
                    if stopper.requested and self.step < cfg.steps:
                        self.write_progress()
                        message = (f"stopped by {stopper.signal_name} at step {self.step}: checkpoint saved; continue "
                                   f"with anatosynth finetune --resume {self.paths.root}")
                        log.info("%s", message)
                        raise stopper.interrupted(message)
            except Interrupted:
                raise
            except BaseException as err:
                where = (f"the last checkpoint (step {saved})" if self.paths.checkpoint.exists()
                         else "step 0 (no checkpoint was written yet)")
                message = (f"stopped by {type(err).__name__} at step {self.step}; 'anatosynth finetune "
                           f"--resume {self.paths.root}' continues from {where}")
                log.info("%s", message)
                print(f"fine-tuning {message}", file=sys.stderr)
                raise
            finally:
                bar.close()
        self.write_progress()
        if self.step < cfg.steps:
            log.info("stopped at step %d of %d; continue with --resume %s", self.step, cfg.steps, self.paths.root)
            return
        save_model(self.paths.model, self.model)
        self.write_postprocessing()
        self.write_metadata(seconds=round(time.time() - start, 1), steps_this_session=self.step - start_step)
        log.info("done: best val dice %.4f at step %d; %s (best), %s (final) and %s in %s", self.best,
                 self.best_step, self.paths.best.name, self.paths.model.name, self.paths.postprocessing.name,
                 self.paths.root)
