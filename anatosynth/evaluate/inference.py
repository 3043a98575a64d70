"""A fine-tuned run on real scans: load it, predict with sliding windows, back in each case's original geometry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from anatosynth.errors import InputError
from anatosynth.io import Volume
from anatosynth.options import resolve_device
from anatosynth.transforms.inferer import sliding_probs
from anatosynth.transforms.preprocess import ClassMap, PreparedCase, PreprocessConfig, to_original_grid

if TYPE_CHECKING:
    import torch

__all__ = ["Run", "load_run", "run_weights", "predict_prepared", "read_split"]


@dataclass
class Run:
    """A fine-tuned network with what is needed to use it on new scans."""

    path: Path
    weights: Path
    model: torch.nn.Module
    patch: tuple[int, int, int]
    classes: ClassMap
    preprocess: PreprocessConfig
    metadata: dict


def run_weights(path: str | Path) -> Path:
    """The weights file a run path names: a file as given; a folder's ``model_best.pt`` (best on
    validation), else its ``model.pt`` (final weights; runs from before ``model_best.pt`` kept the best there)."""
    path = Path(path)
    if not path.is_dir():
        return path
    best = path / "model_best.pt"
    return best if best.is_file() else path / "model.pt"


def load_run(path: str | Path, device: str | None = "auto") -> Run:
    """Load a fine-tuned run's weights (:func:`run_weights`) and ``metadata.json`` (``anatosynth finetune``).

    Raises:
        InputError: missing files, or metadata without the fine-tuning fields (class ids, preprocessing).
    """
    from anatosynth.train.checkpoint import load_pretrained

    path = Path(path)
    if not path.exists():
        raise InputError(path, "run folder or weights file not found")
    folder = path if path.is_dir() else path.parent
    weights = run_weights(path)
    model, meta = load_pretrained(weights)
    meta_path = folder / "metadata.json"
    missing = [k for k in ("class_names", "label_ids", "preprocess") if k not in meta]
    if missing:
        raise InputError(meta_path, f"not a fine-tuned run (metadata lacks {', '.join(missing)}); "
                                    "evaluate needs a folder written by 'anatosynth finetune'")
    classes = ClassMap([int(i) for i in meta["label_ids"]], [str(n) for n in meta["class_names"]])
    target = resolve_device(device)
    if target.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True  # one window size: let cuDNN pick its fastest kernels
    model.to(target).eval()
    px, py, pz = (int(p) for p in meta["model"]["patch"])
    return Run(folder, weights, model, (px, py, pz), classes,
               PreprocessConfig.from_dict(meta["preprocess"]), meta)


def predict_prepared(run: Run, case: PreparedCase, overlap: float = 0.5, sw_batch: int = 1) -> Volume:
    """Predict one preprocessed case and return dataset label ids on its original grid."""
    probs = sliding_probs(run.model, case.image, run.patch, overlap, sw_batch)
    index = to_original_grid(probs, case.affine, case.original_shape, case.original_affine)
    return Volume(run.classes.to_ids(index), case.original_affine.copy())


def read_split(folder: str | Path) -> dict | None:
    """The run's ``split.json`` (or None)."""
    path = Path(folder) / "split.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(path, "invalid JSON") from None
