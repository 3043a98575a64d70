"""Fine-tuning on real, labelled scans: the measurement of whether pre-training helped.

Recipe (MONAI's SwinUNETR BTCV recipe, scaled to a step budget):

* cases are preprocessed once (:mod:`anatosynth.train.preprocess`) and kept in memory;
* each step draws one training case (seeded) and ``crops`` patches from it, balanced 1:1 between
  foreground and background centres (``RandCropByPosNegLabeld``), padded when the volume is smaller
  than the patch; random flips on each axis (p 0.2; none along the left-right axis when a class name
  says left or right), rot90 in the axial plane (p 0.2, square patches only), intensity scale and
  shift of 0.1 (p 0.1 each);
* DiceCE loss, AdamW (lr 1e-4, weight decay 1e-5), linear warm-up then cosine decay;
* every ``val_every`` steps (and at the end) sliding-window Dice on the validation cases; the best
  weights are kept as ``model.pt`` (``last.pt`` holds the final ones).

The split is deterministic: ``train_cases`` cases drawn by ``seed`` from the labelled cases (those not
named by ``val_cases``); the others (or exactly ``val_cases``) form the evaluation set, whose first
``val_max_cases`` (in seeded order) are the validation cases used for checkpoint selection — as in the
BTCV recipe, validation cases are part of the evaluation set.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from anatosynth.errors import ConfigError, InputError
from anatosynth.io import read_dataset
from anatosynth.io.datasets import Case, Dataset
from anatosynth.io.volume import atomic_write_text
from anatosynth.train.models import ModelSpec
from anatosynth.train.preprocess import ClassMap, PreparedCase, PreprocessConfig, prepare_cases

__all__ = ["FinetuneConfig", "make_split", "finetune", "class_dice", "lateralised"]

log = logging.getLogger("anatosynth.finetune")

# Bumped whenever fine-tuning or evaluation changes its results for unchanged options (experiment job keys hash it).
FINETUNE_VERSION = 1


@dataclass
class FinetuneConfig:
    """All options of one fine-tuning run (saved as config.yaml/config.json in the run folder)."""

    data: str
    out: str
    init: str = "none"
    model: str = "swinunetr"
    feature_size: int = 48
    patch: tuple[int, int, int] = (96, 96, 96)
    steps: int = 1000
    train_cases: int | None = None
    val_cases: list[str] | None = None
    seed: int = 0
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    modality: str | None = None
    window: tuple[float, float] = (-175.0, 250.0)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup: int | None = None
    crops: int = 2
    val_every: int = 100
    val_max_cases: int = 4
    overlap: float = 0.25
    sw_batch: int = 1
    device: str = "auto"
    overwrite: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.patch = tuple(int(p) for p in self.patch)  # type: ignore[assignment]
        if len(self.patch) != 3 or min(self.patch) < 8:
            raise ConfigError(f"patch must be three sizes of at least 8, got {self.patch}")
        for name in ("steps", "crops", "val_every", "val_max_cases", "sw_batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.train_cases is not None and self.train_cases < 1:
            raise ConfigError(f"--train-cases must be at least 1, got {self.train_cases}")
        if self.model in ("unet", "dynunet") and any(p % 16 for p in self.patch):
            raise ConfigError(f"{self.model} needs a patch divisible by 16 (four 2x downsamplings), got {self.patch}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup) if self.warmup is not None else min(self.steps // 10, 100)


def make_split(cases: list[Case], train_cases: int | None, seed: int,
               val_cases: list[str] | None = None, val_max_cases: int = 4) -> dict:
    """Deterministic train / evaluation split of the labelled cases.

    Returns:
        ``{"seed", "train", "eval", "val"}`` with case names; ``val`` ⊆ ``eval`` selects checkpoints.

    Raises:
        ConfigError: unknown ``val_cases``, or no training or no evaluation case left.
    """
    labelled = [c.name for c in cases if c.label is not None and c.image is not None]
    if len(set(labelled)) != len(labelled):
        raise ConfigError("the dataset has duplicate case names; cannot split by name")
    order = [labelled[i] for i in np.random.default_rng(np.random.SeedSequence(seed)).permutation(len(labelled))]
    if val_cases:
        unknown = [n for n in val_cases if n not in labelled]
        if unknown:
            raise ConfigError(f"--val-cases not among the labelled cases: {', '.join(unknown)}")
        pool = [n for n in order if n not in set(val_cases)]
        evaluation = list(val_cases)
    else:
        pool, evaluation = order, None
    k = len(pool) if train_cases is None else int(train_cases)
    if not pool:
        raise ConfigError(f"no training cases left after the split ({len(labelled)} labelled cases, "
                          f"all used for evaluation)")
    if evaluation is None:
        if train_cases is None:
            k = max(1, len(pool) - max(1, len(pool) // 5))
        if k >= len(pool):
            raise ConfigError(f"--train-cases {k} leaves no evaluation case: the dataset has only "
                              f"{len(pool)} labelled cases (use at most {len(pool) - 1}, or --val-cases)")
        evaluation = pool[k:]
    elif k > len(pool):
        raise ConfigError(f"--train-cases {k} but only {len(pool)} labelled cases remain after --val-cases")
    train = pool[:k]
    return {"seed": int(seed), "train": train, "eval": evaluation, "val": evaluation[:val_max_cases]}


def class_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class index (NaN where the class is absent from both)."""
    out = []
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        denom = int(p.sum()) + int(r.sum())
        out.append(float("nan") if denom == 0 else 2.0 * int((p & r).sum()) / denom)
    return out


def lateralised(names: list[str]) -> bool:
    """True when some class is one side of a pair (its name says left or right)."""
    return any(w in ("left", "right") for n in names for w in n.lower().replace("-", "_").replace(" ", "_").split("_"))


def _augmentations(cfg: FinetuneConfig, seed: int, flip_left_right: bool = True):
    """The BTCV-recipe crop and augmentation pipeline (MONAI dictionary transforms), seeded.

    ``flip_left_right=False`` drops flips along the first (RAS left-right) axis, which would turn a left
    organ into a right one while its label still says left.
    """
    from monai.transforms import (Compose, RandCropByPosNegLabeld, RandFlipd, RandRotate90d,
                                  RandScaleIntensityd, RandShiftIntensityd, SpatialPadd)

    keys = ["image", "label"]
    steps = [SpatialPadd(keys, spatial_size=cfg.patch, mode="constant"),
             RandCropByPosNegLabeld(keys, label_key="label", spatial_size=cfg.patch, pos=1, neg=1,
                                    num_samples=cfg.crops, allow_smaller=False),
             *([RandFlipd(keys, prob=0.2, spatial_axis=0)] if flip_left_right else []),
             RandFlipd(keys, prob=0.2, spatial_axis=1), RandFlipd(keys, prob=0.2, spatial_axis=2)]
    if cfg.patch[0] == cfg.patch[1]:
        steps.append(RandRotate90d(keys, prob=0.2, max_k=3, spatial_axes=(0, 1)))
    steps += [RandScaleIntensityd("image", factors=0.1, prob=0.1),
              RandShiftIntensityd("image", offsets=0.1, prob=0.1)]
    pipeline = Compose(steps)
    pipeline.set_random_state(seed=seed)
    return pipeline


def _batch(pipeline, case: PreparedCase):
    """Crops of one case as (N,1,...) image and label tensors."""
    import torch

    samples = pipeline({"image": case.image[None], "label": case.label[None].astype(np.float32)})
    if isinstance(samples, dict):
        samples = [samples]
    def plain(x):
        return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)

    image = torch.stack([plain(s["image"]) for s in samples]).float()
    label = torch.stack([plain(s["label"]) for s in samples]).round().long()
    return image, label


def _validate(model, cases: list[PreparedCase], cfg: FinetuneConfig, classes: ClassMap) -> tuple[float, list[float]]:
    """Mean foreground Dice over validation cases on the canonical grid (NaN classes excluded)."""
    from anatosynth.evaluate.inference import sliding_probs

    model.eval()
    per_case = []
    for case in cases:
        probs = sliding_probs(model, case.image, cfg.patch, cfg.overlap, cfg.sw_batch)
        per_case.append(class_dice(probs.argmax(0).numpy(), case.label, classes.num_classes))
    model.train()
    arr = np.asarray(per_case, dtype=np.float64)
    with warnings.catch_warnings():  # all-NaN columns (class absent everywhere) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class = np.nanmean(arr, axis=0) if arr.size else np.full(classes.num_classes - 1, np.nan)
    mean = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else 0.0
    return mean, [float(v) for v in per_class]


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a folder holding a run unless ``overwrite`` (checked before any work)."""
    from anatosynth.io.volume import check_output_dir

    check_output_dir(out)
    if out.is_dir() and any((out / n).exists() for n in ("model.pt", "metadata.json", "split.json")) and not overwrite:
        raise InputError(out, "already holds a run (model.pt/metadata.json); choose a new --out or pass --overwrite")


def _attach_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "train.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _dataset_and_classes(cfg: FinetuneConfig) -> tuple[Dataset, ClassMap, PreprocessConfig]:
    dataset = read_dataset(cfg.data).require_images("finetune")
    classes = ClassMap.from_labels(dataset.labels)
    pre = PreprocessConfig(cfg.modality or dataset.modality, cfg.spacing, cfg.window)
    return dataset, classes, pre



def _missing_classes(cases: list[PreparedCase], classes: ClassMap) -> dict[str, list[str]]:
    return {c.name: [classes.names[i] for i in range(1, classes.num_classes) if i not in c.present]
            for c in cases if len(c.present) < classes.num_classes}


def finetune(cfg: FinetuneConfig, progress: bool = True) -> Path:
    """Run one fine-tuning (see module docstring) and return the run folder.

    Raises:
        InputError / ConfigError: bad dataset, split, checkpoint or options (nothing is written then).
    """
    import torch
    import yaml
    from monai.losses import DiceCELoss
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from anatosynth.evaluate.inference import resolve_device
    from anatosynth.io.volume import ensure_writable_dir
    from anatosynth.train.checkpoint import save_model, write_json
    from anatosynth.train.models import build_model
    from anatosynth.train.schedule import build_scheduler
    from anatosynth.train.transfer import transfer_weights

    _check_out(Path(cfg.out), cfg.overwrite)
    device = resolve_device(cfg.device)
    dataset, classes, pre = _dataset_and_classes(cfg)
    # a datalist's own "validation" list is the evaluation set unless --val-cases says otherwise
    listed = [c.name for c in dataset.cases if c.split == "validation" and c.label is not None]
    split = make_split(dataset.cases, cfg.train_cases, cfg.seed, cfg.val_cases or listed or None, cfg.val_max_cases)
    by_name = {c.name: c for c in dataset.cases}
    train = prepare_cases([by_name[n] for n in split["train"]], pre, classes, "preprocessing train", progress)
    val = prepare_cases([by_name[n] for n in split["val"]], pre, classes, "preprocessing val", progress)
    if not any(c.label.any() for c in train):
        raise InputError(dataset.root, "the training cases hold no foreground voxels at all")

    spec = ModelSpec(cfg.model, 1, classes.num_classes, cfg.feature_size, cfg.patch)
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    report = None
    if cfg.init.lower() != "none":
        def rebuild(n: int):
            return build_model(ModelSpec(spec.name, spec.in_channels, n, spec.feature_size, spec.patch))
        report = transfer_weights(model, cfg.init, rebuild=rebuild, new_class_names=classes.names,
                                  spec=spec.to_dict())

    model.to(device)
    out = ensure_writable_dir(Path(cfg.out))
    handler = _attach_log(out)
    writer = SummaryWriter(str(out / "tensorboard"))
    try:
        config = cfg.to_dict()
        write_json(out / "config.json", config)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        write_json(out / "split.json", {**split, "dataset": str(dataset.root), "classes": classes.names})
        log.info("device %s; torch threads %d", device, torch.get_num_threads())
        log.info("dataset %s (%s, %s): %d train, %d eval, %d val cases; classes %s", dataset.name,
                 dataset.layout, pre.modality, len(split["train"]), len(split["eval"]), len(split["val"]),
                 ", ".join(classes.names[1:]))
        for name, absent in _missing_classes(train + val, classes).items():
            log.info("case %s lacks %s (trained/validated without them)", name, ", ".join(absent))
        if report is not None:
            report.write(out / "transfer.json")
            log.info("%s", report.summary())
            tqdm.write(report.summary())
        metadata = {"kind": "finetune", "model": spec.to_dict(), "class_names": classes.names,
                    "label_ids": classes.ids, "preprocess": pre.to_dict(), "dataset": dataset.name,
                    "init": cfg.init, "seed": cfg.seed}
        _train_loop(cfg, model, train, val, classes, out, writer, metadata,
                    DiceCELoss(to_onehot_y=True, softmax=True), build_scheduler, save_model, write_json, progress,
                    device)
    finally:
        writer.close()
        log.removeHandler(handler)
        handler.close()
    return out


def _train_loop(cfg, model, train, val, classes, out, writer, metadata, loss_fn, build_scheduler,
                save_model, write_json, progress, device) -> None:
    """The optimisation loop with periodic validation and best-checkpoint keeping."""
    import torch
    from tqdm import tqdm

    seq = np.random.SeedSequence(cfg.seed)
    case_seed, aug_seed = seq.spawn(2)
    rng = np.random.default_rng(case_seed)
    flip_lr = not lateralised(classes.names)
    if not flip_lr:
        log.info("left/right classes present: no flips along the left-right axis")
    pipeline = _augmentations(cfg, int(aug_seed.generate_state(1)[0]), flip_lr)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = build_scheduler(optimiser, cfg.warmup_steps, cfg.steps)
    best, best_step = -1.0, 0
    model.train()
    start = time.time()
    bar = tqdm(range(1, cfg.steps + 1), desc="fine-tuning", unit="step", disable=not progress)
    for step in bar:
        image, label = _batch(pipeline, train[int(rng.integers(len(train)))])
        image, label = image.to(device), label.to(device)
        loss = loss_fn(model(image), label)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        loss_value = float(loss.detach())
        writer.add_scalar("train/loss", loss_value, step)
        writer.add_scalar("train/lr", optimiser.param_groups[0]["lr"], step)
        bar.set_postfix(loss=f"{loss_value:.3f}", best=f"{max(best, 0):.3f}")
        if step % cfg.val_every == 0 or step == cfg.steps:
            dice, per_class = _validate(model, val, cfg, classes)
            writer.add_scalar("val/dice", dice, step)
            for name, value in zip(classes.names[1:], per_class):
                if np.isfinite(value):
                    writer.add_scalar(f"val/dice_{name}", value, step)
            log.info("step %d loss %.4f val dice %.4f (%s)", step, loss_value, dice,
                     ", ".join(f"{n} {v:.3f}" for n, v in zip(classes.names[1:], per_class)))
            if dice > best:
                best, best_step = dice, step
                save_model(out / "model.pt", model)
                write_json(out / "metadata.json", {**metadata, "best_step": best_step, "best_val_dice": best,
                                                   "steps": cfg.steps})
        elif step % 10 == 0:
            log.info("step %d loss %.4f", step, loss_value)
    save_model(out / "last.pt", model)
    write_json(out / "metadata.json", {**metadata, "best_step": best_step, "best_val_dice": best,
                                       "steps": cfg.steps, "seconds": round(time.time() - start, 1)})
    log.info("done: best val dice %.4f at step %d; model.pt (best) and last.pt in %s", best, best_step, out)
