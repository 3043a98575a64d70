"""Load pre-trained weights into a network: by name and shape, with a report of what moved.

Accepted checkpoints (always read with ``torch.load(weights_only=True)`` or safetensors):

* released weights (``anatosynth release``): a folder with ``model.safetensors`` (float16, cast back to
  float32) and ``metadata.json``, e.g. ``weights/NAME`` shipped in the repository;
* anatosynth runs: ``RUN/model.pt`` holds a plain MONAI state_dict; ``metadata.json`` beside it gives
  the class names (used to decide whether the output head can be kept);
* third-party MONAI checkpoints: a plain state_dict, or one wrapped as ``{"state_dict": ...}``,
  ``{"model": ...}`` or ``{"model_state_dict": ...}``, with or without DataParallel ``module.`` prefixes;
* SwinUNETR self-supervised encoders: research-contributions ``model_swinvit.pt`` (keys ``module.X``
  for the encoder's ``swinViT.X``), keys spelled ``swin_vit``, and MONAI's ``ssl_pretrained_weights.pth``
  (keys ``encoder.layersN.0.0...``, renamed with MONAI's own ``filter_swinunetr``).

The key layout that matches most of the network's tensors wins. A tensor is transferred when its
(renamed) key exists in the network with the same shape; everything else is skipped with a reason.
The output head is re-initialised (skipped) when the checkpoint's classes differ from the new ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anatosynth.errors import InputError
from anatosynth.train.checkpoint import load_weights_only
from anatosynth.train.release import WEIGHTS_FILE, load_release

__all__ = ["TransferReport", "load_checkpoint", "rename_keys", "transfer_weights", "head_keys"]

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network_weights", "net")


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did: transferred keys, skipped keys with reasons, untouched keys."""

    source: str
    layout: str = "plain"
    transferred: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    not_initialised: list[str] = field(default_factory=list)
    head_reinitialised: bool = False

    def to_dict(self) -> dict:
        return {"source": self.source, "layout": self.layout, "n_transferred": len(self.transferred),
                "n_skipped": len(self.skipped), "n_not_initialised": len(self.not_initialised),
                "head_reinitialised": self.head_reinitialised, "transferred": self.transferred,
                "skipped": self.skipped, "not_initialised": self.not_initialised}

    def summary(self) -> str:
        """A few lines for the console and the log."""
        total = len(self.transferred) + len(self.not_initialised)
        lines = [f"weights from {self.source} ({self.layout} layout): {len(self.transferred)} of {total} "
                 f"network tensors transferred, {len(self.skipped)} checkpoint tensors skipped"]
        reasons: dict[str, int] = {}
        for why in self.skipped.values():
            reasons[why.split(" (")[0]] = reasons.get(why.split(" (")[0], 0) + 1
        for why, n in sorted(reasons.items()):
            lines.append(f"  skipped {n}: {why}")
        if self.head_reinitialised:
            lines.append("  output head initialised afresh (classes differ or head not in checkpoint)")
        return "\n".join(lines)

    def write(self, path: str | Path) -> None:
        from anatosynth.io.volume import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))


def init_network(path: str | Path) -> dict | None:
    """The network an ``--init`` names in its ``metadata.json`` (a release folder, a run folder or a weights
    file beside one): ``{"name", "feature_size", "patch", ...}``, or None when there is no metadata (a MONAI
    or SSL checkpoint), without reading any tensor."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta_path = folder / "metadata.json"
    if str(path).lower() == "none" or not meta_path.is_file():
        return None
    try:
        model = json.loads(meta_path.read_text(encoding="utf-8")).get("model")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise InputError(meta_path, "invalid JSON") from None
    return model if isinstance(model, dict) and model.get("name") else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a checkpoint's tensors (unwrapping common containers) and ``metadata.json`` beside it.

    Raises:
        InputError: missing or unreadable file, or no tensors inside.
    """
    path = Path(path)
    if path.suffix == ".safetensors" or (path.is_dir() and (path / WEIGHTS_FILE).is_file()):
        return load_release(path)  # released weights (anatosynth release)
    if path.is_dir() and (path / "model.pt").is_file():  # a run folder
        path = path / "model.pt"
    obj = load_weights_only(path, "checkpoint")
    for _ in range(3):  # nested wrappers such as {"model": {"state_dict": ...}}
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
    if not isinstance(obj, dict):
        raise InputError(path, f"checkpoint holds a {type(obj).__name__}, expected a state_dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise InputError(path, "checkpoint holds no tensors")
    meta = None
    meta_path = path.parent / "metadata.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(meta_path, "invalid JSON") from None
    return state, meta


def _strip_module(key: str) -> str | None:
    return key[len("module."):] if key.startswith("module.") else key


def _module_to_swinvit(key: str) -> str | None:
    return "swinViT." + key[len("module."):] if key.startswith("module.") else key


def _swin_vit(key: str) -> str | None:
    return key.replace("swin_vit", "swinViT")


def _monai_ssl(key: str) -> str | None:
    from monai.networks.nets.swin_unetr import filter_swinunetr

    out = filter_swinunetr(key, None)
    return None if out is None else out[0]


LAYOUTS: dict[str, Callable[[str], str | None]] = {
    "plain": lambda k: k,
    "module-prefixed": _strip_module,
    "swinvit-ssl (module.)": _module_to_swinvit,
    "swin_vit": _swin_vit,
    "monai-ssl (encoder.)": _monai_ssl,
}


def rename_keys(state: dict[str, torch.Tensor], target_keys: set[str]) -> tuple[dict[str, torch.Tensor], str,
                                                                                    dict[str, str]]:
    """Pick the key layout matching most of ``target_keys`` and rename ``state`` accordingly.

    Returns:
        renamed state (new key → tensor), the layout's name, and new key → original key.
    """
    best = ("plain", -1)
    for name, fn in LAYOUTS.items():
        hits = sum(1 for k in state if (new := fn(k)) is not None and new in target_keys)
        if hits > best[1]:
            best = (name, hits)
    fn = LAYOUTS[best[0]]
    renamed, origin = {}, {}
    for k, v in state.items():
        new = fn(k)
        if new is None:
            new = k
        renamed[new] = v
        origin[new] = k
    return renamed, best[0], origin


def head_keys(model: torch.nn.Module, rebuild: Callable[[int], torch.nn.Module] | None = None) -> set[str]:
    """Keys of the output head: tensors whose shape depends on the number of output classes.

    ``rebuild(out_channels)`` builds the same network with another class count; without it, the last
    weight and bias of the state_dict are taken as the head.
    """
    state = model.state_dict()
    if rebuild is not None:
        other = rebuild(2 if _out_channels(state) != 2 else 3).state_dict()
        keys = {k for k, v in state.items() if k in other and other[k].shape != v.shape}
        if keys:
            return keys
    params = [k for k in state if k.endswith(("weight", "bias"))]
    return set(params[-2:])


def _out_channels(state: dict[str, torch.Tensor]) -> int:
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim >= 2][-1]
    return int(last.shape[0])


def _first_conv(model: torch.nn.Module) -> tuple[str, torch.Tensor] | None:
    """The first convolution weight: its dim 1 is the number of input channels."""
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Conv2d)):
            return f"{name}.weight", module.weight
    return None


def _check_architecture(meta: dict | None, spec: dict | None, source: str | Path) -> None:
    """A clear error when an anatosynth checkpoint's metadata names another network or width."""
    saved = (meta or {}).get("model")
    if not isinstance(saved, dict) or not spec:
        return
    diff = [k for k in ("name", "feature_size") if k in saved and saved[k] != spec.get(k)]
    if diff:
        raise InputError(source, f"checkpoint is a {saved.get('name')} with feature size {saved.get('feature_size')}, "
                                 f"but the network being fine-tuned is a {spec.get('name')} with feature size "
                                 f"{spec.get('feature_size')} (set --model/--feature-size to match)")


def transfer_weights(model: torch.nn.Module, source: str | Path, *, classes_differ: bool | None = None,
                     rebuild: Callable[[int], torch.nn.Module] | None = None,
                     new_class_names: list[str] | None = None, spec: dict | None = None) -> TransferReport:
    """Copy matching tensors from the checkpoint at ``source`` into ``model`` (in place).

    Args:
        model: the network to initialise.
        source: checkpoint path (see module docstring for accepted layouts).
        classes_differ: force (True) or forbid (False) re-initialising the head; by default it is
            re-initialised when the checkpoint's metadata names other classes than ``new_class_names``,
            or when the head's shape differs.
        rebuild: builds the same network with another class count (to find the head's keys).
        new_class_names: class names of the fine-tuning task, compared with the checkpoint's metadata.
        spec: the network's ``ModelSpec.to_dict()``, compared with the checkpoint's metadata if any.

    Raises:
        InputError: the checkpoint cannot be read, was made for a different number of input channels,
            or shares no tensor with the network.
    """
    state, meta = load_checkpoint(source)
    _check_architecture(meta, spec, source)
    target = model.state_dict()
    renamed, layout, origin = rename_keys(state, set(target))
    report = TransferReport(str(source), layout)

    first = _first_conv(model)
    if first is not None and first[0] in renamed:
        src = renamed[first[0]]
        if src.ndim == first[1].ndim and src.shape[1] != first[1].shape[1]:
            raise InputError(source, f"checkpoint was trained with {src.shape[1]} input channel(s) "
                                     f"but the network has {first[1].shape[1]} ({first[0]})")
    if classes_differ is None and meta and new_class_names is not None and meta.get("class_names"):
        classes_differ = list(meta["class_names"]) != list(new_class_names)
    head = head_keys(model, rebuild) if classes_differ else set()
    report.head_reinitialised = bool(head)

    update = {}
    for key, tensor in renamed.items():
        original = origin[key]
        if key not in target:
            report.skipped[original] = "not in network"
        elif key in head:
            report.skipped[original] = "output head (classes differ, re-initialised)"
        elif tensor.shape != target[key].shape:
            report.skipped[original] = (f"shape mismatch (checkpoint {tuple(tensor.shape)}, "
                                        f"network {tuple(target[key].shape)})")
        else:
            update[key] = tensor.to(target[key].dtype)
            report.transferred.append(key)
    if not update:
        raise InputError(source, "no tensor of this checkpoint matches the network by name and shape "
                                 "(different architecture or feature size?)")
    if not classes_differ:  # the head may still have been skipped because its shape differs
        report.head_reinitialised = any(k not in update for k in head_keys(model, rebuild))
    target.update(update)
    model.load_state_dict(target)
    report.not_initialised = [k for k in target if k not in update]
    return report
