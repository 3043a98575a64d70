"""``bank build`` and ``bank merge``: banks from label maps, and banks joined by organ name.

Building reads any layout :func:`anatosynth.io.read_dataset` accepts, maps label names onto the
canonical vocabulary (:func:`~anatosynth.bank.names.canonical_name`), picks K subjects (named, or
drawn by seed), canonicalises each (RAS, bank spacing), cuts it into organ shapes in its body frame
(:mod:`anatosynth.bank.shapes`) and computes anchors and graph (:mod:`anatosynth.bank.graph`).

De-identification: only masks and derived numbers are kept. Subject ids are
``sha256(salt ":" case name)[:16]`` with the salt given by ``--salt``, or by default the SHA-256 of
the subject's canonical label content, which only someone already holding the label map can know.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from anatosynth.bank.graph import assemble_bank
from anatosynth.bank.model import OrganShape, ShapeBank
from anatosynth.bank.names import canonical_name
from anatosynth.bank.shapes import subject_shapes
from anatosynth.errors import ConfigError, InputError

__all__ = ["SourceCase", "collect_cases", "pick_cases", "build_bank", "merge_banks", "subject_id"]


@dataclass
class SourceCase:
    """A label map to read, with its dataset's id → canonical organ name map."""

    name: str
    path: Path
    organs: dict[int, str]
    label_names: dict[int, str]


def canonical_ids(labels: dict[int, str], source: Path) -> dict[int, str]:
    """id → canonical name for the foreground ids; two ids meaning one organ is an error."""
    out: dict[int, str] = {}
    seen: dict[str, tuple[int, str]] = {}
    for ident, raw in sorted(labels.items()):
        if ident == 0:
            continue
        canon = canonical_name(raw)
        if not canon or canon == "background":
            continue
        if canon in seen:
            other, other_raw = seen[canon]
            raise InputError(source, f"labels {other_raw!r} (id {other}) and {raw!r} (id {ident}) both mean "
                                     f"organ {canon!r}; give them one id or rename one")
        seen[canon] = (ident, raw)
        out[ident] = canon
    if not out:
        raise InputError(source, "no foreground label names")
    return out


def collect_cases(sources: Sequence[str | Path], labels: str | Path | None = None) -> list[SourceCase]:
    """All labelled cases of the given sources (files, folders, dataset folders or JSON files)."""
    from anatosynth.io import read_dataset

    cases: list[SourceCase] = []
    for src in sources:
        ds = read_dataset(src, labels)
        organs = canonical_ids(ds.labels, Path(labels) if labels else ds.root)
        found = [c for c in ds.cases if c.label is not None]
        if not found:
            raise InputError(src, "no label maps found")
        cases += [SourceCase(c.name, Path(c.label), organs, ds.labels) for c in found]
    return cases


def pick_cases(cases: list[SourceCase], k: int, seed: int, names: Sequence[str] | None = None) -> list[SourceCase]:
    """The named cases, or ``k`` cases drawn without replacement by ``seed`` (in source order)."""
    if names:
        by_name: dict[str, SourceCase] = {}
        for c in cases:
            by_name.setdefault(c.name, c)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ConfigError(f"--cases: not among the {len(cases)} given label maps: {', '.join(missing)}")
        return [by_name[n] for n in names]
    if k < 1:
        raise ConfigError(f"--subjects must be at least 1, got {k}")
    if k > len(cases):
        raise ConfigError(f"--subjects {k} is more than the {len(cases)} label maps given")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    chosen = np.sort(rng.choice(len(cases), size=k, replace=False))
    return [cases[i] for i in chosen]


def subject_id(name: str, salt: bytes) -> str:
    """Salted hash of a case name: 16 hex digits, no trace of the name."""
    return hashlib.sha256(salt + b":" + name.encode("utf-8")).hexdigest()[:16]


def _load_subject(case: SourceCase, spacing, salt: str | None) -> tuple[str, dict[str, OrganShape], str, dict]:
    from anatosynth.io import load_label
    from anatosynth.io.canonical import resample_label, to_ras

    vol = load_label(case.path, require_foreground=True, names=case.label_names)
    vol = resample_label(to_ras(vol), spacing)
    arr = np.ascontiguousarray(vol.array, dtype=np.int32)
    key = salt.encode("utf-8") if salt else hashlib.sha256(arr.tobytes()).digest()
    sid = subject_id(case.name, key)
    cut = subject_shapes(arr, spacing, case.organs, sid)
    if not cut.shapes:
        raise InputError(case.path, "label map holds none of the named organs")
    return sid, cut.shapes, cut.frame, cut.dropped_voxels


def build_bank(sources: Sequence[str | Path], labels: str | Path | None = None, subjects: int = 5,
               spacing=(1.5, 1.5, 2.0), seed: int = 0, cases: Sequence[str] | None = None,
               salt: str | None = None, progress: bool = True) -> ShapeBank:
    """Build a bank from label maps (see module docstring)."""
    from tqdm import tqdm

    sp = tuple(float(v) for v in spacing)
    chosen = pick_cases(collect_cases(sources, labels), subjects, seed, cases)
    shapes: dict[str, dict[str, OrganShape]] = {}
    frames: dict[str, str] = {}
    dropped = 0
    for case in tqdm(chosen, desc="bank subjects", unit="subject", disable=not progress):
        sid, organ_shapes, frame, lost = _load_subject(case, sp, salt)
        if sid in shapes:
            raise InputError(case.path, "the same subject is given twice")
        shapes[sid], frames[sid] = organ_shapes, frame
        dropped += sum(lost.values())
    meta = {"source": "label-maps", "seed": int(seed), "n_subjects": len(shapes), "frames": frames,
            "fragment_voxels_dropped": int(dropped)}
    return assemble_bank(sp, shapes, meta, progress=progress)


def merge_banks(banks: Sequence[ShapeBank], progress: bool = False) -> ShapeBank:
    """One bank holding every subject of ``banks``; organs joined by canonical name, graph recomputed."""
    if not banks:
        raise ConfigError("nothing to merge")
    sp = banks[0].spacing
    for b in banks[1:]:
        if not np.allclose(b.spacing, sp, rtol=1e-6):
            raise ConfigError(f"banks have different spacings {tuple(sp)} and {tuple(b.spacing)}; "
                              "rebuild them with one --spacing")
    shapes: dict[str, dict[str, OrganShape]] = {}
    frames: dict[str, str] = {}
    for b in banks:
        for sid in b.subjects:
            if sid in shapes:
                raise ConfigError(f"subject {sid} is in more than one bank (the same subject twice)")
            shapes[sid] = b.shapes_of(sid)
            frames[sid] = dict(b.meta.get("frames", {})).get(sid, "unknown") \
                if isinstance(b.meta.get("frames"), dict) else "unknown"
    meta = {"source": "merge", "n_banks": len(banks), "n_subjects": len(shapes), "frames": frames}
    return assemble_bank(sp, shapes, meta, progress=progress)
