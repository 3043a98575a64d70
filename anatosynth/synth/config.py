"""Configuration of the synthetic stream: one dataclass, validated, saved with every run as a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from anatosynth.errors import ConfigError
from anatosynth.options import RENDERS, SYNTH_MODES, parse_patch, reject_unknown_keys

__all__ = ["WINDOW_POLICIES", "SynthConfig", "check_patch", "STREAM_VERSION"]

# Bumped whenever the synthetic stream's bytes change for an unchanged SynthConfig (experiment job keys hash it).
STREAM_VERSION = 2  # 2: batched rasteriser (issue 11): labels differ at organ borders in ~0.2 % of voxels

WINDOW_POLICIES = ("organ", "body")


def check_patch(patch: object) -> tuple[int, int, int]:
    """A synthetic patch size as three ints, each a multiple of 32 (SwinUNETR's downsampling).

    Reads every spelling of :func:`anatosynth.options.parse_patch` (``96``, ``"96,96,32"``, ``[96, 96, 32]``...).

    Raises:
        ConfigError: not one or three whole numbers, or an entry not a multiple of 32.
    """
    return parse_patch(patch, minimum=32, multiple=32, what="patch size")


@dataclass
class SynthConfig:
    """How patches are synthesised. Defaults are the method's; ranges are inclusive.

    Attributes:
        mode: ``anatomy`` (anchors + graph), ``random`` (bank shapes, uniform positions, any rotation),
            ``mixed`` (anatomy and primitive samples in one stream, one label space: see ``mix_fraction``)
            or ``primitives`` (PrimGeoSeg-style objects; no bank needed).
        render: label-to-image rendering (see :mod:`anatosynth.synth.render`).
        patch: patch size in voxels (X, Y, Z) at the bank's spacing; multiples of 32.
        anchors: anatomy mode: draw each organ's position from its spatial anchor.
        graph: anatomy mode: use placed neighbours' typical offsets and a graph-derived order.
        scale: range of the body scale: one factor per sample for organ sizes, anchors and offsets.
        anisotropy: per-organ, per-axis extra scale factor drawn from ``1 ± anisotropy``.
        rotation_deg: anatomy mode: largest rotation (about a random axis); random mode rotates freely.
        rotation_mm: anatomy mode: the rotation is also bounded so that no point of the organ (half its
            largest extent from the centre) moves more than this; long organs (aorta) turn less.
        elastic_mm: standard deviation (mm) of the elastic control-point displacements.
        elastic_points: control points per axis of the elastic field (over the organ's bounding box).
        anchor_spread: multiplies the anchor covariance (1 = as observed over the bank's subjects).
        jitter_mm: isotropic standard deviation added to every position covariance (few-subject banks
            have near-singular covariances).
        max_neighbours: placed neighbours (strongest contact first) that inform a position.
        retries: new position draws after a forbidden overlap, before shifting.
        max_shift_mm: largest shift to the nearest free position before the organ is dropped.
        collision_margin: dilation (bank voxels) of each mask in the layout's overlap check. 0 (default)
            lets organs touch; 1 (the earlier default) keeps them about one coarse cell apart, which
            loses most anatomical contacts (docs/method.md, "Contacts").
        window: patch centre policy: ``organ`` (a placed organ's centroid, chosen uniformly, plus
            jitter) or ``body`` (uniform over the placed organs' bounding box).
        window_jitter: organ policy: jitter as a fraction of the half patch extent.
        primitive_objects: primitives mode: objects per patch (PrimGeoSeg: 20).
        patches_per_body: consecutive samples that share one synthetic body (each with its own
            window and rendering); laying out a body costs more than rasterising a patch.
        subject_coherence: anatomy mode: probability that a body is laid out from one bank subject:
            every organ takes that subject's shape, centred on that subject's centroid (scaled with
            the body, plus ``jitter_mm``) instead of the anchor/neighbour product. 0 (default) mixes
            subjects organ by organ, as the paper describes; see docs/method.md ("Placement").
        max_carve: largest fraction of an organ's voxels in the patch that may be carved away where,
            at patch resolution, it meets a painted organ it may not overlap (the organ yields, as
            organs indent each other); a larger clash drops the organ from the patch. 0 = never carve.
        layout_tolerance: fraction of an organ's coarse layout cells that may overlap organs it may not
            overlap before the layout counts a clash (those voxels are then carved when painting).
        clutter: unlabelled background clutter: the share of background voxels (about; per patch it
            varies) covered by smooth random blobs rendered like organs but labelled background, which
            the network must learn to ignore. 0 (default): organs on a plain background, as the paper.
        mix_fraction: mixed mode: the share of samples that are PrimGeoSeg primitives (each sample's own
            coin); the others are anatomy samples of the bank, rendered with ``render``.
        mix_render: mixed mode: how the primitive samples are rendered (PrimGeoSeg: ``contour``).
    """

    mode: str = "anatomy"
    render: str = "shell"
    patch: tuple[int, int, int] = (96, 96, 96)
    anchors: bool = True
    graph: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    anisotropy: float = 0.05
    rotation_deg: float = 15.0
    rotation_mm: float = 20.0
    elastic_mm: float = 3.0
    elastic_points: int = 5
    anchor_spread: float = 1.0
    jitter_mm: float = 4.0
    max_neighbours: int = 3
    retries: int = 2
    max_shift_mm: float = 30.0
    collision_margin: int = 0
    window: str = "organ"
    window_jitter: float = 0.5
    primitive_objects: int = 20
    patches_per_body: int = 4
    subject_coherence: float = 0.0
    max_carve: float = 0.25
    layout_tolerance: float = 0.1
    clutter: float = 0.0
    mix_fraction: float = 0.5
    mix_render: str = "contour"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> SynthConfig:
        """Check every field; normalise tuples. Raises ConfigError naming the first bad field."""
        if self.mode not in SYNTH_MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {', '.join(SYNTH_MODES)}")
        for name in ("render", "mix_render"):
            if getattr(self, name) not in RENDERS:
                raise ConfigError(f"unknown {name.replace('_', ' ')} {getattr(self, name)!r}; choose one of "
                                  f"{', '.join(RENDERS)}")
        if self.window not in WINDOW_POLICIES:
            raise ConfigError(f"unknown window policy {self.window!r}; choose one of "
                              f"{', '.join(WINDOW_POLICIES)}")
        self.patch = check_patch(self.patch)
        try:
            lo, hi = (float(v) for v in self.scale)
        except (TypeError, ValueError):
            raise ConfigError(f"scale {self.scale!r}: expected two numbers (min, max)") from None
        if not 0 < lo <= hi:
            raise ConfigError(f"scale {self.scale!r}: need 0 < min <= max")
        self.scale = (lo, hi)
        for name, low, high in [("anisotropy", 0.0, 0.5), ("rotation_deg", 0.0, 180.0), ("rotation_mm", 0.0, 1000.0),
                                ("elastic_mm", 0.0, 50.0), ("anchor_spread", 0.0, 10.0),
                                ("jitter_mm", 0.0, 100.0), ("max_shift_mm", 0.0, 500.0),
                                ("window_jitter", 0.0, 1.0), ("subject_coherence", 0.0, 1.0),
                                ("max_carve", 0.0, 1.0), ("layout_tolerance", 0.0, 1.0), ("clutter", 0.0, 0.9),
                                ("mix_fraction", 0.0, 1.0)]:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{name} = {value!r}: expected a number in [{low:g}, {high:g}]")
            setattr(self, name, float(value))
        for name, low, high in [("elastic_points", 2, 16), ("max_neighbours", 1, 64), ("retries", 0, 100),
                                ("collision_margin", 0, 3), ("primitive_objects", 1, 200),
                                ("patches_per_body", 1, 1024)]:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{name} = {value!r}: expected an integer in [{low}, {high}]")
        for name in ("anchors", "graph"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} = {getattr(self, name)!r}: expected true or false")
        return self

    def to_dict(self) -> dict:
        """A JSON/YAML-ready dict (tuples as lists)."""
        out = asdict(self)
        out["patch"] = list(self.patch)
        out["scale"] = list(self.scale)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> SynthConfig:
        """Build from a dict, rejecting unknown keys (typos would otherwise be silently ignored)."""
        reject_unknown_keys(d, {f.name for f in fields(cls)}, "synth config")
        values = dict(d)
        for key in ("patch", "scale"):
            if key in values and isinstance(values[key], list):
                values[key] = tuple(values[key])
        return cls(**values)
