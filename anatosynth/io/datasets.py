"""Dataset readers: MSD, nnU-Net raw, MONAI datalist JSON, and a plain folder of label maps.

All readers return a :class:`Dataset`: cases with absolute paths, a label id→name map and the
modality. Paths listed in JSON files are resolved relative to that file's folder and must stay
inside the dataset folder (no ``..`` or absolute escapes); listed files must exist.

Layouts recognised by :func:`read_dataset`:

* **MSD** — ``dataset.json`` with ``labels`` as id→name (``{"0": "background", "1": "liver"}``),
  ``modality`` and ``training: [{"image": ..., "label": ...}]``.
* **nnU-Net raw** — ``dataset.json`` with ``labels`` as name→id and ``channel_names``; cases are
  ``imagesTr/CASE_0000.nii.gz`` with ``labelsTr/CASE.nii.gz``.
* **MONAI datalist** — any JSON with ``training`` (and optional ``validation``) lists; label names come
  from its ``labels`` key or a ``labels.json`` beside it.
* **label folder** — a folder (or a single file) of label maps with ``labels.json`` (id→name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from anatosynth.errors import InputError
from anatosynth.io.volume import NIFTI_SUFFIXES

__all__ = ["Case", "Dataset", "read_dataset", "read_labels_json", "case_name"]


@dataclass
class Case:
    """One subject: an image and/or a label map (absolute paths)."""

    name: str
    image: Path | None = None
    label: Path | None = None
    split: str = "training"


@dataclass
class Dataset:
    """A dataset's cases, label names (id→name, background 0 included) and modality."""

    root: Path
    cases: list[Case]
    labels: dict[int, str]
    modality: str | None = None
    layout: str = "msd"
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def foreground(self) -> dict[int, str]:
        return {k: v for k, v in self.labels.items() if k != 0}

    def require_images(self, verb: str) -> Dataset:
        """Raise one clear line when no case has an image (e.g. a folder of label maps given to ``verb``)."""
        if not any(c.image is not None for c in self.cases):
            if self.layout == "labels":
                raise InputError(self.root, f"read as a folder of label maps only; {verb} needs images paired with "
                                            f"them: anatosynth dataset init {self.root} pairs them (rules: "
                                            "anatosynth dataset init --help)")
            raise InputError(self.root, f"no case has an image; {verb} needs scans with labels (an MSD, nnU-Net "
                                        "or datalist dataset)")
        return self

    def select(self, names: list[str]) -> Dataset:
        """Keep only the named cases (in the given order); unknown names are an error."""
        by_name = {c.name: c for c in self.cases}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(self.root, f"cases not in dataset: {', '.join(missing)}")
        return Dataset(self.root, [by_name[n] for n in names], self.labels, self.modality, self.layout,
                       self.name, self.extra)


def case_name(path: Path, channel_suffix: bool = False) -> str:
    """File name without the NIfTI suffix (and, with ``channel_suffix``, without nnU-Net's ``_0000``)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if channel_suffix and len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]
    return name


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"invalid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object at top level")
    return data


def _inside(root: Path, rel: str, source: Path) -> Path:
    """Resolve a path from a dataset file, refusing anything outside ``root``."""
    if not isinstance(rel, str) or not rel:
        raise InputError(source, f"invalid path entry {rel!r}")
    candidate = (root / rel).resolve()
    root_resolved = root.resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise InputError(source, f"path {rel!r} escapes the dataset folder {root}")
    if not candidate.exists():
        raise InputError(source, f"listed file {rel!r} does not exist")
    return candidate


def _id_to_name(labels: dict, source: Path) -> dict[int, str]:
    """Normalise a ``labels`` entry (id→name as in MSD, or name→id as in nnU-Net) to id→name."""
    out: dict[int, str] = {}
    if not isinstance(labels, dict) or not labels:
        raise InputError(source, "'labels' must be a non-empty object")
    keys_numeric = all(str(k).strip().lstrip("-").isdigit() for k in labels)
    for k, v in labels.items():
        if keys_numeric:
            ident, name = int(k), v
        else:  # nnU-Net: name → id (region-based lists are not supported)
            if isinstance(v, list):
                raise InputError(source, f"region-based label {k!r} (a list of ids) is not supported")
            ident, name = v, k
        if not isinstance(name, str) or not isinstance(ident, int) or isinstance(ident, bool) or ident < 0:
            shown = f"a mapping of {len(v)} entries" if isinstance(v, (dict, list)) else repr(v)[:40]
            nested = " (a nested mapping: use the inner one as labels.json)" if isinstance(v, dict) else ""
            raise InputError(source, f"invalid label entry {str(k)[:40]!r}: {shown}; expected id → name{nested}")
        if ident in out:
            raise InputError(source, f"label id {ident} is named twice")
        out[ident] = name
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


def read_labels_json(path: str | Path) -> dict[int, str]:
    """Read a ``labels.json`` (id→name or name→id) as id→name with background 0."""
    path = Path(path)
    data = _load_json(path)
    return _id_to_name(data.get("labels", data), path)


def _modality(data: dict) -> str | None:
    mod = data.get("modality") or data.get("channel_names")
    if isinstance(mod, dict) and mod:
        return str(next(iter(mod.values())))
    if isinstance(mod, str):
        return mod
    return None


def _entries(data: dict, key: str, root: Path, source: Path) -> list[Case]:
    cases = []
    entries = data.get(key, [])
    if not isinstance(entries, list):
        raise InputError(source, f"'{key}' must be a list")
    for entry in entries:
        if isinstance(entry, str):  # MSD test lists hold bare image paths
            entry = {"image": entry}
        if not isinstance(entry, dict):
            raise InputError(source, f"invalid entry in '{key}': {entry!r}")
        image = entry.get("image")
        if isinstance(image, list):
            if len(image) != 1:
                raise InputError(source, "multi-channel images are not supported yet")
            image = image[0]
        img = _inside(root, image, source) if image else None
        lab = _inside(root, entry["label"], source) if entry.get("label") else None
        if lab is not None:
            name = case_name(lab)
        elif img is not None:
            name = case_name(img, channel_suffix=True)
        else:
            raise InputError(source, f"entry in '{key}' has neither image nor label: {entry!r}")
        cases.append(Case(name, img, lab, key))
    return cases


def _read_nnunet(root: Path, data: dict, source: Path) -> Dataset:
    labels = _id_to_name(data["labels"], source)
    ending = data.get("file_ending", ".nii.gz")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not labels_dir.is_dir():
        raise InputError(root, "nnU-Net dataset has no labelsTr folder")
    cases = []
    for lab in sorted(labels_dir.glob(f"*{ending}")):
        name = lab.name[: -len(ending)]
        img = images_dir / f"{name}_0000{ending}"
        if not img.exists():
            raise InputError(lab, f"no matching image {img.name} in imagesTr")
        cases.append(Case(name, img.resolve(), lab.resolve()))
    if not cases:
        raise InputError(root, f"nnU-Net dataset has no label files ending in {ending}")
    return Dataset(root, cases, labels, _modality(data), "nnunet", str(data.get("name", root.name)))


def _read_json(source: Path, labels_override: dict[int, str] | None) -> Dataset:
    data = _load_json(source)
    root = source.parent
    labels_raw = data.get("labels")
    if "channel_names" in data and isinstance(labels_raw, dict) and labels_raw and \
            not all(str(k).isdigit() for k in labels_raw):
        return _read_nnunet(root, data, source)
    if "training" not in data:
        raise InputError(source, "no 'training' list (expected an MSD dataset.json or a MONAI datalist)")
    cases = _entries(data, "training", root, source) + _entries(data, "validation", root, source)
    if not cases:
        raise InputError(source, "no cases: the 'training' list is empty")
    if labels_override is not None:
        labels = labels_override
    elif labels_raw is not None:
        labels = _id_to_name(labels_raw, source)
    elif (root / "labels.json").exists():
        labels = read_labels_json(root / "labels.json")
    else:
        raise InputError(source, "no label names: add 'labels' or a labels.json beside it")
    layout = "msd" if source.name == "dataset.json" else "datalist"
    return Dataset(root, cases, labels, _modality(data), layout, str(data.get("name", root.name)))


def _read_label_folder(path: Path, labels_override: dict[int, str] | None) -> Dataset:
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.name.lower().endswith(NIFTI_SUFFIXES))
    root = path.parent if path.is_file() else path
    if not files:
        if path.is_dir() and any((path / sub).is_dir() for sub in ("imagesTr", "labelsTr")):
            raise InputError(path / "dataset.json", f"not found: write it with anatosynth dataset init {path} "
                                                    "(pairs imagesTr/ with labelsTr/, names the labels)")
        raise InputError(path, "no NIfTI label maps (.nii/.nii.gz) found")
    if labels_override is not None:
        labels = labels_override
    elif (root / "labels.json").exists():
        labels = read_labels_json(root / "labels.json")
    else:
        raise InputError(path, f"no dataset.json and no label names: scans with label maps? anatosynth dataset init "
                               f"{path} pairs them; label maps only: pass --labels labels.json")
    cases = [Case(case_name(f), None, f.resolve()) for f in files]
    return Dataset(root, cases, labels, None, "labels", root.name)


def read_dataset(path: str | Path, labels: dict[int, str] | str | Path | None = None) -> Dataset:
    """Read any supported dataset layout (see module docstring).

    Args:
        path: a dataset folder, a dataset.json / datalist JSON, a folder of label maps, or one label map.
        labels: optional id→name map, or a labels.json path, overriding the dataset's own names.
    """
    path = Path(path)
    if isinstance(labels, (str, Path)):
        labels = read_labels_json(labels)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_file() and path.suffix.lower() == ".json":
        return _read_json(path, labels)
    if path.is_dir() and (path / "dataset.json").exists():
        return _read_json(path / "dataset.json", labels)
    return _read_label_folder(path, labels)
