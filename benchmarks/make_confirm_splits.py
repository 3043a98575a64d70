"""Write the confirm protocol's split files (issue 32), reproducibly, from the case names alone.

    python benchmarks/make_confirm_splits.py     # from the project root; rewrites protocols/splits/*.json

CHAOS-T2 (20 cases): test 7, validation 3, training pool 10 (docs/method.md "The confirm protocol" gives the
reasons and the power this leaves). OpenKBP (203 cases): test 60, validation 20; of the remaining 123, five are set
aside for the head-and-neck shape bank (ranked by sha256 of "bank:" + name), so the bank shares no case with the
test set, the validation set or any labelled case; the pool keeps the other 118. The five are those of the 123
with the most of the seven organs present (ties broken by sha256 of "bank:" + name): a bank is built from
complete label maps where a user has them (only label maps are read for this, never an image or a score).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from anatosynth.io import read_dataset
from anatosynth.io.splits import make_split

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"


def names(folder: Path) -> list[str]:
    return [c.name for c in read_dataset(folder).cases if c.image is not None and c.label is not None]


def write(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{path.relative_to(ROOT)}: " + ", ".join(f"{k} {len(v)}" for k, v in record.items() if isinstance(v, list)))


def main() -> None:
    out = ROOT / "protocols" / "splits"
    out.mkdir(parents=True, exist_ok=True)
    chaos = make_split(names(DATA / "chaos-t2"), test=7, validation=3)
    write(out / "chaos-t2.json", chaos.to_dict())
    kbp = make_split(names(DATA / "openkbp"), test=60, validation=20)
    dataset = read_dataset(DATA / "openkbp")
    label = {c.name: c.label for c in dataset.cases}

    def organs(name: str) -> int:
        return len(set(np.unique(np.asarray(nib.load(label[name]).dataobj)).tolist()) - {0})

    ranked = sorted(kbp.pool, key=lambda n: (-organs(n), hashlib.sha256(f"bank:{n}".encode()).hexdigest()))
    bank = sorted(ranked[:5])
    write(out / "openkbp.json", {**kbp.to_dict(), "pool": [n for n in kbp.pool if n not in bank], "bank": bank})


if __name__ == "__main__":
    main()
