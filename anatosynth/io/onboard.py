"""Onboarding a dataset: write the MSD ``dataset.json`` that every verb reads, from the files alone.

``anatosynth dataset init FOLDER`` pairs images with label maps and writes ``FOLDER/dataset.json``:

* **imagesTr/ + labelsTr/** — label ``labelsTr/CASE.nii.gz`` pairs with ``imagesTr/CASE.nii.gz`` or nnU-Net's
  ``imagesTr/CASE_0000.nii.gz``;
* **a flat folder** — each file's name says what it is: a label map has a label marker as a prefix
  (``label_``, ``labels_``, ``seg_``, ``mask_``, ``gt_``) or suffix (``_label``, ``_labels``, ``_seg``,
  ``_mask``, ``_gt``, ``_segmentation``); an image has an image marker (prefix ``img_``, ``image_``; suffix
  ``_img``, ``_image``, ``_0000``) or none at all. Removing the marker gives the case name, e.g.
  ``img_07.nii.gz`` + ``label_07.nii.gz`` → case ``07``; ``liver3.nii.gz`` + ``liver3_seg.nii.gz`` → ``liver3``.

Label names come from ``--labels labels.json`` (or a ``labels.json`` in the folder), else from the ids
present in the label maps (``label_1``, ``label_2``, …: rename them in the file). An unpaired file, two
images or two labels for one case, or no pair at all is one clear error naming the file, and nothing is
written.
"""

from __future__ import annotations

import json
from pathlib import Path

from anatosynth.errors import InputError
from anatosynth.io.datasets import case_name, read_labels_json
from anatosynth.io.volume import NIFTI_SUFFIXES, atomic_write_text, check_output_file, load_label

__all__ = ["pair_files", "init_dataset", "LABEL_MARKERS", "IMAGE_MARKERS", "PAIRING_RULES"]

PAIRING_RULES = """pairing rules:
  imagesTr/ + labelsTr/: labelsTr/CASE.nii.gz pairs with imagesTr/CASE.nii.gz or imagesTr/CASE_0000.nii.gz
  flat folder: a label map's name has a label marker, as prefix (label_ labels_ seg_ mask_ gt_) or
    suffix (_label _labels _seg _mask _gt _segmentation); an image's name has an image marker (prefix img_
    image_, suffix _img _image _0000) or none; without its marker a name is the case name:
      img_07.nii.gz + label_07.nii.gz -> case 07;  liver3.nii.gz + liver3_seg.nii.gz -> case liver3
  an unpaired file, or two images or two label maps for one case, is an error and nothing is written"""

LABEL_MARKERS = (("label_", "labels_", "seg_", "mask_", "gt_"),
                 ("_label", "_labels", "_seg", "_mask", "_gt", "_segmentation"))
IMAGE_MARKERS = (("img_", "image_"), ("_img", "_image", "_0000"))


def _split_marker(stem: str, markers: tuple[tuple[str, ...], tuple[str, ...]]) -> str | None:
    """``stem`` without its marker (prefix or suffix, case-insensitive), or None when it has none."""
    low = stem.lower()
    for prefix in markers[0]:
        if low.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix):]
    for suffix in markers[1]:
        if low.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def _nifti(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))


def pair_files(folder: Path) -> tuple[list[tuple[str, Path, Path]], str]:
    """``(case, image, label)`` triples of ``folder`` and the layout found (``imagesTr/labelsTr`` or ``flat``).

    Raises:
        InputError: an unpaired or ambiguous file, or no pair (one line, naming the file).
    """
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if images_dir.is_dir() and labels_dir.is_dir():
        images = {case_name(p, channel_suffix=True): p for p in _nifti(images_dir)}
        pairs = []
        for lab in _nifti(labels_dir):
            name = case_name(lab)
            if name not in images:
                raise InputError(lab, f"no image for it in imagesTr/ (expected {name}.nii.gz or {name}_0000.nii.gz)")
            pairs.append((name, images.pop(name), lab))
        if images:
            extra = sorted(images.values())
            raise InputError(extra[0], f"no label map for it in labelsTr/{_more([p.name for p in extra[1:]], 'more')}")
        if not pairs:
            raise InputError(labels_dir, "no NIfTI label maps (.nii/.nii.gz)")
        return pairs, "imagesTr/labelsTr"
    found: dict[str, dict[str, Path]] = {}
    for path in _nifti(folder):
        stem = case_name(path)
        label_case = _split_marker(stem, LABEL_MARKERS)
        kind, case = ("label", label_case) if label_case else ("image", _split_marker(stem, IMAGE_MARKERS) or stem)
        slot = found.setdefault(case, {})
        if kind in slot:
            raise InputError(path, f"a second {kind} for case {case!r} (also {slot[kind].name}); a case needs one "
                                   "image and one label map")
        slot[kind] = path
    unpaired = [(case, slot) for case, slot in sorted(found.items()) if set(slot) != {"image", "label"}]
    if unpaired:
        case, slot = unpaired[0]
        have = next(iter(slot.values()))
        need = "label map" if "image" in slot else "image"
        more = _more([next(iter(s.values())).name for _, s in unpaired[1:]], "more unpaired")
        raise InputError(have, f"no {need} pairs with it (case {case!r}){more}; rules: anatosynth dataset init --help")
    if not found:
        raise InputError(folder, "no NIfTI files (.nii/.nii.gz) and no imagesTr/ + labelsTr/ folders")
    return [(case, slot["image"], slot["label"]) for case, slot in sorted(found.items())], "flat"


def _more(names: list[str], what: str) -> str:
    """``; 3 more: a.nii.gz, b.nii.gz …``: the other unpaired files after the one an error names ('' for none)."""
    if not names:
        return ""
    return f"; {len(names)} {what}: {', '.join(names[:2])}{' …' if len(names) > 2 else ''}"


def _ids_present(labels: list[Path]) -> list[int]:
    """The label ids in any of the maps (read as every verb reads them: integral values checked)."""
    import numpy as np

    ids: set[int] = set()
    for path in labels:
        ids |= {int(v) for v in np.unique(load_label(path).array) if v > 0}
    return sorted(ids)


def init_dataset(folder: str | Path, labels: str | Path | None = None, modality: str | None = None,
                 overwrite: bool = False) -> tuple[Path, dict]:
    """Write ``folder/dataset.json`` (MSD layout) for the paired files of ``folder``; returns its path and content.

    Raises:
        InputError: no folder, a dataset.json already there (without ``overwrite``), pairing errors, bad labels.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    out = folder / "dataset.json"
    if out.exists() and not overwrite:
        raise InputError(out, "exists already; pass --overwrite to write it again")
    check_output_file(out)
    pairs, layout = pair_files(folder)
    if labels is None and (folder / "labels.json").is_file():
        labels = folder / "labels.json"
    if labels is not None:
        names = read_labels_json(labels)
        source = f"labels from {Path(labels).name}"
        missing = [i for i in _ids_present([lab for _, _, lab in pairs]) if i not in names]
        if missing:
            from anatosynth.io.volume import unknown_ids_message

            raise InputError(labels, unknown_ids_message(missing) + " (the label maps hold them)")
    else:
        names = {0: "background", **{i: f"label_{i}" for i in _ids_present([lab for _, _, lab in pairs])}}
        source = "labels named by the ids present (label_N): rename them in dataset.json or pass --labels"
    record = {
        "name": folder.resolve().name,
        "description": f"written by anatosynth dataset init ({layout} layout; {source})",
        "modality": {"0": modality} if modality else {},
        "labels": {str(k): v for k, v in sorted(names.items())},
        "numTraining": len(pairs),
        "training": [{"image": f"./{img.relative_to(folder).as_posix()}",
                      "label": f"./{lab.relative_to(folder).as_posix()}"} for _, img, lab in pairs],
    }
    if not modality:
        del record["modality"]
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    return out, {**record, "layout": layout, "label_source": source}
