"""Export synthetic patches as an MSD / nnU-Net v2 dataset folder.

Layout: ``imagesTr/case_XXXX_0000.nii.gz`` (float32 image), ``labelsTr/case_XXXX.nii.gz`` (uint8 or
uint16 labels), ``dataset.json`` (nnU-Net v2 ``channel_names``/``labels`` name → id/``file_ending``,
and MSD's ``modality``/``training`` list), ``placement_logs.jsonl`` and ``synth_config.json``. The affine
is ``diag(bank spacing)`` with the patch's body-frame origin as translation. Every file is written
atomically and ``dataset.json`` last, so an interrupted export is never mistaken for a finished one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from anatosynth.errors import InputError
from anatosynth.io.volume import Volume, atomic_write_bytes, ensure_writable_dir, save_volume
from anatosynth.options import bar_disable

__all__ = ["export_dataset", "dataset_json"]


def dataset_json(class_names: list[str], n: int, name: str, description: str, extra: dict) -> dict:
    """The dataset.json contents for ``n`` cases (MSD and nnU-Net v2 keys)."""
    return {
        "name": name,
        "description": description,
        "tensorImageSize": "3D",
        "reference": "anatosynth synthetic data",
        "licence": "synthetic; see the bank's licence",
        "channel_names": {"0": "synthetic"},
        "modality": {"0": "synthetic"},
        "labels": {c: i for i, c in enumerate(class_names)},
        "numTraining": n,
        "numTest": 0,
        "file_ending": ".nii.gz",
        "training": [{"image": f"./imagesTr/case_{i:04d}_0000.nii.gz", "label": f"./labelsTr/case_{i:04d}.nii.gz"}
                     for i in range(n)],
        "test": [],
        "anatosynth": extra,
    }


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write_bytes(path, write)


def export_dataset(stream, n: int, out: str | Path, device: str = "cpu", batch_size: int = 4,
                   progress: bool = True) -> Path:
    """Write samples ``0..n-1`` of ``stream`` as a dataset under ``out`` (which must be new or empty).

    Raises:
        InputError: ``out`` is not empty or not writable.
    """
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "output folder exists and is not empty (choose a new folder)")
    ensure_writable_dir(out)
    images, labels = ensure_writable_dir(out / "imagesTr"), ensure_writable_dir(out / "labelsTr")
    label_dtype = np.uint8 if stream.num_classes <= 256 else np.uint16
    logs = []
    with tqdm(total=n, desc="export", unit="patch", disable=bar_disable(progress)) as bar:
        for start in range(0, n, batch_size):
            indices = list(range(start, min(n, start + batch_size)))
            params = [stream.draw(i) for i in indices]
            batch = stream.apply(params, device)
            img = batch.image[:, 0].cpu().numpy()
            lab = batch.label.cpu().numpy()
            for b, (i, p) in enumerate(zip(indices, params)):
                affine = np.diag(list(stream.spacing) + [1.0])
                affine[:3, 3] = np.asarray(p.origin_mm, dtype=np.float64)
                save_volume(Volume(img[b].astype(np.float32), affine), images / f"case_{i:04d}_0000.nii.gz")
                save_volume(Volume(lab[b].astype(label_dtype), affine), labels / f"case_{i:04d}.nii.gz")
            logs.extend(batch.logs)
            bar.update(len(indices))
    cfg = stream.config.to_dict()
    extra = {"seed": stream.seed, "config": cfg, "spacing": list(stream.spacing),
             "bank": dict(getattr(stream.bank, "meta", {}) or {}) if stream.bank is not None else None}
    _write_text(out / "synth_config.json", json.dumps(extra, indent=2, default=str) + "\n")
    _write_text(out / "placement_logs.jsonl", "".join(json.dumps(log) + "\n" for log in logs))
    meta = dataset_json(stream.class_names, n, f"anatosynth_{cfg['mode']}",
                        f"{n} synthetic {cfg['mode']} patches ({cfg['render']} render), seed {stream.seed}", extra)
    _write_text(out / "dataset.json", json.dumps(meta, indent=2, default=str) + "\n")
    return out
