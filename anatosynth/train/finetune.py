"""Fine-tuning on real, labelled scans: the measurement of whether pre-training helped.

This module runs a fine-tuning (:func:`finetune`, :func:`resume_config`); its parts live beside it, one job each:
:mod:`~anatosynth.train.finetune_config` (options, split, file names), :mod:`~anatosynth.train.finetune_data`
(crops and augmentations) and :mod:`~anatosynth.train.finetune_loop` (steps, validation, checkpoints).

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
from pathlib import Path

from anatosynth.errors import ConfigError, InputError
from anatosynth.io import read_dataset
from anatosynth.io.datasets import Dataset
from anatosynth.io.volume import atomic_write_text
from anatosynth.train.finetune_config import (
    FINETUNE_VERSION,
    FinetuneConfig,
    FinetunePaths,
    make_split,
    reviewer_split,
)
from anatosynth.train.finetune_data import lateralised
from anatosynth.train.finetune_loop import _Loop, class_dice
from anatosynth.train.models import ModelSpec
from anatosynth.transforms.preprocess import ClassMap, PreparedCase, PreprocessConfig, modality_kind, prepare_cases

__all__ = ["FinetuneConfig", "FinetunePaths", "make_split", "reviewer_split", "finetune", "resume_config", "class_dice",
           "lateralised", "FINETUNE_VERSION"]

log = logging.getLogger("anatosynth.finetune")

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


