"""Parsing of option values shared by several verbs (so ``--patch`` reads the same everywhere)."""

from __future__ import annotations

import os
import re

from anatosynth.errors import ConfigError

__all__ = ["parse_patch", "add_patch_argument", "reject_unknown_keys", "free_threads", "default_threads",
           "apply_threads", "THREADS_HELP", "SYNTH_MODES", "RENDERS", "MODELS", "resolve_device",
           "check_path", "counted", "bar_disable"]

#: What the synthetic stream places: organs at anchors under the relation graph, the same shapes at random
#: positions, or formula primitives (PrimGeoSeg-style). The one definition every verb and config reads.
SYNTH_MODES = ("anatomy", "random", "primitives", "mixed")
#: How labels become intensities (docs/method.md "Render modes"). The one definition.
RENDERS = ("shell", "fill", "shell+fill", "texture", "contour")
#: The MONAI networks a run can build (anatosynth.train.models). The one definition.
MODELS = ("swinunetr", "unetr", "unet", "dynunet")

THREADS_HELP = "torch CPU threads (default: the cores not busy with other work, or OMP_NUM_THREADS)"


def parse_patch(value, *, minimum: int = 8, multiple: int = 1, what: str = "patch") -> tuple[int, int, int]:
    """A patch size as three ints from ``96``, ``"96"``, ``"96,96,32"``, ``"96x96x32"``, ``"96 96 32"`` or
    ``[96, 96, 32]`` (also ``["96", "96", "32"]`` or ``["96x96x32"]``, as ``--patch`` hands them over).

    One number means a cube. Every entry must be at least ``minimum`` and a multiple of ``multiple``.

    Raises:
        ConfigError: one line naming ``what`` and the value.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be N or X,Y,Z, got {value!r}")
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    parts = [p for p in re.split(r"[,x\s]+", text.strip().lower()) if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{what} must be N or X,Y,Z (whole numbers, e.g. 96 or 96,96,32), got {value!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ConfigError(f"{what} must be one or three numbers, got {value!r}")
    if min(values) < minimum:
        raise ConfigError(f"{what} entries must be at least {minimum}, got {value!r}")
    if multiple > 1 and any(v % multiple for v in values):
        raise ConfigError(f"{what} {'x'.join(map(str, values))}: every entry must be a multiple of {multiple}")
    return tuple(values)  # type: ignore[return-value]


PATCH_SPELLINGS = "N, X Y Z, X,Y,Z or XxYxZ"


def add_patch_argument(parser, default: str | None, what: str) -> None:
    """``--patch`` as every verb spells it (one to three words, see :func:`parse_patch`)."""
    shown = f" (default {default})" if default is not None else ""
    parser.add_argument("--patch", nargs="+", default=default, metavar="N",
                        help=f"{what}: {PATCH_SPELLINGS}{shown}")


def resolve_device(name=None):
    """A checked torch device: ``auto`` (or None) → the first CUDA GPU when there is one, else the CPU.

    CUDA requested without a GPU, or a device type we do not support, is a one-line ConfigError here
    rather than a crash later.
    """
    import torch

    if name is None or (isinstance(name, str) and name in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA GPU is available (use --device cpu)")
    return device


def check_path(value, what: str, expected: str) -> None:
    """A clear ConfigError for a Python argument that is not a path (rather than a TypeError from pathlib)."""
    if not (isinstance(value, str) or hasattr(value, "__fspath__")):
        raise ConfigError(f"{what} must be {expected} (a str or Path), got {type(value).__name__} {value!r}")


def reject_unknown_keys(d: dict, known, what: str) -> None:
    """Raise :class:`ConfigError` naming the unknown keys of mapping ``d`` (typos must not be ignored)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what}: expected a mapping of options, got {type(d).__name__}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{what}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def free_threads(cores: int, load: float) -> int:
    """CPU threads worth using: the cores this process may run on minus those other work keeps busy.

    ``load`` is the 1-minute load average. On a 2-core machine with one core busy (load about 1) this is
    1: two threads would share one free core with the other job and run several times slower.
    """
    return max(1, int(cores) - int(round(max(0.0, float(load)))))


def default_threads() -> int:
    """The thread count used when ``--threads`` is not given.

    ``OMP_NUM_THREADS`` when set (torchrun and the experiment runner set it per process), else
    :func:`free_threads` of the cores in this process's CPU affinity and the current load average.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return free_threads(cores, load)


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads to ``threads`` or, when None/0, to :func:`default_threads`; returns the count."""
    import torch

    if threads is not None and (isinstance(threads, bool) or int(threads) < 0):
        raise ConfigError(f"--threads {threads}: must be a positive number of CPU threads")
    n = int(threads) if threads else default_threads()
    torch.set_num_threads(n)
    return n


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 subject``, ``5 subjects``, ``1 labelled case``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def bar_disable(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a verb's progress bar: off when asked (``--quiet``), else shown on a terminal only
    (``None``), so that a log file (``nohup ... > log``) gets no carriage-return lines."""
    return None if progress else True
