"""Synthesis: a shape bank in, an endless seeded stream of labelled 3D patches out.

``SyntheticStream(bank, SynthConfig(...), seed).batch(indices, device)`` gives a :class:`SynthBatch`
(image [B, 1, X, Y, Z] float32 in [0, 1], label [B, X, Y, Z] int64, per-sample placement logs).
Torch is imported with this package; the CLI imports it lazily.
"""

from __future__ import annotations

from anatosynth.synth.config import MODES, SynthConfig
from anatosynth.synth.generator import SampleParams, SynthBatch, SyntheticStream

__all__ = ["MODES", "SynthConfig", "SyntheticStream", "SynthBatch", "SampleParams"]
