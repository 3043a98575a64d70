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
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anatosynth.bank.graph import assemble_bank
from anatosynth.bank.model import OrganShape, ShapeBank
from anatosynth.bank.names import canonical_name
from anatosynth.bank.orientation import (
    FIX_HINT,
    POLICIES,
    Finding,
    OrientationError,
    check_centroids,
    check_shapes,
    consensus_finding,
    describe_transform,
    fix_affine,
    label_centroids,
    named,
    reorient_shapes,
)
from anatosynth.bank.shapes import SubjectShapes, subject_shapes
from anatosynth.errors import ConfigError, InputError
from anatosynth.io.volume import Volume
from anatosynth.options import bar_disable

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
    from anatosynth.io.volume import screen_label_map

    cases: list[SourceCase] = []
    for src in sources:
        ds = read_dataset(src, labels)
        organs = canonical_ids(ds.labels, Path(labels) if labels else ds.root)
        found = [SourceCase(c.name, Path(c.label), organs, ds.labels) for c in ds.cases if c.label is not None]
        if not found:
            raise InputError(src, "no label maps found")
        for case in found:  # every file, not only those the seed picks: a stray image fails every build alike
            screen_label_map(case.path)
        cases += found
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


def _cut(case: SourceCase, vol, spacing, salt: str | None) -> tuple[str, SubjectShapes]:
    """Canonicalise one label map (RAS, bank spacing) and cut it into organ shapes in its body frame."""
    from anatosynth.io.canonical import resample_label, to_ras

    vol = resample_label(to_ras(vol), spacing)
    arr = np.ascontiguousarray(vol.array, dtype=np.int32)
    key = salt.encode("utf-8") if salt else hashlib.sha256(arr.tobytes()).digest()
    sid = subject_id(case.name, key)
    cut = subject_shapes(arr, spacing, case.organs, sid)
    if not cut.shapes:
        raise InputError(case.path, "label map holds none of the named organs")
    return sid, cut


def _notify(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def _orientation_record(finding: Finding, action: str) -> dict:
    """What goes into ``meta.orientation`` for a subject: fixed words and numbers, no file names."""
    return {"action": action, "finding": finding.diagnosis,
            "transform": np.asarray(finding.transform if finding.transform is not None else np.eye(3),
                                    dtype=int).tolist()}


def _oriented(finding: Finding, where: str, orientation: str, notify) -> tuple[dict | None, str | None]:
    """Apply the orientation policy to one subject: (record for meta, problem line or None)."""
    if finding.ok:
        return None, None
    if not finding.explained:
        notify(f"warning: {finding.message(where)}")
        return None, None
    if orientation == "ignore":
        notify(f"warning: {finding.message(where)} (ignored: --ignore-orientation)")
        return _orientation_record(finding, "ignored"), None
    if orientation == "fix" and not finding.alternatives:
        notify(f"note: {where}: {finding.diagnosis}; re-oriented (--fix-orientation)")
        return _orientation_record(finding, "fixed"), None
    hint = FIX_HINT if orientation == "check" else "fix the header (several orientations fit)"
    return None, finding.message(where, hint)


def _check_build_args(sources, subjects, spacing) -> tuple[list[str | Path], tuple[float, ...]]:
    """``build_bank``'s sources as a list and spacing as floats; a wrong type is one line naming the argument
    (Python callers; the CLI has parsed them already)."""
    from anatosynth.options import check_path

    if isinstance(sources, str) or hasattr(sources, "__fspath__"):
        sources = [sources]
    if not isinstance(sources, (list, tuple)) or not sources:
        raise ConfigError(f"build_bank: sources must be a folder or file path, or a list of them; got {sources!r}")
    for source in sources:
        check_path(source, "build_bank: each source", "a folder or file path")
    if isinstance(subjects, bool) or not hasattr(subjects, "__index__"):  # int or a numpy integer
        raise ConfigError(f"build_bank: subjects must be a whole number, got {subjects!r}")
    try:
        sp = tuple(float(v) for v in spacing)
        if len(sp) != 3:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"build_bank: spacing must be three numbers in mm, e.g. (1.5, 1.5, 2.0); "
                          f"got {spacing!r}") from None
    return list(sources), sp


def build_bank(sources: str | Path | Sequence[str | Path], labels: str | Path | None = None, subjects: int = 5,
               spacing=(1.5, 1.5, 2.0), seed: int = 0, cases: Sequence[str] | None = None,
               salt: str | None = None, progress: bool = True, orientation: str = "check",
               notify=_notify) -> ShapeBank:
    """Build a bank from label maps (see module docstring).

    Args:
        sources: a folder, file or dataset of label maps, or a list of them.
        orientation: ``"check"`` (a subject whose organs look flipped or swapped is an
            :class:`~anatosynth.bank.orientation.OrientationError`, nothing is built), ``"fix"``
            (re-orient such subjects and record it in ``meta.orientation``) or ``"ignore"`` (build
            as they are and record the warning).
        notify: receives warning lines (default: stderr).
    """
    from tqdm import tqdm

    from anatosynth.io import load_label

    if orientation not in POLICIES:
        raise ConfigError(f"orientation policy must be one of {', '.join(POLICIES)}, got {orientation!r}")
    sources, sp = _check_build_args(sources, subjects, spacing)
    chosen = pick_cases(collect_cases(sources, labels), subjects, seed, cases)
    _warn_unknown(sorted({raw for c in chosen for ident, raw in c.label_names.items() if ident}), notify)
    shapes: dict[str, dict[str, OrganShape]] = {}
    frames: dict[str, str] = {}
    records: dict[str, dict] = {}
    problems: list[str] = []
    dropped = 0
    for case in tqdm(chosen, desc="bank subjects", unit="subject", disable=bar_disable(progress)):
        vol = load_label(case.path, require_foreground=True, names=case.label_names)
        if problems:  # the build fails anyway: only check the rest, cheaply (centroids, no resampling)
            _, problem = _oriented(check_centroids(named(label_centroids(vol), case.organs)), str(case.path),
                                   orientation, notify)
            problems += [problem] if problem else []
            continue
        sid, cut = _cut(case, vol, sp, salt)
        finding = check_shapes(cut.shapes)
        record, problem = _oriented(finding, str(case.path), orientation, notify)
        if problem:
            problems.append(problem)
            continue
        if record and record["action"] == "fixed":
            assert finding.transform is not None  # "fixed" means the check found the transform
            sid, cut = _cut(case, Volume(vol.array, fix_affine(vol.affine, finding.transform)), sp, salt)
        if sid in shapes:
            raise InputError(case.path, "the same subject is given twice")
        if record:
            records[sid] = record
        shapes[sid], frames[sid] = cut.shapes, cut.frame
        dropped += sum(cut.dropped_voxels.values())
    if problems:
        raise OrientationError(problems)
    meta = {"source": "label-maps", "seed": int(seed), "n_subjects": len(shapes), "frames": frames,
            "fragment_voxels_dropped": int(dropped)}
    if records:
        meta["orientation"] = records
    return assemble_bank(sp, shapes, meta, progress=progress)


def _warn_unknown(names: Sequence[str], notify) -> None:
    """One warning line naming the organs that match no canonical name (no invariant or merge applies)."""
    from anatosynth.bank.names import unknown_organs

    unknown = unknown_organs(names)
    if unknown:
        shown = ", ".join(unknown[:6]) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
        notify(f"warning: {len(unknown)} organ name(s) match no canonical organ ({shown}): no anatomical "
               "invariant checks them and a merge joins them with nothing; rename them in labels.json if they "
               "are known organs in another language or spelling")


def merge_banks(banks: Sequence[ShapeBank], progress: bool = False, orientation: str = "check",
                names: Sequence[str] | None = None, notify=_notify, allow_disjoint: bool = False) -> ShapeBank:
    """One bank holding every subject of ``banks``; organs joined by canonical name, graph recomputed.

    Every subject is checked like in :func:`build_bank` (``orientation`` is the same policy; a fix
    mirrors or permutes the stored shapes), then each bank's consensus anchors are compared with the
    first bank's: two banks that disagree by an axis flip or swap are refused unless ``"ignore"``.

    Args:
        names: how to call each bank in messages (its file), default ``bank 1``, ``bank 2``, ...
        allow_disjoint: merge banks that share no organ (refused by default: usually one label scheme's names
            did not map to the canonical ones, e.g. ``Leber`` beside ``liver``).
    """
    if not banks:
        raise ConfigError("nothing to merge")
    names = list(names) if names else [f"bank {i + 1}" for i in range(len(banks))]
    for i in [*range(1, len(banks)), 0]:  # the banks added to the first one are the usual culprits
        b, name = banks[i], names[i]
        shared = {o.name for o in b.organs} & {o.name for j, other in enumerate(banks) if j != i for o in other.organs}
        if len(banks) > 1 and not shared and not allow_disjoint:
            raise ConfigError(f"{name} shares no organ with the other banks ({', '.join(o.name for o in b.organs[:4])}"
                              f"{' …' if len(b.organs) > 4 else ''}); rename its labels to canonical organ names, or "
                              "pass --allow-disjoint to merge them side by side")
    _warn_unknown(sorted({o.name for b in banks for o in b.organs}), notify)  # a merge that goes ahead says so
    if orientation not in POLICIES:
        raise ConfigError(f"orientation policy must be one of {', '.join(POLICIES)}, got {orientation!r}")
    sp = banks[0].spacing
    for b in banks[1:]:
        if not np.allclose(b.spacing, sp, rtol=1e-6):
            raise ConfigError(f"banks have different spacings {tuple(sp)} and {tuple(b.spacing)}; "
                              "rebuild them with one --spacing")
    shapes: dict[str, dict[str, OrganShape]] = {}
    frames: dict[str, str] = {}
    records: dict[str, dict] = {}
    problems: list[str] = []
    anchors: list[dict[str, np.ndarray]] = []
    for b, name in zip(banks, names):
        found_old = b.meta.get("orientation")
        old: dict = found_old if isinstance(found_old, dict) else {}
        own: dict[str, dict[str, OrganShape]] = {}
        for sid in b.subjects:
            if sid in shapes or sid in own:
                raise ConfigError(f"subject {sid} is in more than one bank (the same subject twice)")
            subject = b.shapes_of(sid)
            finding = check_shapes(subject)
            record, problem = _oriented(finding, f"{name}: subject {sid}", orientation, notify)
            if problem:
                problems.append(problem)
                continue
            if record and record["action"] == "fixed":
                assert finding.transform is not None  # "fixed" means the check found the transform
                try:
                    subject = reorient_shapes(subject, finding.transform, sp)
                except ValueError as err:
                    raise InputError(name, f"subject {sid}: {finding.diagnosis}, and {err}") from None
            if record or sid in old:
                records[sid] = record or old[sid]
            own[sid] = subject
            frames[sid] = dict(b.meta.get("frames", {})).get(sid, "unknown") \
                if isinstance(b.meta.get("frames"), dict) else "unknown"
        shapes.update(own)
        anchors.append({o: np.mean([s[o].centroid_mm for s in own.values() if o in s], axis=0)
                        for o in {o for s in own.values() for o in s}})
    if problems:
        raise OrientationError(problems)
    if orientation != "ignore":
        for i in range(1, len(banks)):
            t = consensus_finding(anchors[i], anchors[0])
            if t is not None:
                raise OrientationError([f"{names[i]}: {describe_transform(t)} relative to {names[0]} (consensus "
                                        f"anchors of their shared organs disagree by that transform) — {FIX_HINT}"])
    meta = {"source": "merge", "n_banks": len(banks), "n_subjects": len(shapes), "frames": frames}
    if records:
        meta["orientation"] = records
    return assemble_bank(sp, shapes, meta, progress=progress)
