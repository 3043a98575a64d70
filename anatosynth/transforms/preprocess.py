"""Preprocessing of real scans for fine-tuning and evaluation.

Every case goes through the same steps, at training and at inference time:

1. load image and label map (validated; image and label must share their geometry);
2. reorient to RAS and resample to the target spacing (default 1.5 x 1.5 x 2.0 mm, the SwinUNETR BTCV
   recipe): images linearly, label maps with :func:`anatosynth.io.resample_label`;
3. normalise intensities by modality: **CT** is clipped to a HU window (default -175..250) and scaled to
   [0, 1]; **MR** gets a per-volume robust z-score (clip to the 0.5th..99.5th percentile, subtract the
   median, divide by the standard deviation of the clipped values);
4. map dataset label ids (possibly non-contiguous, e.g. 200/500/600) to contiguous class indices
   0..C-1 through :class:`ClassMap`; predictions are mapped back with the same object.

Predictions made on the canonical grid return to each case's original grid with
:func:`to_original_grid`, which interpolates class probabilities linearly through world coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anatosynth.errors import ConfigError, InputError
from anatosynth.io import Volume, check_pair, load_image, load_label, resample, resample_label, to_ras
from anatosynth.options import bar_disable

if TYPE_CHECKING:
    import torch

__all__ = ["PreprocessConfig", "ClassMap", "PreparedCase", "modality_kind", "normalise", "prepare_case",
           "prepare_image", "prepare_cases", "to_original_grid"]

CT_NAMES = ("ct", "cect", "nect", "cta")
MR_NAMES = ("mr", "mri", "t1", "t2", "t1w", "t2w", "flair", "adc", "dwi", "t2spir", "t1dual", "t1gd", "pd")


def modality_kind(modality: str | None) -> str:
    """Map a dataset's modality string (``"CT"``, ``"MRI"``, ``"T2"``...) to ``"CT"`` or ``"MR"``."""
    if modality is None:
        raise ConfigError("the dataset does not name its modality; pass --modality CT or --modality MR")
    key = str(modality).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key in CT_NAMES or key.startswith("ct"):
        return "CT"
    if key in MR_NAMES or key.startswith("mr") or key.startswith("t1") or key.startswith("t2"):
        return "MR"
    raise ConfigError(f"unknown modality {modality!r}; pass --modality CT or --modality MR")


@dataclass
class PreprocessConfig:
    """How images are brought to the network's input space (saved with every fine-tuned run)."""

    modality: str = "CT"
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    window: tuple[float, float] = (-175.0, 250.0)
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        self.modality = modality_kind(self.modality)
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.window = tuple(float(w) for w in self.window)  # type: ignore[assignment]
        self.percentiles = tuple(float(p) for p in self.percentiles)  # type: ignore[assignment]
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ConfigError(f"spacing must be three positive numbers, got {self.spacing}")
        if len(self.window) != 2 or self.window[0] >= self.window[1]:
            raise ConfigError(f"CT window must be LOW,HIGH with LOW < HIGH, got {self.window}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def normalise(array: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Intensity normalisation by modality (see module docstring); returns float32."""
    x = np.asarray(array, dtype=np.float32)
    if cfg.modality == "CT":
        lo, hi = cfg.window
        return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    lo, hi = np.percentile(x, cfg.percentiles)
    x = np.clip(x, lo, hi)
    std = float(x.std())
    return ((x - float(np.median(x))) / (std if std > 1e-8 else 1.0)).astype(np.float32)


@dataclass
class ClassMap:
    """Dataset label ids ↔ contiguous class indices (index 0 is background).

    Attributes:
        ids: dataset label id of each class index (``ids[0] == 0``).
        names: class name of each index.
    """

    ids: list[int]
    names: list[str]

    @classmethod
    def from_labels(cls, labels: dict[int, str]) -> ClassMap:
        """Build from a dataset's id→name map (background 0 first, then ids in increasing order)."""
        items = sorted(labels.items())
        if not items or items[0][0] != 0:
            items = [(0, "background")] + items
        if len(items) < 2:
            raise ConfigError("the dataset has no foreground classes")
        return cls([int(i) for i, _ in items], [str(n) for _, n in items])

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    def to_index(self, label: np.ndarray) -> np.ndarray:
        """Dataset ids → class indices (uint8/int64 array of the same shape); unknown ids are an error."""
        lut = np.zeros(int(max(self.ids)) + 1, dtype=np.int64)
        present = np.unique(label)
        unknown = sorted(set(present.tolist()) - set(self.ids))
        if unknown:
            raise ValueError(f"label ids {unknown} are not in the class map")
        for index, ident in enumerate(self.ids):
            lut[ident] = index
        return lut[label].astype(np.uint8 if self.num_classes < 256 else np.int64)

    def to_ids(self, index: np.ndarray) -> np.ndarray:
        """Class indices → dataset ids (int32)."""
        return np.asarray(self.ids, dtype=np.int32)[np.asarray(index, dtype=np.int64)]


@dataclass
class PreparedCase:
    """One case on the canonical grid, ready for cropping or sliding-window inference.

    Attributes:
        name: case name.
        image: normalised image, float32, canonical grid.
        label: class indices on the canonical grid (None when the case has no label map).
        affine: voxel→world affine of the canonical grid.
        original_shape / original_affine: geometry of the image as stored in its file.
        present: class indices present in the label map (before resampling).
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    present: list[int] = field(default_factory=list)


def _canonical_image(image: Volume, cfg: PreprocessConfig) -> Volume:
    canonical = resample(to_ras(image), cfg.spacing)
    return Volume(normalise(canonical.array, cfg), canonical.affine)


def prepare_image(name: str, image: str | Path | Volume, cfg: PreprocessConfig) -> PreparedCase:
    """Preprocess an image alone (a path or an already loaded volume), for inference."""
    image = image if isinstance(image, Volume) else load_image(image)
    canonical = _canonical_image(image, cfg)
    return PreparedCase(name, canonical.array, None, canonical.affine, image.shape, image.affine)


def prepare_case(name: str, image_path: str | Path, label_path: str | Path | None,
                 cfg: PreprocessConfig, classes: ClassMap) -> PreparedCase:
    """Load, check and preprocess an image with its label map.

    Raises:
        InputError: unreadable files, image/label geometry mismatch, or label ids not in ``classes``.
    """
    image = load_image(image_path)
    canonical = _canonical_image(image, cfg)
    if label_path is None:
        return PreparedCase(name, canonical.array, None, canonical.affine, image.shape, image.affine)
    label = load_label(label_path, names=dict(zip(classes.ids, classes.names)))
    check_pair(image, label, image_path, label_path)
    index = Volume(classes.to_index(label.array).astype(np.int32), label.affine)
    present = sorted(int(v) for v in np.unique(index.array))
    lab = resample_label(to_ras(index), cfg.spacing)
    arr = lab.array[tuple(slice(0, n) for n in canonical.array.shape)]
    img = canonical.array[tuple(slice(0, n) for n in arr.shape)]
    return PreparedCase(name, np.ascontiguousarray(img), np.ascontiguousarray(arr.astype(np.uint8)),
                        canonical.affine, image.shape, image.affine, present)


def to_original_grid(probs: np.ndarray | torch.Tensor, affine: np.ndarray, shape: Sequence[int],
                     original_affine: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Bring class probabilities from the canonical grid back to an original grid and take the argmax.

    Each original voxel centre is mapped through world coordinates to a (fractional) canonical voxel
    index; probabilities are interpolated trilinearly there (edge values beyond the canonical extent)
    and the most probable class wins. Work proceeds in slabs of ``chunk`` original slices.

    Args:
        probs: (C, X, Y, Z) probabilities (or logits) on the canonical grid.
        affine: canonical voxel→world affine.
        shape: original array shape.
        original_affine: original voxel→world affine.

    Returns:
        class indices on the original grid (int64 array of ``shape``).
    """
    import torch
    import torch.nn.functional as F

    p = torch.as_tensor(probs, dtype=torch.float32)[None]  # 1,C,X,Y,Z
    size = np.asarray(p.shape[2:], dtype=np.float64)
    to_canon = np.linalg.inv(affine) @ original_affine  # original voxel → canonical voxel
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.int64)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for k0 in range(0, int(shape[2]), chunk):
        ks = np.arange(k0, min(k0 + chunk, int(shape[2])))
        ijk = np.stack(np.broadcast_arrays(ii[..., None], jj[..., None], ks[None, None, :]), axis=-1)
        c = ijk.reshape(-1, 3) @ to_canon[:3, :3].T + to_canon[:3, 3]
        # grid_sample wants (x=last dim, y, z=first dim) normalised to [-1, 1] with align_corners=True
        norm = 2.0 * c / np.maximum(size - 1, 1) - 1.0
        grid = torch.as_tensor(norm[:, ::-1].copy(), dtype=torch.float32).view(1, 1, 1, -1, 3)
        sampled = F.grid_sample(p, grid, mode="bilinear", padding_mode="border", align_corners=True)
        labels = sampled[0, :, 0, 0].argmax(0).numpy()
        out[:, :, ks] = labels.reshape(shape[0], shape[1], len(ks))
    return out


def prepare_cases(cases, cfg: PreprocessConfig, classes: ClassMap, desc: str = "preprocessing",
                  progress: bool = True) -> list[PreparedCase]:
    """Preprocess a list of :class:`anatosynth.io.Case` with a progress bar."""
    from tqdm import tqdm

    prepared = []
    for case in tqdm(cases, desc=desc, unit="case", leave=False, disable=bar_disable(progress)):
        if case.image is None:
            raise InputError(case.label, "case has no image")
        try:
            prepared.append(prepare_case(case.name, case.image, case.label, cfg, classes))
        except ValueError as err:
            raise InputError(case.label, str(err)) from None
    return prepared
