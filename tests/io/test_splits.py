"""Splits: a fixed test set, a separate validation set and a pool; labelled cases drawn without repeats."""

from __future__ import annotations

import json

import pytest

from anatosynth.errors import ConfigError, InputError
from anatosynth.io.splits import case_roles, default_sizes, draw_labelled, load_split, make_split, write_split

NAMES = [f"case_{i:03d}" for i in range(20)]


def test_default_split_is_disjoint_complete_and_independent_of_order():
    split = make_split(NAMES)
    assert (len(split.test), len(split.validation), len(split.pool)) == (6, 3, 11) == (*default_sizes(20), 11)
    assert sorted(split.test + split.validation + split.pool) == NAMES
    assert make_split(list(reversed(NAMES))) == split
    # adding a case moves no other case between test and the rest (sha256 rank of each name)
    bigger = make_split([*NAMES, "case_999"], test=6, validation=3)
    assert set(bigger.test) - {"case_999"} <= set(split.test) | set(split.validation)


def test_sizes_that_leave_no_case_are_refused():
    with pytest.raises(ConfigError, match="leaves 0 to train on"):
        make_split(NAMES[:3], test=2, validation=1)
    with pytest.raises(ConfigError, match="duplicate"):
        make_split(["a", "a", "b", "c"])


def test_seeds_draw_distinct_labelled_cases_until_the_pool_is_used_up():
    pool = make_split(NAMES).pool  # 11 cases
    one = [draw_labelled(pool, 1, s) for s in range(100, 122)]
    assert all(d["groups"] == 11 for d in one)
    first = [d["train"][0] for d in one[:11]]
    assert len(set(first)) == 11  # 11 consecutive seeds: 11 distinct cases
    assert [d["train"] for d in one[11:]] == [d["train"] for d in one[:11]]  # then the cycle repeats
    four = [draw_labelled(pool, 4, s) for s in range(2)]
    assert four[0]["groups"] == 2 and not set(four[0]["train"]) & set(four[1]["train"])
    assert draw_labelled(pool, None, 7)["train"] == sorted(pool)
    with pytest.raises(ConfigError, match="pool holds 11"):
        draw_labelled(pool, 12, 0)


def test_split_files_are_checked(tmp_path):
    path = write_split(make_split(NAMES), tmp_path / "split.json")
    assert load_split(path, NAMES) == make_split(NAMES)
    raw = json.loads(path.read_text())
    raw["pool"].append(raw["test"][0])
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError, match="is in both test and pool"):
        load_split(path)
    path.write_text(json.dumps({"test": ["x"], "validation": ["y"], "pool": ["z", *[f"q{i}" for i in range(9)]]}))
    with pytest.raises(InputError) as err:
        load_split(path, NAMES)
    assert "names 12 case(s) the dataset does not have: q0, q1, q2 and 9 more" in str(err.value)
    assert len(str(err.value)) < 200
    path.write_text("{}")
    with pytest.raises(InputError, match="not a split file"):
        load_split(path)


def test_case_roles_of_new_and_earlier_runs():
    new = {"train": ["a"], "eval": ["t1", "t2"], "test": ["t1", "t2"], "val": ["v1"], "validation": ["v1", "v2"]}
    assert case_roles(new, ["a", "t1", "v2", "zz"]) == {"a": "train", "t1": "test", "v2": "validation",
                                                       "zz": "unknown"}
    old = {"train": ["a"], "eval": ["e1", "e2", "e3"], "val": ["e1"]}  # validation inside evaluation
    assert case_roles(old, ["e1", "e2"]) == {"e1": "validation", "e2": "test"}
