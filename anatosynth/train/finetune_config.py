"""What a fine-tuning run is: its options (:class:`FinetuneConfig`), its split of the labelled cases and the
names of its files (:class:`FinetunePaths`). The recipe and the split rules: :mod:`anatosynth.train.finetune`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from anatosynth.errors import ConfigError, InputError
from anatosynth.io.datasets import Case
from anatosynth.options import parse_patch
from anatosynth.train.pretrain import RunPaths  # the run-folder names shared with pre-training

__all__ = ["FINETUNE_VERSION", "FinetuneConfig", "FinetunePaths", "make_split", "reviewer_split"]

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


