"""``bank audit``: clean banks pass; planted intensities, header text and hidden bytes are caught."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from anatosynth.bank import load_bank, save_bank
from anatosynth.bank.audit import audit_bank
from anatosynth.bank.store import MANIFEST, MASKS
from anatosynth.cli import main


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    return save_bank(load_bank("builtin:phantom"), tmp_path_factory.mktemp("audit") / "p.bank")


def _plant(src, dst, manifest_fn=None, extra=None, blob_fn=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        m = json.loads(zin.read(MANIFEST))
        blob = np.load(io.BytesIO(zin.read(MASKS)))
        if manifest_fn:
            manifest_fn(m)
        if blob_fn:
            blob = blob_fn(blob)
            import hashlib
            m["masks_sha256"] = hashlib.sha256(blob.tobytes()).hexdigest()
        buf = io.BytesIO()
        np.save(buf, blob)
        zout.writestr(MANIFEST, json.dumps(m))
        zout.writestr(MASKS, buf.getvalue())
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


def test_clean_bank_passes(bank_file, capsys):
    assert audit_bank(bank_file) == []
    assert main(["bank", "audit", str(bank_file)]) == 0
    assert "OK" in capsys.readouterr().out


def test_planted_intensity_array_is_caught(bank_file, tmp_path, capsys):
    img = io.BytesIO()
    np.save(img, np.random.default_rng(0).normal(40, 200, (8, 8, 8)).astype(np.float32))
    bad = _plant(bank_file, tmp_path / "img.bank", extra={"image.npy": img.getvalue()})
    problems = audit_bank(bad)
    assert any("image.npy" in p for p in problems)
    assert main(["bank", "audit", str(bad)]) == 1
    assert "VIOLATION" in capsys.readouterr().out


def test_intensities_replacing_the_masks_are_caught(bank_file, tmp_path):
    ct = np.random.default_rng(1).normal(40, 300, 4096).astype(np.int16)
    bad = _plant(bank_file, tmp_path / "ct.bank", blob_fn=lambda b: ct)
    assert any("int16" in p and "intensities" in p for p in audit_bank(bad))
    assert main(["bank", "audit", str(bad)]) == 1


def test_intensities_hidden_in_the_manifest_are_caught(bank_file, tmp_path):
    bad = _plant(bank_file, tmp_path / "m.bank",
                 lambda m: m["organs"][0]["shapes"][0].update(intensity=[12.5, -1000.0, 40.0]))
    assert any("unexpected key 'intensity'" in p for p in audit_bank(bad))


def test_intensities_hidden_after_the_masks_are_caught(bank_file, tmp_path):
    bad = _plant(bank_file, tmp_path / "tail.bank",
                 blob_fn=lambda b: np.concatenate([b, np.arange(64, dtype=np.uint8)]))
    assert any("bytes beyond the organ masks" in p for p in audit_bank(bad))


@pytest.mark.parametrize("plant, expect", [
    (lambda m: m["meta"].update(descrip="CT ABDOMEN 2019-04-02"), "unexpected key 'descrip'"),
    (lambda m: m["organs"][1].update(name="liver 1.2.840.113619.2.55.3"), "DICOM UID"),
    (lambda m: m["subjects"].__setitem__(0, "FLARE22_Tr_0001"), "salted-hash"),
    (lambda m: m["meta"].update(source="/data/FLARE22_Tr_0001.nii.gz"), "file name or path"),
])
def test_planted_header_strings_are_caught(bank_file, tmp_path, plant, expect):
    bad = _plant(bank_file, tmp_path / "h.bank", plant)
    problems = audit_bank(bad)
    assert any(expect in p for p in problems), problems
