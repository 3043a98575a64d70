"""Anatomical invariants per subject: catch label maps whose orientation header is wrong.

A wrong header (an axis flipped, two axes swapped) does not change the voxels, only which way is
"right", "anterior" and "superior" after canonicalisation to RAS. Relative organ positions then come
out mirrored or transposed in the body frame, and averaging such a subject with good ones cancels the
anchors. So before anchors are averaged, each subject's organ centroids (body-frame mm: RAS axes,
origin irrelevant because only differences are used) are checked against :data:`INVARIANTS`, a
table of relations that hold in every adult (e.g. the liver lies right of the spleen). A subject that
violates them in a pattern one signed axis permutation explains (an axis flip, a swap, ...) is
diagnosed with that transform; see docs/method.md for the table's sources and margins on real data.

Only centroids are used, so a check costs one pass over the label map.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from anatosynth.errors import InputError

__all__ = ["Invariant", "INVARIANTS", "AXIS_NAMES", "TOLERANCE_MM", "Finding", "OrientationError",
           "check_centroids", "check_shapes", "label_centroids", "named", "describe_transform", "fix_affine",
           "reorient_shapes", "subject_report", "bank_report", "POLICIES", "FIX_HINT", "consensus_finding"]

AXIS_NAMES = ("right-left", "anterior-posterior", "superior-inferior")
_WORDS = (("right", "left"), ("anterior", "posterior"), ("superior", "inferior"))
TOLERANCE_MM = 2.0  # a relation counts as violated only when it is reversed by more than this
POLICIES = ("check", "fix", "ignore")
FIX_HINT = "fix the header or pass --fix-orientation"


@dataclass(frozen=True)
class Invariant:
    """``a`` lies on the ``sign`` side of ``b`` along ``axis`` (0 R, 1 A, 2 S; +1 right/anterior/superior)."""

    a: str
    b: str
    axis: int
    sign: int
    region: str = "abdomen"

    @property
    def name(self) -> str:
        """``"kidney_right posterior of liver"``."""
        return f"{self.a} {_WORDS[self.axis][0 if self.sign > 0 else 1]} of {self.b}"

    def margin(self, centroids: dict[str, np.ndarray]) -> float:
        """Signed distance (mm) by which the relation holds (negative: reversed)."""
        return float(self.sign * (centroids[self.a][self.axis] - centroids[self.b][self.axis]))


def _inv(rel: str, region: str = "abdomen") -> list[Invariant]:
    """``"a1,a2 posterior b1,b2"`` → one invariant per (a, b) pair."""
    left, word, right = rel.split()
    axis, sign = next((i, 1 if word == pos else -1) for i, (pos, neg) in enumerate(_WORDS) if word in (pos, neg))
    return [Invariant(a, b, axis, sign, region) for a in left.split(",") for b in right.split(",")]


# Each relation holds in standard topographic anatomy (Standring (ed.), Gray's Anatomy, 42nd ed., 2020;
# head and neck: the RTOG/Brouwer et al. 2015 organ-at-risk delineation guidelines) and, measured on
# centroids, in all 50 FLARE22, 20 CHAOS-T2, the AMOS and 203 OpenKBP label maps with at least
# 5 mm to spare (docs/method.md lists the smallest margins).
INVARIANTS: tuple[Invariant, ...] = tuple(
    # right-left: the liver, gallbladder and duodenum on the right; spleen and stomach on the left
    _inv("liver right spleen,stomach,kidney_left,pancreas")
    + _inv("kidney_right right kidney_left,spleen")
    + _inv("adrenal_gland_right right adrenal_gland_left")
    + _inv("inferior_vena_cava right aorta")
    + _inv("gallbladder right stomach,spleen")
    + _inv("duodenum right spleen")
    # anterior-posterior: kidneys are retroperitoneal, behind the intraperitoneal organs
    + _inv("kidney_right,kidney_left posterior liver,gallbladder,pancreas,stomach")
    + _inv("kidney_right posterior duodenum")
    + _inv("gallbladder anterior liver")
    + _inv("aorta posterior pancreas,stomach")
    + _inv("spleen posterior stomach")
    # superior-inferior: adrenals cap the kidneys, the gallbladder hangs under the liver
    + _inv("gallbladder inferior liver")
    + _inv("esophagus superior stomach,pancreas,liver")
    + _inv("adrenal_gland_right superior kidney_right")
    + _inv("adrenal_gland_left superior kidney_left")
    + _inv("liver superior kidney_right,kidney_left,duodenum")
    + _inv("spleen superior kidney_left")
    + _inv("stomach superior duodenum")
    + _inv("kidney_right,kidney_left superior urinary_bladder")
    # head and neck
    + _inv("parotid_gland_right right parotid_gland_left", "head and neck")
    + _inv("mandible anterior spinal_cord,brainstem,esophagus", "head and neck")
    + _inv("larynx anterior spinal_cord,esophagus", "head and neck")
    + _inv("parotid_gland_right,parotid_gland_left anterior spinal_cord", "head and neck")
    + _inv("brainstem superior spinal_cord,mandible,larynx", "head and neck")
    + _inv("mandible superior larynx", "head and neck")
    + _inv("parotid_gland_right,parotid_gland_left superior larynx", "head and neck")
    + _inv("larynx superior esophagus", "head and neck")
)


def _signed_permutations() -> list[np.ndarray]:
    """The 48 signed permutation matrices, simplest first (fewest axes moved or reversed)."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3), np.int64)
            m[list(perm), [0, 1, 2]] = signs
            mats.append(m)
    return sorted(mats, key=lambda m: (int(np.sum(np.diag(m) != 1)), tuple(-m.ravel())))


_TRANSFORMS = _signed_permutations()


def describe_transform(t: np.ndarray) -> str:
    """Words for ``t`` (stored = t @ true): ``"anterior-posterior looks flipped"``, ``"... look swapped"``."""
    t = np.asarray(t)
    moved = [(i, int(np.argmax(np.abs(t[:, i]))), int(t[np.argmax(np.abs(t[:, i])), i])) for i in range(3)]
    if all(i == j for i, j, _ in moved):
        flipped = [AXIS_NAMES[i] for i, _, s in moved if s < 0]
        return f"{' and '.join(flipped)} {'looks' if len(flipped) == 1 else 'look'} flipped"
    swapped = [(i, j, s) for i, j, s in moved if i != j]
    if len(swapped) == 2 and all(s > 0 for _, _, s in swapped) and all(s > 0 for i, j, s in moved if i == j):
        return f"{AXIS_NAMES[swapped[0][0]]} and {AXIS_NAMES[swapped[0][1]]} look swapped"
    parts = [f"{AXIS_NAMES[i]} stored as {'-'.join(_WORDS[j] if s > 0 else _WORDS[j][::-1])}"
             for i, j, s in moved if (i, s) != (j, 1)]
    return f"axes look permuted ({', '.join(parts)})"


@dataclass
class Finding:
    """One subject's check: invariants checked and violated, and the transform that explains them.

    ``transform`` (3x3 signed permutation, stored = transform @ true) is set when one transform
    explains the violations; ``alternatives`` holds the others when several explain them equally.
    """

    checked: list[Invariant]
    violated: list[Invariant]
    transform: np.ndarray | None = None
    alternatives: list[np.ndarray] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violated

    @property
    def explained(self) -> bool:
        """The violations follow one axis pattern: a wrong header, not odd anatomy."""
        return self.transform is not None

    @property
    def diagnosis(self) -> str:
        if self.transform is None:
            return "violates anatomical invariants"
        if self.alternatives:
            options = [describe_transform(t) for t in [self.transform, *self.alternatives]]
            return "orientation looks wrong (" + " or ".join(options) + ")"
        return describe_transform(self.transform)

    def observed(self, limit: int = 3) -> str:
        """What was seen, grouped: ``"kidney_right and kidney_left anterior of liver, ..."``."""
        groups: dict[tuple[str, int, int], list[str]] = {}
        for inv in self.violated:
            groups.setdefault((inv.b, inv.axis, -inv.sign), []).append(inv.a)
        parts = [f"{_listed(a)} {_WORDS[axis][0 if sign > 0 else 1]} of {b}" for (b, axis, sign), a in groups.items()]
        more = f", and {len(parts) - limit} more" if len(parts) > limit else ""
        return ", ".join(parts[:limit]) + more

    def message(self, where: str, hint: str = FIX_HINT) -> str:
        """One line: ``FILE: anterior-posterior looks flipped (kidneys ...) — fix the header or ...``."""
        if self.explained:
            return f"{where}: {self.diagnosis} ({self.observed()}) — {hint}"
        return (f"{where}: {len(self.violated)} of {len(self.checked)} anatomical invariants violated "
                f"({self.observed()}) in no single-axis pattern — check the labels")


def _listed(names: list[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


class OrientationError(InputError):
    """Subjects whose orientation looks wrong; one line per subject (the first names its file)."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__(None, "\n".join(self.lines))


def _violated(centroids: dict[str, np.ndarray], checked: list[Invariant]) -> list[Invariant]:
    return [inv for inv in checked if inv.margin(centroids) < -TOLERANCE_MM]


def check_centroids(centroids: dict[str, np.ndarray]) -> Finding:
    """Check one subject's organ centroids (name → (3,) mm, RAS axes) against :data:`INVARIANTS`.

    When invariants are violated, every signed axis permutation is tried on the centroids; the one
    leaving the fewest violations (simplest first) explains them if it leaves none, or at most one of
    four or more. Two transforms equally good and equally simple are reported as alternatives.
    """
    cents = {k: np.asarray(v, dtype=np.float64) for k, v in centroids.items()}
    checked = [inv for inv in INVARIANTS if inv.a in cents and inv.b in cents]
    violated = _violated(cents, checked)
    if not violated:
        return Finding(checked, [])
    scored = []
    for t in _TRANSFORMS[1:]:
        undone = {k: t.T @ v for k, v in cents.items()}  # t is orthogonal: true = t.T @ stored
        scored.append((len(_violated(undone, checked)), int(np.sum(np.diag(t) != 1)), t))
    best = min(s[:2] for s in scored)
    if not (best[0] == 0 or (best[0] <= 1 and len(violated) >= 4)):
        return Finding(checked, violated)
    ties = [t for n, c, t in scored if (n, c) == best]
    return Finding(checked, violated, ties[0], ties[1:])


def check_shapes(shapes: dict) -> Finding:
    """:func:`check_centroids` on one subject's bank shapes (organ name → OrganShape)."""
    return check_centroids({name: s.centroid_mm for name, s in shapes.items()})


def label_centroids(volume) -> dict[int, np.ndarray]:
    """Centroid of every foreground id (mm along the R, A, S axes, arbitrary origin), in any orientation.

    Computed on the stored voxels and mapped through the header's axis codes, so no reorientation or
    resampling is needed: this is what canonicalisation would give, up to a translation. One
    bounding-box pass, then three projections per label (no voxel index lists).
    """
    import nibabel as nib
    from scipy import ndimage

    arr = np.asarray(volume.array)
    ornt = nib.orientations.io_orientation(volume.affine)
    spacing = volume.spacing
    fg = arr != 0
    if not fg.any():
        return {}
    others = [tuple(j for j in range(3) if j != k) for k in range(3)]
    spans = [np.flatnonzero(fg.any(axis=others[k])) for k in range(3)]
    lo = [int(s[0]) for s in spans]  # crop to the foreground first: halves the bounding-box pass
    arr = arr[tuple(slice(s[0], s[-1] + 1) for s in spans)]
    out = {}
    for ident, box in enumerate(ndimage.find_objects(arr.astype(np.int32, copy=False)), start=1):
        if box is None:
            continue
        mask = arr[box] == ident
        n = np.count_nonzero(mask)
        vox = [np.count_nonzero(mask, axis=others[k]) @ np.arange(mask.shape[k]) / n + box[k].start + lo[k]
               for k in range(3)]
        ras = np.zeros(3)
        for k, (axis, sign) in enumerate(ornt):
            ras[int(axis)] = sign * vox[k] * spacing[k]
        out[ident] = ras
    return out


def named(centroids: dict[int, np.ndarray], organs: dict[int, str]) -> dict[str, np.ndarray]:
    """id → centroid as organ name → centroid (ids without a name are left out)."""
    return {organs[k]: c for k, c in centroids.items() if k in organs}


def fix_affine(affine: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """The header that undoes ``transform``: world coordinates mapped by its inverse (about the origin)."""
    w = np.eye(4)
    w[:3, :3] = np.asarray(transform, dtype=np.float64).T
    return w @ np.asarray(affine, dtype=np.float64)


def reorient_shapes(shapes: dict, transform: np.ndarray, spacing) -> dict:
    """One subject's bank shapes with ``transform`` undone (masks, positions, axes), for ``bank merge``.

    Mirroring or permuting about the body-frame origin keeps the frame's definition (a mean of
    centroids). Axes can only be exchanged when the bank spacing is the same along both.
    """
    from anatosynth.bank.model import OrganShape

    r = np.asarray(transform).T  # true = r @ stored
    sp = np.asarray(spacing, dtype=np.float64)
    src = [int(np.argmax(np.abs(r[i]))) for i in range(3)]  # new axis i comes from stored axis src[i]
    if not np.allclose(sp[src], sp, rtol=1e-6):
        raise ValueError("axes with different bank spacings cannot be exchanged; rebuild the bank from "
                         "the label maps with --fix-orientation")
    out = {}
    for name, s in shapes.items():
        mask = np.transpose(s.mask, src)
        flips = tuple(i for i in range(3) if r[i, src[i]] < 0)
        mask = np.ascontiguousarray(np.flip(mask, flips) if flips else mask)
        far = s.origin_mm + (np.array(s.mask.shape) - 1) * sp
        lo = np.minimum(r @ s.origin_mm, r @ far)
        axes = np.array([r @ row for row in s.axes])
        for row in axes:
            if row[np.argmax(np.abs(row))] < 0:
                row *= -1
        out[name] = OrganShape(s.subject, mask, lo, r @ s.centroid_mm, s.volume_ml, axes,
                               np.asarray(s.extent_mm)[src])
    return out


def subject_report(finding: Finding, record: dict | None = None) -> dict:
    """JSON-ready: invariants checked and violated, and the fix (or warning) recorded at build time."""
    return {"checked": [inv.name for inv in finding.checked], "violated": [inv.name for inv in finding.violated],
            "diagnosis": finding.diagnosis if finding.violated else None,
            "fix": (record or {}).get("finding") if (record or {}).get("action") == "fixed" else None,
            "ignored": (record or {}).get("finding") if (record or {}).get("action") == "ignored" else None}


def bank_report(bank) -> dict[str, dict]:
    """Per subject of a bank: :func:`subject_report` from its stored centroids and ``meta.orientation``."""
    records = bank.meta.get("orientation", {}) if isinstance(bank.meta.get("orientation"), dict) else {}
    return {sid: subject_report(check_shapes(bank.shapes_of(sid)), records.get(sid)) for sid in bank.subjects}


def consensus_finding(anchors: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> np.ndarray | None:
    """The signed axis permutation by which ``anchors`` disagree with ``reference`` (None: they agree).

    Both are organ name → mean body-frame centroid; only organs in both count, centred on their mean
    (body-frame origins may differ). Needs three shared organs; a transform is reported when it
    brings the anchors at least three times closer than leaving them as they are.
    """
    shared = sorted(set(anchors) & set(reference))
    if len(shared) < 3:
        return None
    a = np.array([anchors[n] for n in shared], dtype=np.float64)
    b = np.array([reference[n] for n in shared], dtype=np.float64)
    a -= a.mean(axis=0)
    b -= b.mean(axis=0)
    rms = [float(np.sqrt(np.mean(np.sum((a @ t - b) ** 2, axis=1)))) for t in _TRANSFORMS]
    errors = [(round(e, 6), k) for k, e in enumerate(rms)]  # rounded: exact ties go to the simplest
    best, k = min(errors)
    if k == 0 or errors[0][0] < 3 * best:
        return None
    return _TRANSFORMS[k]
