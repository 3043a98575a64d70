"""End to end on the built-in abdominal phantom (13 organs from 5 phantom subjects)."""

from __future__ import annotations

import numpy as np
import pytest

from anatosynth.bank import load_bank
from anatosynth.synth import SynthConfig, SyntheticStream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom():
    return load_bank("builtin:phantom")


def _centres(stream: SyntheticStream, bodies: int) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for b in range(bodies):
        for pl in stream.layout(b * stream.config.patches_per_body).placed:
            out.setdefault(stream.bank.organs[pl.organ].name, []).append(pl.centre_mm)
    return {k: np.array(v) for k, v in out.items()}


def test_phantom_anatomy_layout(phantom):
    stream = SyntheticStream(phantom, SynthConfig(patch=(64, 64, 64)), seed=0)
    params = [stream.draw(i) for i in range(8)]
    labels, logs = stream.labels(params)
    assert sum(log["forbidden_overlap_voxels"] for log in logs) == 0
    placed = np.mean([log["organs_placed"] for log in logs])
    assert placed >= 11.0, f"only {placed:.1f} of 13 organs placed on average"
    centres = _centres(stream, 4)
    # left/right anatomy survives: liver right (+x), spleen left (-x); liver above the kidneys
    assert centres["liver"][:, 0].mean() > 30 > -30 > centres["spleen"][:, 0].mean()
    assert centres["liver"][:, 2].mean() > centres["kidney_right"][:, 2].mean()


def test_phantom_anchors_tighten_positions(phantom):
    def spread(mode: str) -> float:
        c = _centres(SyntheticStream(phantom, SynthConfig(mode=mode, patch=(64, 64, 64)), seed=1), 6)
        return float(np.mean([np.linalg.norm(v.std(axis=0)) for v in c.values() if len(v) > 2]))

    anatomy, random = spread("anatomy"), spread("random")
    assert random > 3 * anatomy, (anatomy, random)
