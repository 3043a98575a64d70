"""nnU-Net v2 at the file level: a dataset written as nnU-Net raw data, and a plans file read.

nnU-Net (Isensee et al. 2021) reads ``nnUNet_raw/DatasetXXX_Name/`` with ``imagesTr/{case}_0000.nii.gz``,
``labelsTr/{case}.nii.gz`` and a ``dataset.json`` whose ``channel_names`` choose the intensity normalisation
(``CT`` → foreground percentiles; anything else → z-score) and whose ``labels`` map name → id. Its plans file
(``nnUNetPlans.json``) says, per configuration, the network it will build and the patch, spacing and
normalisation of the data that network sees; :func:`read_plans` reads that without importing nnunetv2.

Axis order: nnU-Net reads NIfTI with SimpleITK by default, whose arrays are (z, y, x), the reverse of
nibabel's (and anatosynth's) (x, y, z); the plans then permute them by ``transpose_forward``. Network axis
``i`` is therefore anatosynth axis ``2 - transpose_forward[i]`` for SimpleITK readers and
``transpose_forward[i]`` for nibabel ones (:attr:`NnUNetPlan.axes`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from anatosynth.errors import InputError
from anatosynth.io.datasets import Dataset
from anatosynth.io.splits import Split
from anatosynth.io.volume import atomic_write_text, ensure_writable_dir, load_image, load_label, save_volume

__all__ = ["NnUNetPlan", "read_plans", "export_nnunet_raw", "NIBABEL_READERS"]

# readers whose arrays keep nibabel's voxel axis order; every other reader (SimpleITKIO, the default) reverses it
NIBABEL_READERS = ("NibabelIO", "NibabelIOWithReorient")


@dataclass(frozen=True)
class NnUNetPlan:
    """What anatosynth needs from one configuration of an nnU-Net plans file.

    Attributes:
        plans_name: the plans identifier (``nnUNetPlans``), which ``nnUNetv2_train -p`` names.
        dataset_name: the dataset the plans were made for (``Dataset501_CHAOST2``).
        configuration: ``3d_fullres``, ``3d_lowres``, ...
        sha256: of the plans file's bytes, so a card names exactly the plans the weights fit.
        network_class: dotted class name (``dynamic_network_architectures...PlainConvUNet``).
        network_kwargs: its keyword arguments, as nnU-Net gives them (classes still as dotted names).
        network_kwargs_import: the kwargs that name classes to import (``conv_op``, ``norm_op``...).
        patch_size: the training patch in network axis order.
        spacing: the target spacing (mm) in network axis order.
        axes: for each network axis, the anatosynth (nibabel x, y, z) axis it holds.
        normalization: one scheme per input channel (``CTNormalization``, ``ZScoreNormalization``...).
        use_mask_for_norm: per channel: normalise inside the nonzero mask only (nnU-Net's crop to nonzero).
        intensity_properties: per channel, the foreground statistics CT normalisation uses (mean, std,
            percentile_00_5, percentile_99_5...), from the plans' ``foreground_intensity_properties_per_channel``.
    """

    plans_name: str
    dataset_name: str
    configuration: str
    sha256: str
    network_class: str
    network_kwargs: dict
    network_kwargs_import: list[str]
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    axes: tuple[int, ...]
    normalization: list[str]
    use_mask_for_norm: list[bool]
    intensity_properties: dict

    @property
    def in_channels(self) -> int:
        return len(self.normalization)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("patch_size", "spacing", "axes"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NnUNetPlan:
        d = dict(d)
        for key in ("patch_size", "spacing", "axes"):
            d[key] = tuple(d[key])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def anatosynth_patch(self) -> tuple[int, int, int]:
        """The patch in anatosynth's (x, y, z) voxel order."""
        patch = [0, 0, 0]
        for i, a in enumerate(self.axes):
            patch[a] = int(self.patch_size[i])
        return (patch[0], patch[1], patch[2])

    def anatosynth_spacing(self) -> tuple[float, float, float]:
        """The target spacing (mm) in anatosynth's (x, y, z) order."""
        spacing = [0.0, 0.0, 0.0]
        for i, a in enumerate(self.axes):
            spacing[a] = float(self.spacing[i])
        return (spacing[0], spacing[1], spacing[2])


def _configuration(plans: dict, name: str, path: Path) -> dict:
    """One configuration with its ``inherits_from`` chain resolved, as nnU-Net's PlansManager does."""
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs:
        have = ", ".join(configs) if isinstance(configs, dict) else "none"
        raise InputError(path, f"has no configuration {name!r} (it has: {have})")
    config = dict(configs[name])
    seen = {name}
    while "inherits_from" in config:
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise InputError(path, f"configuration {name!r} inherits from {parent!r}, which is missing or circular")
        seen.add(parent)
        config = {**configs[parent], **config}
    return config


def read_plans(path: str | Path, configuration: str = "3d_fullres") -> NnUNetPlan:
    """Read one configuration of an nnU-Net v2 plans file (``nnUNetPlans.json``).

    Raises:
        InputError: the file is missing, not JSON, lacks the configuration, or is not a 3-D U-Net plan
            that names its architecture (plans from nnU-Net before v2.3 kept the network elsewhere).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "plans file not found (nnUNetv2_plan_and_preprocess writes "
                               "nnUNet_preprocessed/DatasetXXX_Name/nnUNetPlans.json)")
    raw = path.read_bytes()
    try:
        plans = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InputError(path, "not a JSON plans file") from None
    if not isinstance(plans, dict):
        raise InputError(path, "not an nnU-Net plans file (expected a JSON object)")
    config = _configuration(plans, configuration, path)
    arch = config.get("architecture")
    if not isinstance(arch, dict) or "network_class_name" not in arch:
        raise InputError(path, f"configuration {configuration!r} names no architecture.network_class_name "
                               "(plans from nnU-Net v2.3 or later are needed)")
    patch = tuple(int(p) for p in config.get("patch_size", ()))
    if len(patch) != 3:
        raise InputError(path, f"configuration {configuration!r} is not 3-D (patch_size {list(patch)}); "
                               "anatosynth pre-trains 3-D networks")
    transpose = [int(t) for t in plans.get("transpose_forward", [0, 1, 2])]
    reader = str(config.get("image_reader_writer", plans.get("image_reader_writer", "SimpleITKIO")))
    axes = tuple(t if reader in NIBABEL_READERS else 2 - t for t in transpose)
    props = plans.get("foreground_intensity_properties_per_channel", {})
    normalization = [str(s) for s in config.get("normalization_schemes", [])]
    if not normalization:
        raise InputError(path, f"configuration {configuration!r} names no normalization_schemes")
    return NnUNetPlan(
        plans_name=str(plans.get("plans_name", path.stem)),
        dataset_name=str(plans.get("dataset_name", "")),
        configuration=configuration,
        sha256=hashlib.sha256(raw).hexdigest(),
        network_class=str(arch["network_class_name"]),
        network_kwargs=dict(arch.get("arch_kwargs", {})),
        network_kwargs_import=[str(k) for k in arch.get("_kw_requires_import", [])],
        patch_size=patch,
        spacing=tuple(float(s) for s in config.get("spacing", (1.0, 1.0, 1.0))),
        axes=axes,
        normalization=normalization,
        use_mask_for_norm=[bool(m) for m in config.get("use_mask_for_norm", [False] * len(normalization))],
        intensity_properties={str(k): dict(v) for k, v in props.items()},
    )


def export_nnunet_raw(dataset: Dataset, raw_root: str | Path, dataset_id: int, name: str | None = None,
                      split: Split | None = None, progress: bool = True) -> Path:
    """Write ``dataset`` as ``raw_root/DatasetXXX_Name`` in nnU-Net v2's raw layout.

    Images become float32 ``{case}_0000.nii.gz``, labels the smallest unsigned type; ``channel_names`` is
    ``CT`` for CT datasets (nnU-Net's percentile normalisation) and the dataset's modality otherwise (z-score).
    With ``split``, test cases go to ``imagesTs``/``labelsTs`` (nnU-Net never trains or validates on them)
    and the rest to ``imagesTr``. Files are written atomically and ``dataset.json`` last.

    Raises:
        InputError: the target folder exists and is not empty, or a case has no image or label.
    """
    from tqdm import tqdm

    if not 1 <= int(dataset_id) <= 999:
        raise InputError(raw_root, f"dataset id {dataset_id} must be 1-999 (nnU-Net's DatasetXXX)")
    clean = "".join(ch for ch in (name or dataset.name or "anatosynth") if ch.isalnum() or ch in "-")
    folder = Path(raw_root) / f"Dataset{int(dataset_id):03d}_{clean or 'anatosynth'}"
    if folder.exists() and any(folder.iterdir()):
        raise InputError(folder, "exists and is not empty (choose another id or remove it)")
    for case in dataset.cases:
        if case.image is None or case.label is None:
            raise InputError(dataset.root, f"case {case.name} lacks an image or a label; nnU-Net needs both")
    test = set(split.test) if split is not None else set()
    label_dtype = np.dtype(np.uint8 if max(dataset.labels, default=1) < 256 else np.uint16)  # CHAOS: float64
    ensure_writable_dir(folder)
    n_train = 0
    for case in tqdm(dataset.cases, desc="nnU-Net raw", unit="case", disable=not progress):
        images, labels = ("imagesTs", "labelsTs") if case.name in test else ("imagesTr", "labelsTr")
        n_train += case.name not in test
        image = load_image(case.image)
        label = load_label(case.label)
        save_volume(image.with_array(np.asarray(image.array, dtype=np.float32)),
                    ensure_writable_dir(folder / images) / f"{case.name}_0000.nii.gz")
        save_volume(label, ensure_writable_dir(folder / labels) / f"{case.name}.nii.gz", label_dtype)
    channel = "CT" if (dataset.modality or "").upper() == "CT" else (dataset.modality or "MR")
    names = {0: "background", **dataset.foreground}
    meta = {
        "name": folder.name,
        "channel_names": {"0": channel},
        "labels": {names[i]: int(i) for i in sorted(names)},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "anatosynth": {"source": str(dataset.root), "test_cases": sorted(test),
                       "split_method": split.method if split is not None else None},
    }
    atomic_write_text(folder / "dataset.json", json.dumps(meta, indent=1) + "\n")
    return folder
