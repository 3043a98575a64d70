"""Resumable archives: an unfinished pre-training packed into one file continues bit-exact elsewhere."""

from __future__ import annotations

import shutil
import zipfile

import pytest
import torch

from anatosynth.cli import main
from anatosynth.errors import ConfigError, InputError
from anatosynth.train.archive import read_archive, unpack_archive, write_archive
from anatosynth.train.checkpoint import read_checkpoint
from anatosynth.train.config import PretrainConfig
from anatosynth.train.pretrain import pretrain

TINY = dict(bank="builtin:phantom", mode="anatomy", render="shell", model="unet", feature_size=4,
            patch=[32, 32, 32], batch=1, steps=4, warmup=1, lr=1e-3, checkpoint_every=2, log_every=1,
            image_every=0, device="cpu", threads=1, seed=3)


def _cfg(out, **kw):
    return PretrainConfig.from_dict({**TINY, "out": str(out), **kw})


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped at step 2 of 4, and the same run uninterrupted."""
    root = tmp_path_factory.mktemp("archive")
    pretrain(_cfg(root / "straight"), echo=False)
    pretrain(_cfg(root / "stopped"), echo=False, stop_at=2)
    return root


def test_a_run_resumed_from_its_archive_on_a_new_folder_is_bit_exact(stopped, tmp_path, capsys):
    archive = tmp_path / "resume" / "run.resume"
    assert main(["release", str(stopped / "stopped"), "--resumable", "--out", str(archive)]) == 0
    assert "at step 2 of 4" in capsys.readouterr().out
    elsewhere = tmp_path / "new-machine" / "run"  # the run folder itself is not there
    assert main(["pretrain", "--resume", str(archive), "--out", str(elsewhere)]) == 0
    out = capsys.readouterr().out
    assert "unpacked" in out and "step 2 of 4" in out and "pre-trained to step 4" in out
    assert (stopped / "straight" / "model.pt").read_bytes() == (elsewhere / "model.pt").read_bytes()
    a = read_checkpoint(stopped / "straight" / "checkpoint.pt")
    b = read_checkpoint(elsewhere / "checkpoint.pt")
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])
    assert a["next_index"] == b["next_index"] == 4 and a["step"] == b["step"] == 4
    log = (elsewhere / "train.log").read_text()
    assert "step 1/4" in log and "resumed at step 2" in log  # the archived log goes on


def test_archive_is_lossless_smaller_than_the_checkpoint_and_the_same_bytes_twice(stopped, tmp_path):
    first = write_archive(stopped / "stopped", tmp_path / "a.resume")
    data = (stopped / "stopped" / "checkpoint.pt").read_bytes()
    assert first["archive_bytes"] < len(data) and first["step"] == 2
    again = write_archive(stopped / "stopped", tmp_path / "a.resume")  # replaced, not added
    assert again["archive_bytes"] == first["archive_bytes"]
    assert list(tmp_path.iterdir()) == [tmp_path / "a.resume"]
    unpack_archive(tmp_path / "a.resume", tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == data


def test_bad_archives_and_occupied_folders_are_refused(stopped, tmp_path):
    archive = tmp_path / "run.resume"
    write_archive(stopped / "stopped", archive)
    with pytest.raises(ConfigError, match="already holds a run"):
        unpack_archive(archive, stopped / "straight")
    other = tmp_path / "notes.txt"
    other.write_text("not an archive")
    with pytest.raises(InputError, match="not a resumable archive"):
        write_archive(stopped / "stopped", other)  # only an archive is replaced
    assert other.read_text() == "not an archive"
    with pytest.raises(InputError, match="nothing to archive"):
        write_archive(tmp_path, tmp_path / "b.resume")
    # a flipped byte in the checkpoint member: found by its sha256, nothing written
    broken = tmp_path / "broken.resume"
    with zipfile.ZipFile(archive) as z, zipfile.ZipFile(broken, "w") as w:
        for info in z.infolist():
            payload = z.read(info)
            if info.filename.startswith("checkpoint"):
                payload = payload[:100] + bytes([payload[100] ^ 1]) + payload[101:]
            w.writestr(info, payload)
    with pytest.raises(InputError, match="sha256"):
        unpack_archive(broken, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert read_archive(archive)["checkpoint_sha256"]


def test_a_changed_bank_is_refused(tmp_path):
    from anatosynth.bank import load_bank, save_bank

    bank = tmp_path / "bank.bank"
    save_bank(load_bank("builtin:phantom"), bank)
    run = tmp_path / "run"
    pretrain(_cfg(run, bank=str(bank), steps=2), echo=False, stop_at=2)
    write_archive(run, tmp_path / "run.resume")
    shutil.move(bank, tmp_path / "old.bank")
    with pytest.raises(InputError, match="not there"):
        unpack_archive(tmp_path / "run.resume", tmp_path / "again")
    bank.write_bytes(b"another bank")
    with pytest.raises(InputError, match="would change its synthetic stream"):
        unpack_archive(tmp_path / "run.resume", tmp_path / "again")


def test_cli_errors_are_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.resume"
    junk.write_bytes(b"PK\x03\x04 not really")
    assert main(["pretrain", "--resume", str(junk), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "junk.resume" in err[0] and "not a resumable archive" in err[0]
    assert not (tmp_path / "run").exists()
