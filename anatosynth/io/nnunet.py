"""nnU-Net v2 at the file level: a dataset written as nnU-Net raw data, and a plans file read.

nnU-Net (Isensee et al. 2021) reads ``nnUNet_raw/DatasetXXX_Name/`` with ``imagesTr/{case}_0000.nii.gz``,
``labelsTr/{case}.nii.gz`` and a ``dataset.json`` whose ``channel_names`` choose the intensity normalisation
(``CT`` → foreground percentiles; anything else → z-score) and whose ``labels`` map name → id. Its plans file
(``nnUNetPlans.json``) says, per configuration, the network it will build and the patch, spacing and
normalisation of the data that network sees; :func:`read_plans` reads that without importing nnunetv2.

Axis order: every nnU-Net reader hands over arrays in SimpleITK's order, the reverse of the file's voxel axes
(its nibabel readers transpose to match), and the plans then permute them by ``transpose_forward``. Network
axis ``i`` is therefore voxel axis ``2 - transpose_forward[i]`` of the raw files (:attr:`NnUNetPlan.axes`).
anatosynth's synthetic patches are RAS (x, y, z), so the mapping holds for raw data read in RAS voxel order:
:func:`export_nnunet_raw` writes RAS files and names ``NibabelIOWithReorient`` as the reader, which reorients
any image (new ones at inference too) to RAS and writes predictions back in the image's own orientation.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from anatosynth.errors import InputError
from anatosynth.io.canonical import to_ras
from anatosynth.io.datasets import Dataset
from anatosynth.io.splits import Split
from anatosynth.io.volume import atomic_write_text, ensure_writable_dir, load_image, load_label, save_volume
from anatosynth.options import bar_disable

__all__ = ["NnUNetPlan", "read_plans", "export_nnunet_raw"]


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
        axes: for each network axis, the raw files' voxel axis (anatosynth's x, y, z for RAS data) it holds.
        normalization: one scheme per input channel (``CTNormalization``, ``ZScoreNormalization``...).
        use_mask_for_norm: per channel: z-score inside the nonzero region only, the outside set to 0 (nnU-Net
            does this where cropping to the nonzero region shrank the images, e.g. skull-stripped brain MR).
        intensity_properties: per channel, the foreground statistics CT normalisation uses (mean, std,
            percentile_00_5, percentile_99_5...), from the plans' ``foreground_intensity_properties_per_channel``.
        previous_stage: the configuration a cascade stage takes segmentations from (its network has more
            input channels than the images have), else None.
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
    previous_stage: str | None = None

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

    def _xyz(self, values: tuple) -> list:
        """Per-network-axis ``values`` in anatosynth's (x, y, z) order."""
        out = [values[0]] * 3
        for i, a in enumerate(self.axes):
            out[a] = values[i]
        return out

    def anatosynth_patch(self) -> tuple[int, int, int]:
        """The patch in anatosynth's (x, y, z) voxel order."""
        x, y, z = (int(v) for v in self._xyz(self.patch_size))
        return (x, y, z)

    def anatosynth_spacing(self) -> tuple[float, float, float]:
        """The target spacing (mm) in anatosynth's (x, y, z) order."""
        x, y, z = (float(v) for v in self._xyz(self.spacing))
        return (x, y, z)


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
    axes = tuple(2 - int(t) for t in plans.get("transpose_forward", [0, 1, 2]))
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
        previous_stage=config.get("previous_stage"),
    )


def export_nnunet_raw(dataset: Dataset, raw_root: str | Path, dataset_id: int, name: str | None = None,
                      split: Split | None = None, progress: bool = True) -> Path:
    """Write ``dataset`` as ``raw_root/DatasetXXX_Name`` in nnU-Net v2's raw layout.

    Images become float32 ``{case}_0000.nii.gz``, labels the smallest unsigned type, both reoriented to RAS
    voxel order (lossless: axes permuted and flipped, the affine kept true) so that nnU-Net's axes are those
    :class:`NnUNetPlan` maps onto anatosynth's; label ids that are not 0..N (nnU-Net requires consecutive
    ids) are renumbered in order, the mapping recorded in ``dataset.json``. ``channel_names`` is ``CT`` for CT
    datasets (nnU-Net's percentile normalisation) and the dataset's modality otherwise (z-score). With
    ``split``, test cases go to ``imagesTs``/``labelsTs`` (nnU-Net never trains or validates on them) and the
    rest to ``imagesTr``. Files are written atomically and ``dataset.json`` last.

    Raises:
        InputError: the target folder exists and is not empty, or a case has no image or label.
    """
    from tqdm import tqdm

    if not 1 <= int(dataset_id) <= 999:
        raise InputError(raw_root, f"dataset id {dataset_id} must be 1-999 (nnU-Net's DatasetXXX)")
    base = re.sub(r"^Dataset\d{3}_", "", name or dataset.name or "anatosynth")  # an nnU-Net dataset's own id goes
    clean = "".join(ch for ch in base if ch.isalnum() or ch in "-")
    folder = Path(raw_root) / f"Dataset{int(dataset_id):03d}_{clean or 'anatosynth'}"
    if folder.exists() and any(folder.iterdir()):
        raise InputError(folder, "exists and is not empty (choose another id or remove it)")
    for case in dataset.cases:
        if case.image is None or case.label is None:
            raise InputError(dataset.root, f"case {case.name} lacks an image or a label; nnU-Net needs both")
    test = set(split.test) if split is not None else set()
    names = {0: "background", **dataset.foreground}
    renumber = {old: new for new, old in enumerate(sorted(names))}  # nnU-Net needs ids 0..N
    lut = np.zeros(max(names) + 1, dtype=np.int64)
    lut[list(renumber)] = list(renumber.values())
    label_dtype = np.dtype(np.uint8 if len(names) < 256 else np.uint16)  # CHAOS stores float64
    ensure_writable_dir(folder)
    n_train = 0
    for case in tqdm(dataset.cases, desc="nnU-Net raw", unit="case", disable=bar_disable(progress)):
        images, labels = ("imagesTs", "labelsTs") if case.name in test else ("imagesTr", "labelsTr")
        n_train += case.name not in test
        image = to_ras(load_image(case.image))
        label = to_ras(load_label(case.label, names=names))
        save_volume(image, ensure_writable_dir(folder / images) / f"{case.name}_0000.nii.gz", "float32")
        save_volume(label.with_array(lut[label.array]), ensure_writable_dir(folder / labels) / f"{case.name}.nii.gz",
                    label_dtype)
    channel = "CT" if (dataset.modality or "").upper() == "CT" else (dataset.modality or "MR")
    meta = {
        "name": folder.name,
        "channel_names": {"0": channel},
        "labels": {names[old]: new for old, new in renumber.items()},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        # nnU-Net then reads every image (new ones at inference too) in RAS voxel order, as the synthetic
        # patches are, and writes predictions back in each image's own orientation
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
        "anatosynth": {"source": str(dataset.root), "test_cases": sorted(test), "orientation": "RAS",
                       "split_method": split.method if split is not None else None,
                       "label_ids": {str(old): new for old, new in renumber.items() if old != new} or None},
    }
    atomic_write_text(folder / "dataset.json", json.dumps(meta, indent=1) + "\n")
    return folder
