"""Dataset splits a reviewer accepts: a fixed test set, a separate validation set, and a training pool.

A split is three disjoint lists of case names (JSON: ``{"test": [...], "validation": [...], "pool": [...]}``):

- **test**: scored, never looked at by any choice — not checkpoint selection, post-processing, recipe or
  protocol selection;
- **validation**: chooses the checkpoint (``model_best.pt``) and the post-processing;
- **pool**: the labelled cases a fine-tuning run may train on.

:func:`make_split` makes the default one from the case names alone (each name's sha256 ranks it, so the split
does not depend on file order, seeds or the machine, and adding a case moves no other case). A run's labelled
cases are then drawn from the pool by :func:`draw_labelled`: the pool is ranked once (by another hash) and cut
into disjoint groups of ``k`` cases; seed ``s`` trains on group ``s mod G``. So consecutive seeds train on
distinct cases until the pool is used up, and seeds ``G`` apart share theirs — which the run's ``split.json``
and an experiment's report say, and which the case-level bootstrap counts as one labelled set, not two.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anatosynth.errors import ConfigError, InputError

__all__ = ["Split", "SPLIT_METHOD", "default_sizes", "make_split", "load_split", "write_split", "draw_labelled",
           "case_roles"]

SPLIT_METHOD = "sha256-rank-v1"  # how make_split orders names; bump if that ever changes
TEST_FRACTION, VALIDATION_FRACTION = 0.3, 0.15  # the default sizes (at least one case each)


@dataclass(frozen=True)
class Split:
    """Disjoint test / validation / pool case names (each sorted)."""

    test: list[str]
    validation: list[str]
    pool: list[str]
    method: str = SPLIT_METHOD

    def to_dict(self) -> dict:
        return {"method": self.method, "test": list(self.test), "validation": list(self.validation),
                "pool": list(self.pool)}


def _rank(names: Sequence[str], salt: str = "") -> list[str]:
    return sorted(names, key=lambda n: hashlib.sha256((salt + n).encode()).hexdigest())


def default_sizes(n: int) -> tuple[int, int]:
    """Test and validation sizes for ``n`` labelled cases: 30 % and 15 %, at least one each."""
    return max(1, round(TEST_FRACTION * n)), max(1, round(VALIDATION_FRACTION * n))


def make_split(names: Sequence[str], test: int | None = None, validation: int | None = None) -> Split:
    """The default split of ``names``: the ``test`` first names by sha256 rank, the next ``validation``, the
    rest the pool (sizes default to :func:`default_sizes`).

    Raises:
        ConfigError: duplicate names, or sizes that leave no case for one of the three sets.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ConfigError("the dataset has duplicate case names; cannot split by name")
    d_test, d_val = default_sizes(len(names))
    test = d_test if test is None else int(test)
    validation = d_val if validation is None else int(validation)
    if test < 1 or validation < 1 or test + validation >= len(names):
        raise ConfigError(f"a split of {len(names)} labelled cases into {test} test and {validation} validation "
                          f"cases leaves {len(names) - test - validation} to train on (each set needs at least 1)")
    ranked = _rank(names)
    return Split(sorted(ranked[:test]), sorted(ranked[test:test + validation]), sorted(ranked[test + validation:]))


def load_split(path: str | Path, names: Sequence[str] | None = None) -> Split:
    """A split file (JSON with ``test``, ``validation`` and ``pool`` lists of case names), checked: disjoint,
    non-empty, and — given the dataset's ``names`` — naming only its cases.

    Raises:
        InputError: unreadable, malformed, overlapping or unknown names (one line, naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "split file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        lists = {k: raw[k] for k in ("test", "validation", "pool")}
        if not all(isinstance(v, list) and v and all(isinstance(n, str) for n in v) for v in lists.values()):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(path, "not a split file: expected JSON with non-empty 'test', 'validation' and 'pool' "
                               "lists of case names") from None
    seen: dict[str, str] = {}
    for role, members in lists.items():
        for n in members:
            if n in seen:
                raise InputError(path, f"case {n} is in both {seen[n]} and {role}; the three sets must be disjoint")
            seen[n] = role
    if names is not None:
        unknown = sorted(set(seen) - set(names))
        if unknown:
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise InputError(path, f"names {len(unknown)} case(s) the dataset does not have: "
                                   f"{', '.join(unknown[:3])}{more}")
    return Split(sorted(lists["test"]), sorted(lists["validation"]), sorted(lists["pool"]),
                 str(raw.get("method", "file")))


def write_split(split: Split, path: str | Path) -> Path:
    from anatosynth.io.volume import atomic_write_text

    return atomic_write_text(path, json.dumps(split.to_dict(), indent=1) + "\n")


def draw_labelled(pool: Sequence[str], k: int | None, seed: int) -> dict:
    """The labelled cases of seed ``seed``: group ``seed mod G`` of the pool cut into ``G = len(pool) // k``
    disjoint groups of ``k`` (``k=None``: the whole pool, one group).

    Returns:
        ``{"train": names, "group": g, "groups": G}``; seeds that differ by a multiple of ``G`` share the group.

    Raises:
        ConfigError: ``k`` larger than the pool.
    """
    ranked = _rank(pool, "draw:")
    k = len(ranked) if k is None else int(k)
    if not 1 <= k <= len(ranked):
        raise ConfigError(f"--train-cases {k}: the training pool holds {len(ranked)} case(s)")
    groups = len(ranked) // k
    group = int(seed) % groups
    return {"train": sorted(ranked[group * k:(group + 1) * k]), "group": group, "groups": groups}


def case_roles(split_json: dict, cases: Sequence[str]) -> dict[str, str]:
    """Each case's role in a run's ``split.json``: ``train``, ``validation`` (chose the checkpoint or
    post-processing), ``test`` (scored only) or ``unknown``. A run from before test sets existed has no
    ``test`` list: its evaluation cases outside validation count as test, as their reports always did."""
    train = set(split_json.get("train") or [])
    validation = set(split_json.get("validation") or []) | set(split_json.get("val") or [])
    test = set(split_json.get("test") or split_json.get("eval") or []) - validation
    return {c: "train" if c in train else "validation" if c in validation else "test" if c in test else "unknown"
            for c in cases}
