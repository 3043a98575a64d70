"""Resumable archives: an unfinished pre-training run as one compact file a repository can hold.

A pre-training of many hours outlives a session, and a later session may start on a new machine without
the run folder. ``anatosynth release RUN --resumable --out FILE`` packs what ``pretrain --resume`` needs —
the run's ``checkpoint.pt`` byte for byte (float32 weights, AdamW moments, scheduler, step, stream position,
RNG state, loss history), ``config.yaml``, ``metadata.json`` and ``train.log`` — into one zip file;
``anatosynth pretrain --resume FILE --out RUN`` unpacks it into RUN and continues exactly as the run
would have continued on the first machine (the same bytes: the checkpoint is the same file).

Compact: the checkpoint is byte-shuffled (every 4th byte together: the float32 sign/exponent bytes, which
repeat, apart from the mantissa bytes, which do not) and then LZMA-compressed, as HDF5's shuffle filter
does; lossless, checked by sha256 on unpacking. Safe: only the fixed member names below are read, and the
checkpoint is loaded with ``torch.load(weights_only=True)`` as any other.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from anatosynth.errors import ConfigError, InputError
from anatosynth.io.volume import atomic_write_bytes, check_output_file
from anatosynth.train.checkpoint import read_checkpoint
from anatosynth.train.run_folder import RunPaths, file_sha256

__all__ = ["ARCHIVE_FORMAT", "write_archive", "read_archive", "unpack_archive", "is_archive"]

ARCHIVE_FORMAT = 1
MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint.pt.shuffle4"
TEXT_FILES = ("config.yaml", "metadata.json", "train.log")  # copied as they are (train.log: optional)
STRIDE = 4


def _shuffle(data: bytes) -> bytes:
    """Byte ``i`` of every ``STRIDE``-byte word together (lossless; the length is kept by the manifest)."""
    pad = (-len(data)) % STRIDE
    words = np.frombuffer(data + b"\0" * pad, dtype=np.uint8).reshape(-1, STRIDE)
    return words.T.tobytes()


def _unshuffle(data: bytes, length: int) -> bytes:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(STRIDE, -1)
    return planes.T.tobytes()[:length]


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` is a file (a resumable archive, or something to be refused as one), not a run folder."""
    return Path(path).is_file()


def write_archive(run: str | Path, out: str | Path) -> dict:
    """Pack run folder ``run`` (it must hold a checkpoint) into the archive file ``out``; returns its manifest.

    An existing archive at ``out`` is replaced (one archive per run, replaced as the run goes on); any other
    existing file is refused.

    Raises:
        InputError: ``run`` has no checkpoint or config, or ``out`` is another kind of file.
    """
    paths, out = RunPaths(Path(run)), Path(out)
    if not paths.checkpoint.is_file() or not paths.config.is_file():
        raise InputError(paths.root, "not a pre-training run with a checkpoint (checkpoint.pt and config.yaml "
                                     "needed); nothing to archive")
    check_output_file(out)
    if out.exists():
        read_archive(out)  # only an archive is replaced: anything else is an InputError here
    state = read_checkpoint(paths.checkpoint)
    data = paths.checkpoint.read_bytes()
    meta = json.loads(paths.metadata.read_text(encoding="utf-8")) if paths.metadata.is_file() else {}
    manifest = {"format": ARCHIVE_FORMAT, "kind": "anatosynth resumable pre-training",
                "step": int(state["step"]), "next_index": int(state["next_index"]),
                "steps": _config_steps(paths.config), "checkpoint_bytes": len(data),
                "checkpoint_sha256": hashlib.sha256(data).hexdigest(), "shuffle": STRIDE,
                "bank_sha256": meta.get("bank_sha256"), "run": paths.root.name}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        # fixed timestamps: the same run gives the same archive bytes
        def put(name: str, payload: bytes, method: int) -> None:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = method
            z.writestr(info, payload)

        put(MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode(), zipfile.ZIP_DEFLATED)
        for name in TEXT_FILES:
            if (paths.root / name).is_file():
                put(name, (paths.root / name).read_bytes(), zipfile.ZIP_DEFLATED)
        put(CHECKPOINT, _shuffle(data), zipfile.ZIP_LZMA)
    atomic_write_bytes(out, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))
    return {**manifest, "archive_bytes": out.stat().st_size}


def _config_steps(config: Path) -> int | None:
    import yaml

    steps = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("steps")
    return int(steps) if steps is not None else None


def read_archive(path: str | Path) -> dict:
    """The manifest of archive ``path`` (checked: format, members).

    Raises:
        InputError: not a file, not a zip, or not an archive :func:`write_archive` wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "resumable archive not found")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if MANIFEST not in names or CHECKPOINT not in names or "config.yaml" not in names:
                raise ValueError
            manifest = json.loads(z.read(MANIFEST))
    except (zipfile.BadZipFile, ValueError, KeyError, OSError):
        raise InputError(path, "not a resumable archive written by 'anatosynth release --resumable'") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise InputError(path, f"resumable archive format {manifest.get('format')!r} is not supported "
                               f"(this version reads {ARCHIVE_FORMAT})")
    return manifest


def unpack_archive(path: str | Path, run: str | Path) -> dict:
    """Unpack archive ``path`` into run folder ``run`` (created; it must not hold a checkpoint or model).

    Checks the checkpoint's sha256, and, for a run that synthesises from a bank file, that the bank at the
    saved path is the one the run was trained with (a rebuilt bank must be the same bank, or the stream
    would change under the run). The checkpoint is written last, so an interrupted unpack leaves nothing
    that ``--resume RUN`` would take for a run.

    Raises:
        InputError: bad archive or bank; ConfigError: ``run`` already holds a run.
    """
    path, paths = Path(path), RunPaths(Path(run))
    manifest = read_archive(path)
    if paths.checkpoint.exists() or paths.model.exists():
        raise ConfigError(f"{paths.root} already holds a run; continue it with --resume {paths.root} "
                          f"or unpack the archive into another --out")
    with zipfile.ZipFile(path) as z:
        texts = {name: z.read(name) for name in TEXT_FILES if name in z.namelist()}
        data = _unshuffle(z.read(CHECKPOINT), int(manifest["checkpoint_bytes"]))
    if hashlib.sha256(data).hexdigest() != manifest.get("checkpoint_sha256"):
        raise InputError(path, "the archived checkpoint does not match its sha256 (corrupt archive)")
    _check_bank(path, texts["config.yaml"], manifest.get("bank_sha256"))
    from anatosynth.io.volume import ensure_writable_dir

    ensure_writable_dir(paths.root)
    for name, payload in texts.items():
        atomic_write_bytes(paths.root / name, lambda tmp, p=payload: Path(tmp).write_bytes(p))
    atomic_write_bytes(paths.checkpoint, lambda tmp: Path(tmp).write_bytes(data))
    return manifest


def _check_bank(path: Path, config_text: bytes, want: str | None) -> None:
    import yaml

    bank = (yaml.safe_load(config_text) or {}).get("bank")
    if want is None or not bank or str(bank).startswith("builtin:"):
        return
    if not Path(bank).exists():
        raise InputError(path, f"the run synthesises from bank {bank}, which is not there; build it again "
                               f"(it must have sha256 {want[:12]}…) before resuming")
    have = file_sha256(Path(bank))
    if have != want:
        raise InputError(path, f"bank {bank} has sha256 {have[:12]}…, the run was trained with {want[:12]}…; "
                               f"resuming would change its synthetic stream")
