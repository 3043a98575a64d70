"""Parsing of option values shared by several verbs (so ``--patch`` reads the same everywhere)."""

from __future__ import annotations

import re

from anatosynth.errors import ConfigError

__all__ = ["parse_patch", "reject_unknown_keys"]


def parse_patch(value, *, minimum: int = 8, multiple: int = 1, what: str = "patch") -> tuple[int, int, int]:
    """A patch size as three ints from ``96``, ``"96"``, ``"96,96,32"``, ``"96x96x32"`` or ``[96, 96, 32]``.

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


def reject_unknown_keys(d: dict, known, what: str) -> None:
    """Raise :class:`ConfigError` naming the unknown keys of mapping ``d`` (typos must not be ignored)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what}: expected a mapping of options, got {type(d).__name__}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{what}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
