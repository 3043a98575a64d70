"""Checkpoints and exported weights, written atomically and read with ``torch.load(weights_only=True)``.

Two kinds of file:

- ``checkpoint.pt``: everything needed to resume: model, optimizer and scheduler state_dicts, the step,
  the stream position (next sample index), the torch RNG state and the loss history. Only tensors,
  numbers, strings, lists and dicts (no pickled objects), so ``weights_only=True`` loads it.
- ``model.pt``: the plain state_dict of the MONAI network (keys exactly MONAI's, DDP's ``module.`` removed),
  with ``metadata.json`` beside it holding the :class:`~anatosynth.train.models.ModelSpec` to rebuild it.

Both go through a temporary sibling and ``os.replace``: a kill at any moment leaves the previous file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from anatosynth.errors import ConfigError, InputError
from anatosynth.io.volume import atomic_write_bytes, atomic_write_text
from anatosynth.train.models import ModelSpec, build_model

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "read_checkpoint", "check_compatible", "save_model",
           "save_nnunet_weights", "load_state_strict", "load_pretrained", "write_json", "describe_spec"]

CHECKPOINT_FORMAT = 1


def write_json(path: str | Path, obj: dict) -> Path:
    """Pretty JSON, written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write_text(path, text)


def _torch_save(path: str | Path, obj) -> Path:
    """``torch.save`` atomically, with the same bytes for the same tensors.

    torch.save names the zip archive's root folder after the file it writes; saving to a temporary file
    would put that random name into the bytes. Serialising into memory fixes the root to ``archive``.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def load_weights_only(path: str | Path, what: str):
    """``torch.load(path, weights_only=True)`` on the CPU; a missing or unreadable file is one InputError line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds; all mean "not a usable file"
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise InputError(path, f"cannot read {what} (truncated, corrupt or not a weights-only torch file: "
                               f"{first[:160]})") from None


def describe_spec(spec: dict, num_classes: int | None = None) -> str:
    """``swinunetr f12 patch 64x64x32, 5 classes``: for error messages."""
    patch = "x".join(str(p) for p in spec.get("patch", []))
    n = spec.get("out_channels") if num_classes is None else num_classes
    return f"{spec.get('name')} f{spec.get('feature_size')} in{spec.get('in_channels')} patch {patch}, {n} classes"


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, step: int, next_index: int, world_size: int, spec: ModelSpec,
                    class_names: list[str], history: torch.Tensor, device: torch.device) -> Path:
    """Write the resume state of a run (see module docstring)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "next_index": int(next_index),
        "world_size": int(world_size),
        "model_spec": spec.to_dict(),
        "class_names": list(class_names),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": history.detach().cpu().clone(),
        "rng_cpu": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return _torch_save(path, state)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, checking its format."""
    state = load_weights_only(path, "checkpoint")
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise InputError(path, "not an anatosynth checkpoint (no model/step entries)")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"checkpoint format {state.get('format')!r} is not supported "
                               f"(this version reads {CHECKPOINT_FORMAT})")
    return state


def check_compatible(saved_spec: dict, saved_classes: list[str] | None, spec: ModelSpec,
                     class_names: list[str] | None, path: str | Path) -> None:
    """Raise :class:`ConfigError` when a checkpoint was made for another network or class list."""
    want = spec.to_dict()
    keys: tuple[str, ...] = ("name", "in_channels", "out_channels", "feature_size")
    if spec.name == "unetr":
        keys = keys + ("patch",)
    diff = [k for k in keys if saved_spec.get(k) != want.get(k)]
    if diff:
        raise ConfigError(f"{path}: checkpoint is for {describe_spec(saved_spec)} but this run builds "
                          f"{describe_spec(want)} (differs in {', '.join(diff)})")
    if saved_classes is not None and class_names is not None and list(saved_classes) != list(class_names):
        raise ConfigError(f"{path}: checkpoint classes {list(saved_classes)} differ from this run's "
                          f"{list(class_names)}")


def load_state_strict(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """``load_state_dict(strict=True)`` with one clear line instead of PyTorch's long report."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} "
                         f"vs model {tuple(own[k].shape)})")
        raise ConfigError(f"{path}: weights do not fit the {model.__class__.__name__} being built: "
                          + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def save_model(path: str | Path, model: torch.nn.Module) -> Path:
    """Write the plain MONAI state_dict (contiguous CPU tensors, whatever the training layout) as ``model.pt``."""
    state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
             for k, v in model.state_dict().items()}
    return _torch_save(path, state)


def save_nnunet_weights(path: str | Path, state: dict[str, torch.Tensor], info: dict) -> Path:
    """Write ``{"network_weights": float32 state, "anatosynth": info}``, what ``nnUNetv2_train
    -pretrained_weights`` reads; plain tensors and values (loads with ``weights_only=True``), the same bytes
    for the same weights, as every file here."""
    weights = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state.items()}
    return _torch_save(path, {"network_weights": weights, "trainer_name": "anatosynth", "anatosynth": info})


def load_pretrained(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a pre-trained network from a run folder (or its ``model.pt``) and its ``metadata.json``.

    Returns:
        the MONAI network with the weights loaded strictly, and the metadata dict.

    Raises:
        InputError: missing or unreadable files; ConfigError: weights that do not fit the saved spec.
    """
    path = Path(path)
    weights = path / "model.pt" if path.is_dir() else path
    meta_path = weights.parent / "metadata.json"
    if not meta_path.is_file():
        raise InputError(meta_path, "metadata.json not found beside model.pt (needed to rebuild the network)")
    try:
        meta = json.loads(meta_path.read_text())
        spec = ModelSpec.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(meta_path, f"not a valid run metadata file ({err.__class__.__name__})") from None
    state = load_weights_only(weights, "model weights")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(weights, "not a plain state_dict of tensors")
    model = build_model(spec)
    load_state_strict(model, state, weights)
    return model, meta
