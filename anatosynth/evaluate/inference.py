"""Sliding-window inference of a fine-tuned run on real scans, back in each case's original geometry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anatosynth.errors import InputError
from anatosynth.io import Volume
from anatosynth.train.preprocess import ClassMap, PreparedCase, PreprocessConfig, to_original_grid

__all__ = ["Run", "load_run", "resolve_device", "sliding_probs", "predict_prepared", "read_split"]


@dataclass
class Run:
    """A fine-tuned network with what is needed to use it on new scans."""

    path: Path
    model: "torch.nn.Module"
    patch: tuple[int, int, int]
    classes: ClassMap
    preprocess: PreprocessConfig
    metadata: dict


def resolve_device(name: str | None = "auto") -> "torch.device":
    """``auto`` → the first CUDA GPU when there is one, else the CPU; otherwise the named device."""
    import torch

    from anatosynth.errors import ConfigError

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA GPU is available")
    return device


def load_run(path: str | Path, device: str | None = "auto") -> Run:
    """Load ``RUN/model.pt`` and ``RUN/metadata.json`` written by ``anatosynth finetune``.

    Raises:
        InputError: missing files, or metadata without the fine-tuning fields (class ids, preprocessing).
    """
    from anatosynth.train.checkpoint import load_pretrained

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not folder.exists():
        raise InputError(path, "run folder not found")
    model, meta = load_pretrained(path)
    meta_path = folder / "metadata.json"
    missing = [k for k in ("class_names", "label_ids", "preprocess") if k not in meta]
    if missing:
        raise InputError(meta_path, f"not a fine-tuned run (metadata lacks {', '.join(missing)}); "
                                    "evaluate needs a folder written by 'anatosynth finetune'")
    classes = ClassMap([int(i) for i in meta["label_ids"]], [str(n) for n in meta["class_names"]])
    model.to(resolve_device(device)).eval()
    return Run(folder, model, tuple(int(p) for p in meta["model"]["patch"]), classes,
               PreprocessConfig.from_dict(meta["preprocess"]), meta)


def sliding_probs(model, image: np.ndarray, patch, overlap: float = 0.5, sw_batch: int = 1,
                  progress: bool = False) -> "torch.Tensor":
    """Softmax probabilities (C, X, Y, Z) of ``model`` over a whole canonical image.

    Uses MONAI's ``sliding_window_inference`` with Gaussian blending; images smaller than the patch are
    padded by MONAI and cropped back.
    """
    import torch
    from monai.inferers import sliding_window_inference

    device = next(model.parameters()).device
    x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)[None, None].to(device)
    with torch.no_grad():
        logits = sliding_window_inference(x, tuple(int(p) for p in patch), int(sw_batch), model,
                                          overlap=float(overlap), mode="gaussian", progress=progress)
        logits = logits.as_tensor() if hasattr(logits, "as_tensor") else logits
        return torch.softmax(logits[0].float(), dim=0).cpu()


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
