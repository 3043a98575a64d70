"""``bank audit``: check that a bank file is label-only and de-identified.

A bank may hold exactly two entries (``manifest.json``, ``masks.npy``). The audit reports, as one
line each:

* any other zip entry (e.g. a planted image array);
* a mask blob that is not flat ``uint8``, or bytes not accounted for by the organ masks (gaps,
  trailing data, non-zero padding bits): the only places other data could hide;
* any manifest key outside the format's schema (e.g. ``descrip``, ``patient_name``, ``file``);
* any string that is not one of the format's own words: subject ids must be 16 hex digits, organ
  names lower-case snake words; and any string that looks like header text (dates, DICOM UIDs,
  file names or paths, NIfTI header fields).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from anatosynth.bank.store import MANIFEST, MASKS, read_raw

__all__ = ["audit_bank"]

_TOP = {"format", "version", "spacing", "frame", "subjects", "organs", "edges", "meta", "masks_sha256"}
_ORGAN = {"name", "label", "anchor_mean_mm", "anchor_cov_mm", "shapes"}
_SHAPE = {"subject", "shape", "offset", "nbytes", "origin_mm", "centroid_mm", "volume_ml", "axes", "extent_mm"}
_EDGE = {"a", "b", "n_subjects", "contact", "direction", "consistency", "offset_mean_mm", "offset_cov_mm",
         "min_gap_mm", "overlap"}
_META = {"source", "seed", "n_subjects", "frames", "fragment_voxels_dropped", "n_banks", "orientation"}
_ORIENTATION = {"action", "finding", "transform"}
_ACTIONS = {"fixed", "ignored"}
_FINDING = re.compile(r"^[a-z ,()-]{1,200}$")
_SOURCES = {"label-maps", "merge", "builtin:phantom"}
_FRAMES = {"reference-organs", "all-organs", "unknown"}

_SUBJECT = re.compile(r"^[0-9a-f]{16}$")
_HASH = re.compile(r"^([0-9a-f]{16}|[0-9a-f]{64})$")
_ORGAN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SUSPICIOUS = [
    (re.compile(r"\d+(\.\d+){3,}"), "a DICOM UID"),
    (re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|(19|20)\d{6}"), "a date"),
    (re.compile(r"\.(nii|gz|dcm|nrrd|mha|mhd|json|npz|npy)\b|[/\\]", re.I), "a file name or path"),
    (re.compile(r"descrip|aux_file|db_name|intent_name|patient|accession|institution", re.I), "header text"),
]


def _numbers(value, where: str, out: list[str]) -> None:
    """Report non-numeric leaves of a (nested) list of numbers."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            _numbers(v, f"{where}[{i}]", out)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        out.append(f"{where}: expected a number, found {type(value).__name__} {str(value)[:40]!r}")


def _keys(obj, allowed: set[str], where: str, out: list[str]) -> dict:
    if not isinstance(obj, dict):
        out.append(f"{where}: expected an object")
        return {}
    for k in sorted(set(obj) - allowed):
        out.append(f"{where}: unexpected key {k!r} (not part of the bank format)")
    return obj


def _strings(obj, where: str, out: list[str]) -> None:
    """Flag every string anywhere in the manifest that looks like header text."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _strings(k, f"{where} key", out)
            _strings(v, f"{where}.{k}", out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _strings(v, f"{where}[{i}]", out)
    elif isinstance(obj, str) and not _HASH.match(obj):  # hashes are checked by the schema
        for pattern, what in _SUSPICIOUS:
            if pattern.search(obj) and obj not in _SOURCES:
                out.append(f"{where}: string {obj[:60]!r} looks like {what}")
                break


def _check_manifest(m: dict, out: list[str]) -> list[tuple[str, list[int], int, int]]:
    """Schema and string checks; returns (where, shape, offset, nbytes) of every mask."""
    _keys(m, _TOP, "manifest", out)
    masks = []
    subjects = m.get("subjects", [])
    for i, s in enumerate(subjects if isinstance(subjects, list) else []):
        if not isinstance(s, str) or not _SUBJECT.match(s):
            out.append(f"subjects[{i}]: {str(s)[:40]!r} is not a salted-hash id (16 hex digits)")
    if m.get("frame") != "body":
        out.append(f"frame: unexpected value {str(m.get('frame'))[:40]!r}")
    _numbers(m.get("spacing", []), "spacing", out)
    names = set()
    for i, o in enumerate(m.get("organs", [])):
        o = _keys(o, _ORGAN, f"organs[{i}]", out)
        name = o.get("name")
        if not isinstance(name, str) or not _ORGAN_NAME.match(name):
            out.append(f"organs[{i}].name: {str(name)[:40]!r} is not an organ name (lower-case snake words)")
        names.add(name)
        for key in ("label", "anchor_mean_mm", "anchor_cov_mm"):
            _numbers(o.get(key), f"organs[{i}].{key}", out)
        for j, s in enumerate(o.get("shapes", [])):
            where = f"organs[{i}].shapes[{j}]"
            s = _keys(s, _SHAPE, where, out)
            if s.get("subject") not in subjects:
                out.append(f"{where}.subject: not one of the bank's subject ids")
            for key in _SHAPE - {"subject"}:
                _numbers(s.get(key), f"{where}.{key}", out)
            try:
                masks.append((where, [int(v) for v in s["shape"]], int(s["offset"]), int(s["nbytes"])))
            except (KeyError, TypeError, ValueError):
                out.append(f"{where}: mask record is incomplete")
    for i, e in enumerate(m.get("edges", [])):
        e = _keys(e, _EDGE, f"edges[{i}]", out)
        for key in ("a", "b"):
            if e.get(key) not in names:
                out.append(f"edges[{i}].{key}: {str(e.get(key))[:40]!r} is not an organ of the bank")
        if e.get("overlap") not in ("allowed", "forbidden"):
            out.append(f"edges[{i}].overlap: unexpected value {str(e.get('overlap'))[:40]!r}")
        for key in _EDGE - {"a", "b", "overlap"}:
            _numbers(e.get(key), f"edges[{i}].{key}", out)
    meta = _keys(m.get("meta", {}), _META, "meta", out)
    if "source" in meta and meta["source"] not in _SOURCES:
        out.append(f"meta.source: unexpected value {str(meta['source'])[:40]!r}")
    frames = meta.get("frames", {})
    if isinstance(frames, dict):
        for k, v in frames.items():
            if k not in subjects or v not in _FRAMES:
                out.append(f"meta.frames: unexpected entry {str(k)[:20]!r}: {str(v)[:20]!r}")
    else:
        out.append("meta.frames: expected an object")
    _check_orientation(meta.get("orientation", {}), subjects, out)
    for key in ("seed", "n_subjects", "fragment_voxels_dropped", "n_banks"):
        if key in meta:
            _numbers(meta[key], f"meta.{key}", out)
    _strings(m, "manifest", out)
    return masks


def _check_orientation(records, subjects, out: list[str]) -> None:
    """``meta.orientation``: subject id → {action, finding (fixed words), transform (3x3 of -1/0/1)}."""
    if not isinstance(records, dict):
        out.append("meta.orientation: expected an object")
        return
    for sid, rec in records.items():
        where = f"meta.orientation[{str(sid)[:20]!r}]"
        if sid not in subjects:
            out.append(f"{where}: not one of the bank's subject ids")
        rec = _keys(rec, _ORIENTATION, where, out)
        if rec.get("action") not in _ACTIONS:
            out.append(f"{where}.action: unexpected value {str(rec.get('action'))[:40]!r}")
        if not isinstance(rec.get("finding"), str) or not _FINDING.match(rec["finding"]):
            out.append(f"{where}.finding: {str(rec.get('finding'))[:40]!r} is not an orientation finding")
        t = rec.get("transform")
        if not (isinstance(t, list) and len(t) == 3 and all(isinstance(r, list) and len(r) == 3 and
                                                            all(v in (-1, 0, 1) for v in r) for r in t)):
            out.append(f"{where}.transform: expected a 3x3 signed permutation")


def _check_blob(blob: np.ndarray, masks: list[tuple[str, list[int], int, int]], out: list[str]) -> None:
    """Every byte of the mask blob must belong to exactly one mask, with zero padding bits."""
    pos = 0
    for where, shape, offset, nbytes in sorted(masks, key=lambda t: t[2]):
        n = int(np.prod(shape))
        if nbytes != (n + 7) // 8:
            out.append(f"{where}: {nbytes} bytes stored for a {n}-voxel mask")
        if offset != pos:
            out.append(f"{where}: mask data at byte {offset}, expected {pos} (unaccounted bytes)")
        pos = max(pos, offset + nbytes)
        pad = (8 - n % 8) % 8
        if pad and offset + nbytes <= blob.size and nbytes > 0:
            if int(blob[offset + nbytes - 1]) & ((1 << pad) - 1):
                out.append(f"{where}: non-zero padding bits after the mask")
    if pos != blob.size:
        out.append(f"{MASKS}: {blob.size - pos} bytes beyond the organ masks")


def audit_bank(path: str | Path) -> list[str]:
    """Violations of the bank's label-only, de-identified contract (empty list: clean).

    Raises:
        InputError: the file is not a readable bank at all.
    """
    manifest, blob, entries = read_raw(path, strict=False)
    out = [f"unexpected entry {e!r} in the bank file (only {MANIFEST} and {MASKS} are allowed)"
           for e in entries if e not in (MANIFEST, MASKS)]
    masks = _check_manifest(manifest, out)
    if blob.dtype != np.uint8 or blob.ndim != 1:
        out.append(f"{MASKS}: holds a {blob.dtype} array of shape {blob.shape}, not bit-packed masks "
                   "(possible image intensities)")
        return out
    if hashlib.sha256(blob.tobytes()).hexdigest() != manifest.get("masks_sha256"):
        out.append(f"{MASKS}: does not match the manifest checksum (changed after writing)")
    _check_blob(blob, masks, out)
    return out
