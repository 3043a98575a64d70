"""Fine-tuning on real, labelled scans: the measurement of whether pre-training helped.

Recipe (MONAI's SwinUNETR BTCV recipe, scaled to a step budget):

* cases are preprocessed once (:mod:`anatosynth.transforms.preprocess`) and kept in memory;
* each step draws one training case (seeded) and ``crops`` patches from it, balanced 1:1 between
  foreground and background centres (``RandCropByPosNegLabeld``), padded when the volume is smaller
  than the patch; random flips on each axis (p 0.2; none along the left-right axis when a class name
  says left or right), rot90 in the axial plane (p 0.2, square patches only), intensity scale and
  shift of 0.1 (p 0.1 each);
* DiceCE loss, AdamW (lr 1e-4, weight decay 1e-5), linear warm-up then cosine decay;
* every ``val_every`` steps (and at the end) sliding-window Dice on the validation cases; the best
  weights are kept as ``model_best.pt``, the final ones as ``model.pt``; on the same predictions the
  run decides, per class, whether keeping the largest connected component helps
  (:mod:`anatosynth.transforms.postprocess`, recorded in ``postprocessing.json``).

The run folder is pre-training's (:class:`~anatosynth.train.pretrain.RunPaths`): ``config.yaml`` (the
resolved options), ``checkpoint.pt`` every ``checkpoint_every`` steps (model, optimiser, scheduler, the
torch, case-choice and crop/augmentation RNG states, step, best score, loss and validation history),
``model.pt`` (final weights) and ``metadata.json``, ``progress.png``, ``train.log``, ``tensorboard/``;
plus ``model_best.pt``, ``split.json``, ``postprocessing.json`` and ``transfer.json``. ``finetune
--resume RUN`` continues from ``checkpoint.pt``; on the CPU the result is bit-identical to an
uninterrupted run.

On CUDA the forward pass runs under bf16 autocast (loss in fp32), cuDNN picks its fastest kernels
(fixed patch size), crops go to the GPU from pinned memory and the loss is read back only when logged.
Crop centres come from foreground/background indices computed once per case (MONAI's
``fg_indices_key``), not from a scan of the whole label map at every step.

The split (:mod:`anatosynth.io.splits`) is, by default, three disjoint sets of the labelled cases: a fixed
**test** set (the evaluation set: scored, never used for a choice), a **validation** set (its first
``val_max_cases`` choose the checkpoint and the post-processing) and a training **pool**, from ``--split
FILE`` or made from the case names alone; ``train_cases`` cases are drawn from the pool by ``seed``, distinct
for consecutive seeds until the pool is used up. ``split.json`` records all of it. Naming the evaluation set
instead (``val_cases``, or a datalist's ``validation`` list) keeps the earlier, BTCV-recipe split: the
validation cases are the first ``val_max_cases`` of the evaluation set, so their Dice is part of it (the
exploratory cpu-long protocols used it; their reports leave the validation cases out of test Dice).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from anatosynth.errors import ConfigError, InputError, Interrupted
from anatosynth.io import read_dataset
from anatosynth.io.datasets import Case, Dataset
from anatosynth.io.volume import atomic_write_text
from anatosynth.options import parse_patch
from anatosynth.train.models import ModelSpec
from anatosynth.train.pretrain import RunPaths  # the run-folder names shared with pre-training
from anatosynth.train.stopping import StopOnSignal
from anatosynth.transforms.preprocess import ClassMap, PreparedCase, PreprocessConfig, modality_kind, prepare_cases

__all__ = ["FinetuneConfig", "FinetunePaths", "make_split", "reviewer_split", "finetune", "resume_config", "class_dice",
           "lateralised"]

log = logging.getLogger("anatosynth.finetune")

# Bumped whenever fine-tuning or evaluation changes its results for unchanged options (experiment job keys hash it).
FINETUNE_VERSION = 2  # 2: evaluation applies the largest-component post-processing chosen on validation


@dataclass
class FinetuneConfig:
    """All options of one fine-tuning run (saved, resolved, as config.yaml in the run folder)."""

    data: str
    out: str
    init: str = "none"
    model: str = "swinunetr"
    feature_size: int = 48
    patch: tuple[int, int, int] = (96, 96, 96)
    steps: int = 1000
    train_cases: int | None = None
    val_cases: list[str] | None = None
    split: str | None = None
    labels: str | None = None
    seed: int = 0
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    modality: str | None = None
    window: tuple[float, float] = (-175.0, 250.0)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup: int | None = None
    pretrained_lr_scale: float = 1.0
    freeze_pretrained_steps: int = 0
    crops: int = 2
    val_every: int = 100
    val_max_cases: int = 4
    overlap: float = 0.25
    sw_batch: int = 1
    checkpoint_every: int = 100
    log_every: int = 10
    device: str = "auto"
    overwrite: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.patch = parse_patch(self.patch, what="patch")  # 96, "96,96,32", (96, 96, 32): as every verb reads it
        for name in ("steps", "crops", "val_every", "val_max_cases", "sw_batch", "checkpoint_every", "log_every"):
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
        if self.pretrained_lr_scale < 0:
            raise ConfigError(f"--pretrained-lr-scale must be at least 0, got {self.pretrained_lr_scale}")
        if not 0 <= self.freeze_pretrained_steps < self.steps:
            raise ConfigError(f"--freeze-pretrained-steps must be in [0, steps), got {self.freeze_pretrained_steps}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict, source: str | Path) -> FinetuneConfig:
        """Rebuild from a saved ``config.yaml`` (lists back to tuples); unknown keys name the file."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(source, f"unknown fine-tuning options: {', '.join(unknown)}")
        try:
            d = {k: tuple(v) if k in ("patch", "spacing", "window") and v is not None else v for k, v in d.items()}
            return cls(**d)
        except TypeError as err:
            raise InputError(source, f"not a fine-tuning config ({err})") from None

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup) if self.warmup is not None else min(self.steps // 10, 100)

    @property
    def splits_pretrained(self) -> bool:
        """Whether the tensors transferred from ``init`` train on their own schedule (a second param group)."""
        return self.init.lower() != "none" and (self.pretrained_lr_scale != 1.0 or self.freeze_pretrained_steps > 0)


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


def reviewer_split(cases: list[Case], train_cases: int | None, seed: int, split_file: str | None = None,
                   val_max_cases: int = 4) -> dict:
    """The default split (see module docstring): test / validation / pool from ``split_file`` or from the case
    names, and ``train_cases`` drawn from the pool by ``seed``.

    Returns:
        ``split.json``'s contents: ``train``, ``eval`` (= ``test``), ``val`` (the validation cases used),
        ``test``, ``validation``, ``pool``, ``draw`` (group and number of groups) and ``scheme``.
    """
    from anatosynth.io.splits import draw_labelled, load_split
    from anatosynth.io.splits import make_split as default_split

    labelled = [c.name for c in cases if c.label is not None and c.image is not None]
    sets = load_split(split_file, labelled) if split_file else default_split(labelled)
    missing = [n for n in sets.test + sets.validation + sets.pool if n not in labelled]
    if missing:
        raise InputError(split_file, f"names {len(missing)} case(s) without an image and a label: {missing[0]}")
    if train_cases is not None and train_cases > len(sets.pool):
        raise ConfigError(f"--train-cases {train_cases}, but the training pool holds {len(sets.pool)} of the "
                          f"{len(labelled)} labelled cases ({len(sets.test)} test, {len(sets.validation)} "
                          f"validation); train on fewer, or give a --split file with a larger pool")
    draw = draw_labelled(sets.pool, train_cases, seed)
    return {"seed": int(seed), "train": draw["train"], "eval": list(sets.test), "val": sets.validation[:val_max_cases],
            "test": list(sets.test), "validation": list(sets.validation), "pool": list(sets.pool),
            "draw": {"group": draw["group"], "groups": draw["groups"]},
            "scheme": f"split file {Path(split_file).name}" if split_file else sets.method}


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

    Works on :func:`_crop_source` dictionaries (padded volumes with precomputed foreground/background
    indices). ``flip_left_right=False`` drops flips along the first (RAS left-right) axis, which would
    turn a left organ into a right one while its label still says left.
    """
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        Transform,
    )

    keys = ["image", "label"]
    steps: list[Transform] = [RandCropByPosNegLabeld(keys, label_key="label", spatial_size=cfg.patch, pos=1, neg=1,
                                                num_samples=cfg.crops, allow_smaller=False,
                                                fg_indices_key="fg_indices", bg_indices_key="bg_indices"),
                              *([RandFlipd(keys, prob=0.2, spatial_axis=0)] if flip_left_right else []),
                              RandFlipd(keys, prob=0.2, spatial_axis=1), RandFlipd(keys, prob=0.2, spatial_axis=2)]
    if cfg.patch[0] == cfg.patch[1]:
        steps.append(RandRotate90d(keys, prob=0.2, max_k=3, spatial_axes=(0, 1)))
    steps += [RandScaleIntensityd("image", factors=0.1, prob=0.1),
              RandShiftIntensityd("image", offsets=0.1, prob=0.1)]
    pipeline = Compose(steps)  # padding is not random: done once per case in _crop_source
    pipeline.set_random_state(seed=seed)
    return pipeline


def _plain(x):
    """A MONAI MetaTensor (or array) as a plain torch tensor."""
    import torch

    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _crop_source(case: PreparedCase, patch) -> dict:
    """A case padded to at least ``patch`` with its foreground/background voxel indices, computed once.

    The same indices ``RandCropByPosNegLabeld`` would compute from the label at every step, so the crops
    are unchanged; the per-step cost no longer grows with the volume.
    """
    import torch
    from monai.transforms import SpatialPadd
    from monai.transforms.utils import map_binary_to_indices

    assert case.label is not None, case.name  # training cases come with their label maps
    # MONAI's transforms take numpy arrays as well (NdarrayOrTensor); the signature only names Tensor
    padded = SpatialPadd(["image", "label"], spatial_size=patch, mode="constant")(
        {"image": case.image[None], "label": case.label[None].astype(np.float32)})  # type: ignore[dict-item]

    image, label = _plain(padded["image"]).contiguous(), _plain(padded["label"]).contiguous()
    # on the float map, as MONAI would (not on integers: there its `~` is a bitwise not and every voxel would
    # count as background); tensors in, tensors out
    fg, bg = map(torch.as_tensor, map_binary_to_indices(label, None, 0.0))
    small = torch.uint8 if int(case.label.max(initial=0)) < 256 else torch.int16  # memory per case
    if label.numel() < 2**31:
        fg, bg = fg.to(torch.int32), bg.to(torch.int32)
    return {"image": image, "label": label.to(small), "fg_indices": fg, "bg_indices": bg}


def _batch(pipeline, source: dict):
    """Crops of one case (a :func:`_crop_source`) as (N,1,...) image and label tensors."""
    import torch

    samples = pipeline(dict(source))
    if isinstance(samples, dict):
        samples = [samples]

    image = torch.stack([_plain(s["image"]) for s in samples]).float()
    label = torch.stack([_plain(s["label"]) for s in samples]).round().long()
    return image, label


# ------------------------------------------------------------------------------------------- RNG states
def _randomizables(pipeline) -> list:
    """Every MONAI ``Randomizable`` of the pipeline (transforms and the randomisers they hold), in a fixed order."""
    from monai.transforms import Randomizable

    found = []
    for t in pipeline.transforms:
        if isinstance(t, Randomizable):
            found.append(t)
        found += [v for _, v in sorted(vars(t).items()) if isinstance(v, Randomizable)]
    return found


def _sampler_state(pipeline) -> list[dict]:
    """The numpy RandomState of each randomiser, as tensors and numbers (loadable with weights_only)."""
    import torch

    out = []
    for r in _randomizables(pipeline):
        _, keys, pos, has_gauss, gauss = r.R.get_state()
        out.append({"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                    "gauss": float(gauss)})
    return out


def _set_sampler_state(pipeline, states: list[dict], path: Path) -> None:
    found = _randomizables(pipeline)
    if len(found) != len(states):
        raise ConfigError(f"{path}: checkpoint holds {len(states)} crop/augmentation RNG states, this run has "
                          f"{len(found)} (different augmentation pipeline)")
    for r, s in zip(found, states):
        r.R.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))


# ------------------------------------------------------------------------------------------- validation
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
class FinetunePaths(RunPaths):
    """Pre-training's run folder names plus the files only fine-tuning writes."""

    @property
    def best(self) -> Path:
        return self.root / "model_best.pt"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def postprocessing(self) -> Path:
        from anatosynth.transforms.postprocess import POSTPROCESSING_FILE

        return self.root / POSTPROCESSING_FILE

    @property
    def transfer(self) -> Path:
        return self.root / "transfer.json"

    def run_files(self) -> list[Path]:
        """The files a run writes (what ``--overwrite`` removes first; ``tensorboard/`` is appended to)."""
        return [self.config, self.checkpoint, self.model, self.best, self.metadata, self.split,
                self.postprocessing, self.transfer, self.progress, self.log]


def _check_out(paths: FinetunePaths, overwrite: bool, resume: bool) -> None:
    """Refuse a file, or a folder holding a run unless resuming or ``overwrite`` (checked before any work)."""
    from anatosynth.io.volume import check_output_dir

    out = paths.root
    check_output_dir(out)
    if resume:
        if not paths.config.is_file():
            raise InputError(out, "not a fine-tuning run folder (no config.yaml); nothing to resume")
        return
    held = [p.name for p in paths.run_files() if p.exists() and p != paths.log]
    if not held:
        return
    if overwrite:
        for p in paths.run_files():
            p.unlink(missing_ok=True)
        return
    if paths.model.exists():
        raise InputError(out, f"already holds a finished fine-tuning run ({', '.join(held)}); choose a new --out "
                              "or pass --overwrite")
    state = "with a checkpoint" if paths.checkpoint.exists() else "stopped before its first checkpoint"
    raise InputError(out, f"already holds an unfinished fine-tuning run ({state}: {', '.join(held)}); continue it "
                          f"with --resume {out}, choose a new --out or pass --overwrite")


def resume_config(run: str | Path) -> FinetuneConfig:
    """The saved, resolved config of the fine-tuning run in ``run`` (its ``out`` set to ``run``)."""
    import yaml

    paths = FinetunePaths(Path(run))
    _check_out(paths, False, resume=True)
    try:
        saved = yaml.safe_load(paths.config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(paths.config, f"invalid YAML ({err.__class__.__name__})") from None
    if not isinstance(saved, dict):
        raise InputError(paths.config, "not a fine-tuning config (expected a mapping of options)")
    cfg = FinetuneConfig.from_dict(saved, paths.config)
    cfg.out = str(paths.root)
    return cfg


def _attach_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "train.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _dataset_and_classes(cfg: FinetuneConfig) -> tuple[Dataset, ClassMap, PreprocessConfig]:
    dataset = read_dataset(cfg.data, cfg.labels).require_images("finetune")
    classes = ClassMap.from_labels(dataset.labels)
    pre = PreprocessConfig(modality_kind(cfg.modality or dataset.modality), cfg.spacing, cfg.window)
    return dataset, classes, pre


def _missing_classes(cases: list[PreparedCase], classes: ClassMap) -> dict[str, list[str]]:
    return {c.name: [classes.names[i] for i in range(1, classes.num_classes) if i not in c.present]
            for c in cases if len(c.present) < classes.num_classes}


def finetune(cfg: FinetuneConfig, progress: bool = True, resume: bool = False, stop_at: int | None = None) -> Path:
    """Run (or, with ``resume``, continue) one fine-tuning (see module docstring); returns the run folder.

    ``stop_at`` stops after that step as an interruption would (checkpoint written, no final files), for tests.

    Raises:
        InputError / ConfigError: bad dataset, split, checkpoint or options (nothing is written then).
    """
    import torch
    import yaml
    from torch.utils.tensorboard import SummaryWriter

    from anatosynth.io.volume import ensure_writable_dir
    from anatosynth.options import resolve_device
    from anatosynth.train.checkpoint import write_json
    from anatosynth.train.models import build_model, place_model
    from anatosynth.train.run_folder import run_sessions
    from anatosynth.train.transfer import transfer_weights

    paths = FinetunePaths(Path(cfg.out))
    _check_out(paths, cfg.overwrite, resume)
    device = resolve_device(cfg.device)
    dataset, classes, pre = _dataset_and_classes(cfg)
    # a datalist's own "validation" list is the evaluation set unless --val-cases says otherwise
    listed = [c.name for c in dataset.cases if c.split == "validation" and c.label is not None]
    if cfg.split and (cfg.val_cases or listed):
        raise ConfigError("--split and " + ("--val-cases" if cfg.val_cases else "the datalist's validation list")
                          + " both name the evaluation set; give one")
    if cfg.val_cases or listed:  # an evaluation set named: the earlier split (validation inside evaluation)
        split = make_split(dataset.cases, cfg.train_cases, cfg.seed, cfg.val_cases or listed, cfg.val_max_cases)
    else:
        split = reviewer_split(dataset.cases, cfg.train_cases, cfg.seed, cfg.split, cfg.val_max_cases)
    by_name = {c.name: c for c in dataset.cases}
    train = prepare_cases([by_name[n] for n in split["train"]], pre, classes, "preprocessing train", progress)
    val = prepare_cases([by_name[n] for n in split["val"]], pre, classes, "preprocessing val", progress)
    if not any(c.label is not None and c.label.any() for c in train):
        raise InputError(dataset.root, "the training cases hold no foreground voxels at all")

    spec = ModelSpec(cfg.model, 1, classes.num_classes, cfg.feature_size, cfg.patch)
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    report = None
    resuming = resume and paths.checkpoint.is_file()
    if cfg.init.lower() != "none" and not resuming:
        def rebuild(n: int):
            return build_model(ModelSpec(spec.name, spec.in_channels, n, spec.feature_size, spec.patch))
        report = transfer_weights(model, cfg.init, rebuild=rebuild, new_class_names=classes.names,
                                  spec=spec.to_dict())
    place_model(model, device)
    pretrained = _pretrained_keys(cfg, report, paths)
    loop = _Loop(cfg, model, train, val, classes, paths, device, pretrained)
    if resuming:
        loop.restore()  # bad checkpoint: error before anything is written
    out = ensure_writable_dir(paths.root)
    handler = _attach_log(out)
    writer = SummaryWriter(str(paths.tensorboard), purge_step=loop.step or None)
    try:
        if not paths.config.exists():
            atomic_write_text(paths.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_json(paths.split, {**split, "dataset": str(dataset.root), "classes": classes.names})
        log.info("device %s; torch threads %d", device, torch.get_num_threads())
        log.info("dataset %s (%s, %s): %d train, %d eval, %d val cases; classes %s", dataset.name,
                 dataset.layout, pre.modality, len(split["train"]), len(split["eval"]), len(split["val"]),
                 ", ".join(classes.names[1:]))
        for name, absent in _missing_classes(train + val, classes).items():
            log.info("case %s lacks %s (trained/validated without them)", name, ", ".join(absent))
        if report is not None:
            report.write(paths.transfer)
            log.info("%s", report.summary())
            from tqdm import tqdm

            tqdm.write(report.summary())
        if resume:
            said = (f"resumed at step {loop.step}" if resuming else
                    "resume: no checkpoint was written yet, starting at step 0")
            log.info(said)
            from tqdm import tqdm

            tqdm.write(f"finetune: {said}")  # on the console too: a restart from 0 is never silent
        loop.metadata = {"kind": "finetune", "model": spec.to_dict(), "class_names": classes.names,
                         "label_ids": classes.ids, "preprocess": pre.to_dict(), "dataset": dataset.name,
                         "init": cfg.init, "seed": cfg.seed, "steps": cfg.steps,
                         "sessions": run_sessions(paths.metadata, loop.step, resuming)}
        loop.write_metadata()
        loop.run(writer, progress, stop_at)
    finally:
        writer.close()
        log.removeHandler(handler)
        handler.close()
    return out


def _pretrained_keys(cfg: FinetuneConfig, report, paths: FinetunePaths) -> set[str]:
    """The model tensors transferred from ``cfg.init`` (for their own learning rate / frozen warm-up): from
    this run's transfer report, or, when resuming, from the ``transfer.json`` it wrote."""
    import json

    if not cfg.splits_pretrained:
        return set()
    if report is not None:
        return set(report.transferred)
    try:
        return set(json.loads(paths.transfer.read_text())["transferred"])
    except (OSError, ValueError, KeyError) as err:
        raise InputError(paths.transfer, f"cannot tell which tensors were pre-trained ({err.__class__.__name__}); "
                                         "--pretrained-lr-scale/--freeze-pretrained-steps need it") from None


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
        bar = tqdm(total=cfg.steps, initial=self.step, desc="fine-tuning", unit="step", disable=not progress)
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
                        line, _ = estimate_line("finetune", self.step - start_step, cfg.steps - start_step,
                                                time.time() - start, self.device.type)
                        log.info("%s", line)
                        tqdm.write(line, file=sys.stderr)
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
