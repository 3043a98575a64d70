"""Bank files: lossless round trip, same bytes for the same bank, clear errors on damage."""

from __future__ import annotations

import json
import time
import zipfile

import numpy as np
import pytest

from anatosynth.bank import load_bank, save_bank
from anatosynth.bank.model import BANK_FORMAT_VERSION
from anatosynth.bank.store import MANIFEST, MASKS
from anatosynth.cli import main
from anatosynth.errors import InputError


@pytest.fixture(scope="module")
def phantom():
    return load_bank("builtin:phantom")


@pytest.fixture(scope="module")
def bank_file(phantom, tmp_path_factory):
    return save_bank(phantom, tmp_path_factory.mktemp("bank") / "p.bank")


def test_round_trip_is_lossless_and_fast(phantom, bank_file):
    t0 = time.perf_counter()
    loaded = load_bank(bank_file)
    assert time.perf_counter() - t0 < 1.0
    assert loaded.spacing == phantom.spacing and loaded.subjects == phantom.subjects
    assert loaded.version == BANK_FORMAT_VERSION
    for a, b in zip(phantom.organs, loaded.organs):
        assert (a.name, a.label) == (b.name, b.label)
        assert np.allclose(a.anchor_mean_mm, b.anchor_mean_mm, atol=1e-5)
        for s, t in zip(a.shapes, b.shapes):
            assert s.mask.dtype == t.mask.dtype == bool and np.array_equal(s.mask, t.mask)
            assert np.allclose(s.origin_mm, t.origin_mm, atol=1e-5) and np.isclose(s.volume_ml, t.volume_ml)
    for e, f in zip(phantom.edges, loaded.edges):
        assert (e.a, e.b, e.overlap) == (f.a, f.b, f.overlap)
        assert np.allclose(e.direction, f.direction, atol=1e-5) and np.isclose(e.min_gap_mm, f.min_gap_mm)


def test_same_bank_same_bytes(phantom, bank_file, tmp_path):
    again = save_bank(phantom, tmp_path / "again.bank")
    assert again.read_bytes() == bank_file.read_bytes()


def _rewrite(src, dst, manifest_fn=None, extra=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == MANIFEST and manifest_fn:
                m = json.loads(data)
                manifest_fn(m)
                data = json.dumps(m).encode()
            zout.writestr(name, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


def test_unknown_version_fails_clearly(bank_file, tmp_path):
    bad = _rewrite(bank_file, tmp_path / "v9.bank", lambda m: m.update(version=9))
    with pytest.raises(InputError, match="version 9 is not supported"):
        load_bank(bad)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_damaged_file_fails_clearly(bank_file, tmp_path, damage):
    data = bytearray(bank_file.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a bank at all" * 10)
    else:
        data[len(data) // 3] ^= 0xFF
    bad = tmp_path / f"{damage}.bank"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match=str(bad.name)):
        load_bank(bad)


def test_checksum_catches_changed_masks(bank_file, tmp_path):
    import io
    with zipfile.ZipFile(bank_file) as z:
        blob = np.load(io.BytesIO(z.read(MASKS)))
    blob[0] ^= 1
    buf = io.BytesIO()
    np.save(buf, blob)
    bad = tmp_path / "tampered.bank"
    with zipfile.ZipFile(bank_file) as zin, zipfile.ZipFile(bad, "w") as zout:
        zout.writestr(MANIFEST, zin.read(MANIFEST))
        zout.writestr(MASKS, buf.getvalue())
    with pytest.raises(InputError, match="checksum"):
        load_bank(bad)


def test_cli_reports_damaged_bank_in_one_line(bank_file, tmp_path, capsys):
    bad = tmp_path / "bad.bank"
    bad.write_bytes(bank_file.read_bytes()[:100])
    assert main(["bank", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.bank" in err[0] and "Traceback" not in err[0]
