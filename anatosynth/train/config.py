"""The pre-training configuration: defaults < YAML file < command-line flags, saved resolved with each run.

A run is fully described by :class:`PretrainConfig`; ``config.yaml`` in the run folder is its
``to_dict()``, and ``--resume RUN`` rebuilds the run from that file, so a resumed run cannot silently
train something else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from anatosynth.errors import ConfigError, InputError
from anatosynth.options import RENDERS, SYNTH_MODES, reject_unknown_keys
from anatosynth.options import parse_patch as _parse_patch
from anatosynth.synth.config import SynthConfig
from anatosynth.train.models import MODELS, NNUNET, ModelSpec

__all__ = ["PretrainConfig", "load_yaml", "resolve_config", "RESUME_MUTABLE", "RUN_SYNTH_FIELDS"]

# SynthConfig fields that are top-level pre-training options (flags of their own; the model's patch too)
RUN_SYNTH_FIELDS = ("mode", "render", "patch")

# fields that may differ between a run's saved config and the flags given with --resume
RESUME_MUTABLE = ("steps", "minutes", "checkpoint_every", "log_every", "image_every", "device", "threads",
                  "workers", "trace_indices", "out")


@dataclass
class PretrainConfig:
    """Everything that defines a pre-training run.

    Attributes:
        bank: shape bank path or ``"builtin:phantom"`` (ignored for ``mode="primitives"``).
        mode: synthesis mode (``anatomy``, ``random``, ``primitives``).
        render: how patches are drawn (``shell``, ``fill``, ``shell+fill``, ``texture``, ``contour``).
        model: MONAI network (``swinunetr``, ``unetr``, ``unet``, ``dynunet``).
        feature_size: network width (SwinUNETR: multiple of 12).
        patch: synthetic patch size (X, Y, Z) in voxels.
        batch: patches per step and per process.
        steps: optimiser steps to reach (a resumed run continues up to this number).
        samples: train on a fixed pool of this many samples (reshuffled every pass) instead of the endless stream.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps before the cosine decay (default: 5% of ``steps``, at most 500).
        seed: seeds the network initialisation and the synthetic stream.
        minutes: stop (with a checkpoint and model.pt) after this wall-clock time, whatever ``steps`` says.
        checkpoint_every: steps between atomic checkpoints.
        log_every: steps between log lines and TensorBoard scalars.
        image_every: steps between TensorBoard image/label/prediction slices (0: never).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        amp: bf16 autocast on CUDA (no effect on CPU).
        threads: torch CPU threads (None: torch's default).
        workers: processes that draw sample parameters ahead of the step (None: 0 on CPU, up to 4 on CUDA).
        deterministic: ask torch for deterministic algorithms (for exact resume checks).
        trace_indices: write the sample indices each process used to ``indices-rankR.txt`` (for tests).
        synth: the synthesis options, a :class:`~anatosynth.synth.config.SynthConfig` (a mapping of its
            fields in YAML, e.g. ``synth: {anchors: false}``; fields left out take their defaults). Its
            ``mode``, ``render`` and ``patch`` are always this config's: set those at the top level.
        nnunet: the nnU-Net plans configuration this run pre-trains for (set by ``--nnunet-plans``; an
            :class:`~anatosynth.io.nnunet.NnUNetPlan` as a mapping, kept whole so that a resume needs no
            plans file); with it ``model`` is ``nnunet`` and ``patch`` covers the plans' patch.
        out: run folder.
    """

    bank: str | None = "builtin:phantom"
    mode: str = "anatomy"
    render: str = "shell"
    model: str = "swinunetr"
    feature_size: int = 48
    patch: tuple[int, int, int] = (96, 96, 96)
    batch: int = 4
    steps: int = 1000
    samples: int | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup: int | None = None
    seed: int = 0
    minutes: float | None = None
    checkpoint_every: int = 200
    log_every: int = 10
    image_every: int = 200
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    workers: int | None = None
    deterministic: bool = False
    trace_indices: bool = False
    synth: SynthConfig = field(default_factory=SynthConfig)
    nnunet: dict | None = None
    out: str = "runs/pretrain"

    def __post_init__(self) -> None:
        try:  # a mapping becomes a SynthConfig, with this run's mode, render and patch
            self.synth = self.nested_synth()
        except ConfigError:
            pass  # validate() names the bad value with its source

    # --- conversions -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain YAML/JSON-ready dict (patch as a list; ``synth``: every SynthConfig field but the top-level
        ``mode``, ``render`` and ``patch``, so that the file reads as it always did)."""
        d = asdict(self)
        d["patch"] = [int(p) for p in self.patch]
        synth = self.synth.to_dict() if isinstance(self.synth, SynthConfig) else dict(self.synth)
        d["synth"] = {k: v for k, v in synth.items() if k not in RUN_SYNTH_FIELDS}
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> PretrainConfig:
        """Build and validate from a dict, rejecting unknown keys with a message naming ``source``."""
        reject_unknown_keys(d, {f.name for f in fields(cls)}, source)
        d = dict(d)
        for name in ("lr", "weight_decay", "minutes"):  # YAML reads "1e-4" (no dot) as a string
            if isinstance(d.get(name), str):
                try:
                    d[name] = float(d[name])
                except ValueError:
                    raise ConfigError(f"{source}: {name} must be a number, got {d[name]!r}") from None
        cfg = cls(**d)
        cfg.patch = parse_patch(cfg.patch, source)
        cfg.validate(source)
        return cfg

    # --- derived -----------------------------------------------------------------------------------
    def model_spec(self, num_classes: int) -> ModelSpec:
        """The network this run trains, given the synthetic stream's class count."""
        return ModelSpec(name=self.model, in_channels=1, out_channels=int(num_classes),
                         feature_size=int(self.feature_size), patch=parse_patch(self.patch), nnunet=self.nnunet)

    @property
    def warmup_steps(self) -> int:
        if self.warmup is not None:
            return int(self.warmup)
        return int(min(500, max(0, self.steps // 20)))

    def nested_synth(self, source: str = "config") -> SynthConfig:
        """``synth`` as a checked SynthConfig (from a mapping too) with this run's mode, render and patch."""
        synth = self.synth
        if isinstance(synth, SynthConfig):
            d = synth.to_dict()
        elif isinstance(synth, dict):
            reject_unknown_keys(synth, {f.name for f in fields(SynthConfig)}, f"{source}: synth")
            d = dict(synth)
        else:
            raise ConfigError(f"{source}: synth must be a mapping of SynthConfig fields, got {type(synth).__name__}")
        d.update(mode=self.mode, render=self.render, patch=list(parse_patch(self.patch, source)))
        try:
            return SynthConfig.from_dict(d)
        except ConfigError as err:
            raise ConfigError(f"{source}: synth: {err}") from None
        except TypeError as err:
            raise ConfigError(f"{source}: invalid synth options: {err}") from None

    def validate(self, source: str = "config") -> None:
        """Raise :class:`ConfigError` with one line for the first invalid value."""
        def bad(msg: str):
            raise ConfigError(f"{source}: {msg}")

        if self.mode not in SYNTH_MODES:
            bad(f"mode must be one of {', '.join(SYNTH_MODES)}, got {self.mode!r}")
        if self.render not in RENDERS:
            bad(f"render must be one of {', '.join(RENDERS)}, got {self.render!r}")
        if self.model == NNUNET or self.nnunet is not None:
            self._validate_nnunet(source)
        elif self.model not in MODELS:
            bad(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.mode != "primitives" and not self.bank:
            bad(f"mode {self.mode!r} needs a bank (a path or builtin:phantom)")
        for name in ("feature_size", "batch", "steps", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(f"{name} must be a positive integer, got {value!r}")
        for name in ("image_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                bad(f"{name} must be a non-negative integer, got {value!r}")
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                         or self.samples < 1):
            bad(f"samples must be a positive integer, got {self.samples!r}")
        if self.warmup is not None and (not isinstance(self.warmup, int) or self.warmup < 0):
            bad(f"warmup must be a non-negative integer, got {self.warmup!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            bad(f"threads must be a positive integer, got {self.threads!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 0):
            bad(f"workers must be a non-negative integer, got {self.workers!r}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                bad(f"{name} must be a non-negative number, got {value!r}")
        if self.lr <= 0:
            bad(f"lr must be positive, got {self.lr!r}")
        if self.minutes is not None and (not isinstance(self.minutes, (int, float)) or self.minutes <= 0):
            bad(f"minutes must be a positive number, got {self.minutes!r}")
        self.synth = self.nested_synth(source)
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            bad(f"unknown device {self.device!r} (use auto, cpu, cuda or cuda:N)")  # resolve_device's wording


    def _validate_nnunet(self, source: str) -> None:
        """``model: nnunet`` with its plans configuration, a patch that covers the plans' patch."""
        from anatosynth.io.nnunet import NnUNetPlan
        from anatosynth.train.nnunet import check_plan

        if self.model != NNUNET or not isinstance(self.nnunet, dict):
            raise ConfigError(f"{source}: model nnunet and the nnunet plans go together (set both with "
                              "pretrain --nnunet-plans PLANS --configuration NAME)")
        try:
            plan = NnUNetPlan.from_dict(self.nnunet)
        except (TypeError, KeyError, ValueError):
            raise ConfigError(f"{source}: nnunet is not a plans configuration anatosynth wrote") from None
        check_plan(plan, source)
        patch = parse_patch(self.patch, source)
        if any(s < p for s, p in zip(patch, plan.anatosynth_patch())):
            raise ConfigError(f"{source}: patch {list(patch)} does not cover the plans' patch "
                              f"{list(plan.anatosynth_patch())} (x, y, z)")


def parse_patch(value, source: str = "config") -> tuple[int, int, int]:
    """``96``, ``"96,96,32"`` or ``[96, 96, 32]`` → ``(X, Y, Z)``; errors name ``source``."""
    try:
        return _parse_patch(value)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping of options, with one clear error line for a missing or broken file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(path, f"not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read config ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, f"expected a mapping of options, got {type(data).__name__}")
    return data


def resolve_config(yaml_path: str | Path | None, overrides: dict) -> PretrainConfig:
    """Defaults, then the YAML file, then every flag that was given (``None`` means not given)."""
    merged = PretrainConfig().to_dict()
    source = "config"
    if yaml_path is not None:
        merged.update(load_yaml(yaml_path))
        source = str(yaml_path)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "synth":
            merged["synth"] = {**(merged.get("synth") or {}), **value}
        else:
            merged[key] = value
    return PretrainConfig.from_dict(merged, source)
