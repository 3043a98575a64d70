"""The in-memory shape bank: what synthesis reads.

A bank holds, for a handful of subjects, each organ's binary mask (cropped to its bounding box, RAS
axes, at the bank's spacing) in a **body frame** (RAS axes, millimetres, origin defined by the subject's
own anatomy; see docs/method.md), the organ's **spatial anchor** (mean and covariance of its centroid
over subjects, in that frame) and a **topological graph** with one :class:`Edge` per organ pair.

Everything here is label-only: no intensities, no header text, no file names (subject ids are salted
hashes). Files on disk are written and read by :mod:`anatosynth.bank.store`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["OrganShape", "Organ", "Edge", "ShapeBank", "BANK_FORMAT_VERSION"]

BANK_FORMAT_VERSION = 1


@dataclass
class OrganShape:
    """One organ of one subject.

    Attributes:
        subject: salted-hash subject id.
        mask: bool array (X, Y, Z), RAS axes, bank spacing, cropped to the organ's bounding box.
        origin_mm: body-frame position (mm) of the centre of voxel ``mask[0, 0, 0]``.
        centroid_mm: body-frame centroid (mm).
        volume_ml: organ volume in millilitres.
        axes: (3, 3) principal axes as rows (unit vectors, largest variance first).
        extent_mm: (3,) bounding-box size in mm along R, A, S.
    """

    subject: str
    mask: np.ndarray
    origin_mm: np.ndarray
    centroid_mm: np.ndarray
    volume_ml: float
    axes: np.ndarray
    extent_mm: np.ndarray


@dataclass
class Organ:
    """An organ class of the bank: its shapes over subjects and its spatial anchor.

    Attributes:
        name: canonical vocabulary name (see :mod:`anatosynth.bank.names`), e.g. ``"liver"``.
        label: class index in synthetic label maps, 1..C in bank order (0 is background).
        shapes: one entry per subject that has the organ.
        anchor_mean_mm: (3,) mean body-frame centroid over subjects.
        anchor_cov_mm: (3, 3) covariance of the centroid over subjects (mm²).
    """

    name: str
    label: int
    shapes: list[OrganShape]
    anchor_mean_mm: np.ndarray
    anchor_cov_mm: np.ndarray

    @property
    def subjects(self) -> list[str]:
        return [s.subject for s in self.shapes]


@dataclass
class Edge:
    """Relations between organs ``a`` and ``b`` (unordered pair, stored with ``a`` before ``b`` in bank order).

    Attributes:
        a, b: organ names.
        n_subjects: subjects that have both organs.
        contact: fraction of those subjects in which the two masks touch (26-neighbourhood).
        direction: (3,) mean unit vector from a's centroid to b's centroid (RAS).
        consistency: length of the mean of the per-subject unit vectors (1 = always the same direction).
        offset_mean_mm: (3,) mean of ``centroid(b) - centroid(a)``.
        offset_cov_mm: (3, 3) its covariance.
        min_gap_mm: smallest surface-to-surface distance observed (0 when they touch).
        overlap: ``"forbidden"`` (masks never share voxels) or ``"allowed"`` (observed, e.g. containment).
    """

    a: str
    b: str
    n_subjects: int
    contact: float
    direction: np.ndarray
    consistency: float
    offset_mean_mm: np.ndarray
    offset_cov_mm: np.ndarray
    min_gap_mm: float
    overlap: str = "forbidden"

    @property
    def direction_words(self) -> str:
        """``direction`` in words, e.g. ``"left, inferior"`` (components above 0.3)."""
        words = []
        for v, (pos, neg) in zip(self.direction, [("right", "left"), ("anterior", "posterior"),
                                                    ("superior", "inferior")]):
            if abs(v) >= 0.3:
                words.append(pos if v > 0 else neg)
        return ", ".join(words) or "mixed"

    def oriented(self, a: str, b: str) -> Edge:
        """This edge seen from ``a`` to ``b``: direction and offset negated when the pair is reversed."""
        if (a, b) == (self.a, self.b):
            return self
        if (a, b) != (self.b, self.a):
            raise KeyError(f"edge {self.a}-{self.b} does not join {a} and {b}")
        return Edge(self.b, self.a, self.n_subjects, self.contact, -np.asarray(self.direction),
                    self.consistency, -np.asarray(self.offset_mean_mm), np.asarray(self.offset_cov_mm),
                    self.min_gap_mm, self.overlap)


@dataclass
class ShapeBank:
    """Organ shapes, anchors and graph from a few subjects (see module docstring)."""

    spacing: tuple[float, float, float]
    subjects: list[str]
    organs: list[Organ]
    edges: list[Edge]
    frame: str = "body"
    version: int = BANK_FORMAT_VERSION
    meta: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """``["background", organ 1, ..., organ C]``: the synthetic label map's classes."""
        return ["background"] + [o.name for o in self.organs]

    @property
    def num_classes(self) -> int:
        return len(self.organs) + 1

    def organ(self, name: str) -> Organ:
        for o in self.organs:
            if o.name == name:
                return o
        raise KeyError(name)

    def edge(self, a: str, b: str) -> Edge | None:
        """The edge between two organs, in either order (None when absent)."""
        for e in self.edges:
            if (e.a, e.b) in ((a, b), (b, a)):
                return e
        return None

    def relation(self, a: str, b: str) -> Edge | None:
        """The edge oriented from ``a`` to ``b`` (direction/offset negated if stored as b-a; None if absent)."""
        e = self.edge(a, b)
        return None if e is None else e.oriented(a, b)

    def shapes_of(self, subject: str) -> dict[str, OrganShape]:
        """One subject's organs as name → shape (all on one grid, positions in the body frame)."""
        return {o.name: s for o in self.organs for s in o.shapes if s.subject == subject}
