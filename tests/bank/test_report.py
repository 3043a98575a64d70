"""``bank inspect``: summary JSON, subject reassembly and figures."""

from __future__ import annotations

import numpy as np
import pytest

from anatosynth.bank import load_bank
from anatosynth.bank.phantom import phantom_label_map
from anatosynth.bank.report import draw_bank, draw_subject, subject_label_map, summary
from anatosynth.cli import main


@pytest.fixture(scope="module")
def bank():
    return load_bank("builtin:phantom")


def test_summary_has_the_documented_fields(bank):
    info = summary(bank)
    assert info["version"] == 1 and info["spacing"] == [1.5, 1.5, 2.0] and len(info["subjects"]) == 5
    liver = info["organs"][0]
    assert liver["name"] == "liver" and liver["label"] == 1 and len(liver["subjects"]) == 5
    assert np.allclose(liver["anchor"]["mean_mm"], bank.organ("liver").anchor_mean_mm, atol=0.01)
    vols = [s.volume_ml for s in bank.organ("liver").shapes]
    assert np.isclose(liver["volume_ml"]["mean"], np.mean(vols), atol=0.01)
    assert np.isclose(liver["volume_ml"]["std"], np.std(vols, ddof=1), atol=0.01)
    edge = next(e for e in info["edges"] if (e["a"], e["b"]) == ("liver", "spleen"))
    assert edge["direction"] == bank.edge("liver", "spleen").direction_words and edge["overlap"] == "forbidden"


def test_subject_reassembles_from_its_shapes(bank):
    painted, names = phantom_label_map(np.random.SeedSequence(0).spawn(5)[0])
    rebuilt, _ = subject_label_map(bank, bank.subjects[0])
    # same organs, same voxel counts, same layout up to the crop
    idx = np.nonzero(painted)
    crop = painted[tuple(slice(i.min(), i.max() + 1) for i in idx)]
    to_bank = {v: bank.organ(n).label for v, n in names.items()}
    relabelled = np.vectorize(lambda v: to_bank.get(v, 0))(crop)
    assert rebuilt.shape == crop.shape and np.array_equal(rebuilt, relabelled)


def test_figures_are_written(bank, tmp_path, capsys):
    assert draw_bank(bank, tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert draw_subject(bank, tmp_path / "s.png").stat().st_size > 5000
    assert main(["bank", "inspect", "builtin:phantom", "--png", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "liver" in out and (tmp_path / "c.png").exists()
