"""Shape bank: de-identified organ masks from a few subjects, spatial anchors and a topological graph.

Use :func:`load_bank` to get a :class:`ShapeBank` from a bank file or from ``"builtin:phantom"``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from anatosynth.bank.model import BANK_FORMAT_VERSION, Edge, Organ, OrganShape, ShapeBank
from anatosynth.bank.names import VOCABULARY, canonical_name

__all__ = ["ShapeBank", "Organ", "OrganShape", "Edge", "BANK_FORMAT_VERSION", "VOCABULARY",
           "canonical_name", "load_bank", "save_bank", "BUILTIN_PHANTOM"]

BUILTIN_PHANTOM = "builtin:phantom"


def _freeze(bank: ShapeBank) -> ShapeBank:
    """Make the bank's arrays read-only, so a shared (cached) bank cannot be changed by accident."""
    for organ in bank.organs:
        organ.anchor_mean_mm.setflags(write=False)
        organ.anchor_cov_mm.setflags(write=False)
        for s in organ.shapes:
            for a in (s.mask, s.origin_mm, s.centroid_mm, s.axes, s.extent_mm):
                a.setflags(write=False)
    for e in bank.edges:
        for a in (e.direction, e.offset_mean_mm, e.offset_cov_mm):
            a.setflags(write=False)
    return bank


@functools.lru_cache(maxsize=4)
def _phantom(spacing: tuple[float, float, float]) -> ShapeBank:
    from anatosynth.bank.phantom import phantom_bank

    return _freeze(phantom_bank(spacing=spacing))


def load_bank(spec: str | Path, spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)) -> ShapeBank:
    """Load a bank file, or build ``"builtin:phantom"`` (deterministic, cached in-process).

    The phantom is shared between calls: its arrays are read-only; copy before changing them.

    Args:
        spec: path of a ``.bank`` file, or ``"builtin:phantom"``.
        spacing: voxel size (mm) of the phantom; ignored for files (they carry their own).
    """
    from anatosynth.options import check_path

    check_path(spec, "load_bank: spec", "a bank file or 'builtin:phantom'")
    if str(spec) == BUILTIN_PHANTOM:
        return _phantom(tuple(float(v) for v in spacing))
    from anatosynth.bank.store import read_bank

    return read_bank(spec)


def save_bank(bank: ShapeBank, path: str | Path) -> Path:
    """Write a bank file atomically (see :mod:`anatosynth.bank.store`)."""
    from anatosynth.bank.store import save_bank as _save
    from anatosynth.options import check_path

    check_path(path, "save_bank: path", "a file path")
    return _save(bank, path)
