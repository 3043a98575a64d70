"""The pre-training run folder: its file names, config resume, bank hash, metadata, log and JSON helpers.

A run folder holds ``config.yaml`` (the resolved :class:`~anatosynth.train.config.PretrainConfig`),
``checkpoint.pt``, ``model.pt``, ``metadata.json`` (network, classes, synthesis options, bank sha256,
versions), ``train.log``, ``progress.png`` and ``tensorboard/``. Fine-tuning reads the same names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anatosynth.errors import ConfigError, InputError
from anatosynth.train.config import RESUME_MUTABLE, PretrainConfig, load_yaml, parse_patch
from anatosynth.train.distributed import DistContext

__all__ = ["RunPaths", "resume_config", "bank_hash", "file_sha256", "versions", "code_commit", "run_sessions",
           "setup_logger", "close_logger", "jsonable", "LOGGER_NAME"]

LOGGER_NAME = "anatosynth.pretrain"


@dataclass
class RunPaths:
    """The files of a run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def progress(self) -> Path:
        return self.root / "progress.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def indices(self, rank: int) -> Path:
        return self.root / f"indices-rank{rank}.txt"


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, in sorted order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _update_array(h, a) -> None:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def bank_hash(bank, source: str | None) -> str | None:
    """sha256 of the bank file (or folder), or of a canonical serialisation of an in-memory bank (builtin)."""
    if bank is None:
        return None
    if source and not str(source).startswith("builtin:") and Path(source).exists():
        return file_sha256(Path(source))
    h = hashlib.sha256()
    h.update(json.dumps({"spacing": [float(s) for s in bank.spacing], "subjects": list(bank.subjects),
                         "frame": bank.frame, "version": bank.version}, sort_keys=True).encode())
    for organ in bank.organs:
        h.update(f"organ:{organ.name}:{organ.label}".encode())
        _update_array(h, organ.anchor_mean_mm)
        _update_array(h, organ.anchor_cov_mm)
        for s in organ.shapes:
            h.update(f"shape:{s.subject}:{float(s.volume_ml)!r}".encode())
            _update_array(h, np.asarray(s.mask, dtype=bool))
            for a in (s.origin_mm, s.centroid_mm, s.axes, s.extent_mm):
                _update_array(h, np.asarray(a, dtype=np.float64))
    for e in bank.edges:
        h.update(f"edge:{e.a}:{e.b}:{e.n_subjects}:{float(e.contact)!r}:{float(e.consistency)!r}:"
                 f"{float(e.min_gap_mm)!r}:{e.overlap}".encode())
        for a in (e.direction, e.offset_mean_mm, e.offset_cov_mm):
            _update_array(h, np.asarray(a, dtype=np.float64))
    return h.hexdigest()


def resume_config(run: str | Path, overrides: dict | None = None) -> PretrainConfig:
    """The saved config of ``run`` with the few options that may change on resume (e.g. ``steps``) applied.

    Raises:
        InputError: ``run`` has no config.yaml; ConfigError: a flag tries to change what the run trains.
    """
    paths = RunPaths(Path(run))
    if not paths.config.is_file():
        raise InputError(paths.root, "not a pre-training run folder (no config.yaml); nothing to resume")
    saved = load_yaml(paths.config)
    cfg = PretrainConfig.from_dict(saved, str(paths.config))
    merged = cfg.to_dict()
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in RESUME_MUTABLE:
            current = merged.get(key)
            if key == "patch":
                value = list(parse_patch(value))
            if key == "synth":
                value = {**(current or {}), **value}
            if value != current:
                raise ConfigError(f"--resume {run}: cannot change {key} of an existing run "
                                  f"(saved {current!r}, given {value!r})")
            continue
        merged[key] = value
    merged["out"] = str(paths.root)
    return PretrainConfig.from_dict(merged, str(paths.config))


def code_commit(where: Path | None = None) -> str | None:
    """The git commit of the anatosynth checkout running this, ``-dirty`` appended when tracked files under
    ``where`` (the package folder) differ from it, as ``git describe --dirty`` says; None outside a checkout.

    A model card or a kept result names this commit, so it must not claim code the commit does not hold.
    """
    import subprocess

    where = Path(__file__).resolve().parent.parent if where is None else Path(where)

    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return None
    diff = git("diff", "--quiet", "HEAD", "--", ".")
    return head.stdout.strip() + ("-dirty" if diff is not None and diff.returncode == 1 else "")


def run_sessions(metadata: Path, step: int, resumed: bool) -> list[dict]:
    """The sessions of a run, this one last: ``{"from_step", "commit", "started"}`` each.

    A resumed run keeps the list its ``metadata.json`` holds, so a model card or a kept result can say
    which code made which steps (a run that outlives a session may outlive a commit too).
    """
    import datetime as _dt
    import json

    earlier: list = []
    if resumed and metadata.is_file():
        try:
            earlier = list(json.loads(metadata.read_text(encoding="utf-8")).get("sessions") or [])
        except (ValueError, AttributeError, TypeError):
            earlier = []
    return [*earlier, {"from_step": int(step), "commit": code_commit(),
                       "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}]


def versions() -> dict:
    import monai

    from anatosynth.version import __version__

    return {"anatosynth": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def setup_logger(paths: RunPaths, ctx: DistContext, echo: bool) -> logging.Logger:
    """File log on rank 0 (appending, so a resumed run keeps its history), echoed to stderr when asked."""
    log = logging.getLogger(f"{LOGGER_NAME}.{paths.root.resolve()}")
    close_logger(log)  # a run of the same folder earlier in this process
    log.setLevel(logging.INFO)
    log.propagate = False
    if ctx.is_main:
        fh = logging.FileHandler(paths.log, mode="a")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(fh)
        if echo:
            sh = logging.StreamHandler(sys.stderr)
            sh.setFormatter(logging.Formatter("pretrain: %(message)s"))
            sh.addFilter(lambda record: not getattr(record, "file_only", False))  # lines the CLI prints itself
            log.addHandler(sh)
    else:
        log.addHandler(logging.NullHandler())
    return log


def close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)


def jsonable(obj):
    """Tuples → lists, numpy scalars → Python numbers (for metadata.json)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
