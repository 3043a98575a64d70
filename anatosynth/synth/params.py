"""What one synthetic sample is before and after rendering: its drawn parameters and a rendered batch.

Their own module, below both the stream (:mod:`anatosynth.synth.generator`) and the rasteriser
(:mod:`anatosynth.synth.raster`), so neither imports the other for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anatosynth.synth.placement import OrganPlacement

__all__ = ["SampleParams", "SynthBatch"]


@dataclass
class SampleParams:
    """All random decisions of one sample (picklable, so data-loader workers can draw them).

    Attributes:
        index: sample index in the stream.
        origin_mm: body-frame position (mm) of the centre of patch voxel ``[0, 0, 0]``.
        placed: organs laid out in the body, in placement order (anatomy and random modes).
        dropped: organs the layout could not place, with reasons.
        render: the render helper's parameters for this sample.
        primitives: primitives mode: the primitive helper's parameters.
        part: mixed mode: 0 for an anatomy sample, 1 for a primitives sample (always 0 otherwise).
    """

    index: int
    origin_mm: np.ndarray
    placed: list[OrganPlacement] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    render: Any = None
    primitives: Any = None
    part: int = 0


class SynthBatch:
    """A batch of synthetic patches.

    Attributes:
        image: float32 [B, 1, X, Y, Z] in [0, 1].
        label: int64 [B, X, Y, Z]; 0 background, 1..C bank organs (or primitive classes).
        logs: one JSON-serialisable placement log per sample. Built on first access from counts kept on
            the device (one read back per batch), so a training step that never looks costs no sync.
    """

    def __init__(self, image: torch.Tensor, label: torch.Tensor, logs: list[dict] | Callable[[], list[dict]]):
        self.image = image
        self.label = label
        self._logs = logs

    @property
    def logs(self) -> list[dict]:
        if callable(self._logs):
            self._logs = self._logs()
        return self._logs
