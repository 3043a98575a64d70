"""Fixtures for evaluation tests: a tiny synthetic MSD dataset with non-contiguous ids and a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def write_dataset(root: Path, n: int = 3, ids=(200, 500), seed: int = 0, shape=(28, 26, 18)) -> Path:
    """An MSD-style CT dataset in LPS orientation at 2x2x3 mm: a 'ball' (first id) and a 'box' (second id)."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    affine[:3, 3] = [30.0, 20.0, -10.0]
    entries = []
    for i in range(n):
        grid = np.indices(shape).astype(np.float32)
        c = np.array(shape) / 2 + rng.integers(-2, 3, 3)
        ball = ((grid[0] - c[0]) ** 2 + (grid[1] - c[1]) ** 2 + (2 * (grid[2] - c[2])) ** 2) < 36
        label = np.zeros(shape, np.uint16)
        label[ball] = ids[0]
        label[3:9, 3:8, 2:7] = ids[1]
        image = rng.normal(-100, 20, shape).astype(np.float32)
        image[label == ids[0]] = 150
        image[label == ids[1]] = 60
        name = f"case_{i:02d}"
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), root / "imagesTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{name}.nii.gz")
        entries.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    meta = {"name": "synthetic", "modality": {"0": "CT"},
            "labels": {"0": "background", str(ids[0]): "ball", str(ids[1]): "box"}, "training": entries}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synthetic_dataset) -> Path:
    """A UNet (feature size 4) fine-tuned for 4 steps on one of three synthetic cases (one test, one validation)."""
    from anatosynth.train.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = FinetuneConfig(data=str(synthetic_dataset), out=str(out), model="unet", feature_size=4, patch=(32, 32, 32),
                         steps=4, train_cases=1, seed=1, spacing=(3.0, 3.0, 3.0), val_every=2, lr=1e-2)
    return finetune(cfg, progress=False)
