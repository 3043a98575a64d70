"""Shared test fixtures: tiny volumes written to a temporary folder, and the real data folder."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data relative to the project root (CI has it too)."""
    if not DATA.is_dir():
        pytest.fail(f"real data folder missing: {DATA}")
    return DATA.resolve()


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write a small NIfTI for tests (float or integer array as given)."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture
def tiny_label() -> np.ndarray:
    """A 20x18x16 label map with a ball (1) and a box (2)."""
    x, y, z = np.mgrid[:20, :18, :16]
    lab = np.zeros((20, 18, 16), np.uint8)
    lab[(x - 7) ** 2 + (y - 8) ** 2 + (z - 8) ** 2 < 16] = 1
    lab[13:17, 4:10, 5:12] = 2
    return lab
