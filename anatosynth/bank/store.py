"""Bank files: one zip (suggested suffix ``.bank``) holding exactly two entries.

* ``manifest.json`` — format name, format version, spacing, frame, subject ids, organs with their
  anchors and per-subject shape records (mask shape, byte range, origin, centroid, volume, axes,
  extent), edges, a small ``meta`` block, and the SHA-256 of the mask blob;
* ``masks.npy`` — one flat ``uint8`` array: every organ mask, bit-packed with :func:`numpy.packbits`
  (C order), concatenated in manifest order. Loaded with ``allow_pickle=False``.

Files are written atomically with fixed zip timestamps, so the same bank gives the same bytes.
A damaged file, a foreign zip or an unknown format version fails with one line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from anatosynth.bank.model import BANK_FORMAT_VERSION, Edge, Organ, OrganShape, ShapeBank
from anatosynth.errors import InputError
from anatosynth.io.volume import atomic_write_bytes

__all__ = ["FORMAT_NAME", "MANIFEST", "MASKS", "save_bank", "read_bank", "read_raw", "to_manifest"]

FORMAT_NAME = "anatosynth-bank"
MANIFEST = "manifest.json"
MASKS = "masks.npy"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _floats(a) -> list:
    return np.round(np.asarray(a, dtype=np.float64), 6).tolist()


def to_manifest(bank: ShapeBank) -> tuple[dict, np.ndarray]:
    """The manifest dict and the packed mask blob of a bank."""
    chunks, offset, organs = [], 0, []
    for organ in bank.organs:
        shapes = []
        for s in organ.shapes:
            packed = np.packbits(np.ascontiguousarray(s.mask, dtype=bool).ravel())
            chunks.append(packed)
            shapes.append({"subject": s.subject, "shape": [int(v) for v in s.mask.shape], "offset": offset,
                           "nbytes": int(packed.size), "origin_mm": _floats(s.origin_mm),
                           "centroid_mm": _floats(s.centroid_mm), "volume_ml": round(float(s.volume_ml), 6),
                           "axes": _floats(s.axes), "extent_mm": _floats(s.extent_mm)})
            offset += int(packed.size)
        organs.append({"name": organ.name, "label": int(organ.label), "anchor_mean_mm": _floats(organ.anchor_mean_mm),
                       "anchor_cov_mm": _floats(organ.anchor_cov_mm), "shapes": shapes})
    edges = [{"a": e.a, "b": e.b, "n_subjects": int(e.n_subjects), "contact": round(float(e.contact), 6),
              "direction": _floats(e.direction), "consistency": round(float(e.consistency), 6),
              "offset_mean_mm": _floats(e.offset_mean_mm), "offset_cov_mm": _floats(e.offset_cov_mm),
              "min_gap_mm": round(float(e.min_gap_mm), 6), "overlap": e.overlap} for e in bank.edges]
    blob = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    manifest = {"format": FORMAT_NAME, "version": BANK_FORMAT_VERSION,
                "spacing": [float(v) for v in bank.spacing], "frame": bank.frame,
                "subjects": list(bank.subjects), "organs": organs, "edges": edges, "meta": bank.meta,
                "masks_sha256": hashlib.sha256(blob.tobytes()).hexdigest()}
    return manifest, blob


def save_bank(bank: ShapeBank, path: str | Path) -> Path:
    """Write ``bank`` to one file, atomically; same bank → same bytes."""
    manifest, blob = to_manifest(bank)
    npy = io.BytesIO()
    np.save(npy, blob, allow_pickle=False)
    text = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in ((MANIFEST, text), (MASKS, npy.getvalue())):
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)

    return atomic_write_bytes(path, write)


def read_raw(path: str | Path, strict: bool = True) -> tuple[dict, np.ndarray, list[str]]:
    """Manifest, mask blob and the list of zip entries, checking integrity but not meaning.

    Args:
        path: bank file.
        strict: also require a flat ``uint8`` mask blob matching the manifest checksum (the audit
            passes False so that it can report such problems as violations).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "bank file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a bank file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if MANIFEST not in names or MASKS not in names:
                raise InputError(path, f"not an anatosynth bank (needs {MANIFEST} and {MASKS})")
            text = zf.read(MANIFEST)
            raw = zf.read(MASKS)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        raise InputError(path, f"damaged or not a bank file ({err.__class__.__name__}: {err})") from None
    except zipfile.zlib.error as err:  # type: ignore[attr-defined]
        raise InputError(path, f"damaged bank file (corrupt compressed data: {err})") from None
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"damaged bank manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise InputError(path, f"not an anatosynth bank (manifest format is not {FORMAT_NAME!r})")
    version = manifest.get("version")
    if version != BANK_FORMAT_VERSION:
        raise InputError(path, f"bank format version {version!r} is not supported "
                               f"(this anatosynth reads version {BANK_FORMAT_VERSION})")
    try:
        blob = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # includes pickled object arrays
        raise InputError(path, f"damaged mask data ({err})") from None
    if not strict:
        return manifest, blob, names
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise InputError(path, f"mask data must be a flat uint8 array, found {blob.dtype} {blob.shape}")
    if hashlib.sha256(blob.tobytes()).hexdigest() != manifest.get("masks_sha256"):
        raise InputError(path, "mask data do not match the manifest checksum (damaged file)")
    return manifest, blob, names


def _arr(x, shape=None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a.reshape(shape) if shape else a


def read_bank(path: str | Path) -> ShapeBank:
    """Load a bank file (see module docstring); any damage is an :class:`InputError` naming the file."""
    manifest, blob, _ = read_raw(path)
    try:
        organs = []
        for o in manifest["organs"]:
            shapes = []
            for s in o["shapes"]:
                shape = tuple(int(v) for v in s["shape"])
                n = int(np.prod(shape))
                chunk = blob[int(s["offset"]):int(s["offset"]) + int(s["nbytes"])]
                if chunk.size * 8 < n:
                    raise ValueError(f"mask of {o['name']} is truncated")
                mask = np.unpackbits(chunk, count=n).reshape(shape).view(bool)
                shapes.append(OrganShape(str(s["subject"]), mask, _arr(s["origin_mm"]), _arr(s["centroid_mm"]),
                                         float(s["volume_ml"]), _arr(s["axes"], (3, 3)), _arr(s["extent_mm"])))
            organs.append(Organ(str(o["name"]), int(o["label"]), shapes, _arr(o["anchor_mean_mm"]),
                                _arr(o["anchor_cov_mm"], (3, 3))))
        edges = [Edge(str(e["a"]), str(e["b"]), int(e["n_subjects"]), float(e["contact"]), _arr(e["direction"]),
                      float(e["consistency"]), _arr(e["offset_mean_mm"]), _arr(e["offset_cov_mm"], (3, 3)),
                      float(e["min_gap_mm"]), str(e["overlap"])) for e in manifest["edges"]]
        sx, sy, sz = (float(v) for v in manifest["spacing"])  # a wrong count is a ValueError: damaged
        return ShapeBank((sx, sy, sz), [str(s) for s in manifest["subjects"]],
                         organs, edges, str(manifest.get("frame", "body")), int(manifest["version"]),
                         dict(manifest.get("meta", {})))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputError(path, f"damaged bank manifest ({err.__class__.__name__}: {err})") from None
