"""Experiment statistics: bootstrap CIs, pairing, the Markdown table."""

from __future__ import annotations

import numpy as np
import pytest

from anatosynth.experiment.stats import bootstrap_ci, markdown_table, paired_differences, summarise


def _rows():
    rows = []
    for seed in range(4):
        base = 70.0 + seed  # seeds differ a lot; the arm adds a steady +2
        rows.append({"arm": "scratch", "dataset": "chaos", "seed": seed, "train_cases": 4, "dice": base})
        rows.append({"arm": "anatomy", "dataset": "chaos", "seed": seed, "train_cases": 4,
                     "dice": base + 2.0 + 0.1 * (-1) ** seed})
    return rows


def test_bootstrap_ci_contains_mean_and_is_seeded():
    v = np.random.default_rng(1).normal(5, 1, size=30)
    lo, hi = bootstrap_ci(v)
    assert lo < v.mean() < hi
    assert (lo, hi) == bootstrap_ci(v)
    assert np.isnan(bootstrap_ci([1.0])[0])


def test_pairing_removes_seed_variance():
    diffs = paired_differences(_rows())
    (key, d), = diffs.items()
    assert key[-1] == "anatomy" and len(d) == 4
    np.testing.assert_allclose(np.mean(d), 2.0)
    summary = {s["arm"]: s for s in summarise(_rows())}
    # unpaired spread is large (seeds differ by 3 points) but the paired CI is tight and excludes 0
    assert summary["anatomy"]["std"] > 1.0
    assert 1.8 < summary["anatomy"]["delta_lo"] < 2.0 < summary["anatomy"]["delta_hi"] < 2.2


def test_unpaired_rows_give_no_difference():
    rows = _rows() + [{"arm": "random", "dataset": "chaos", "seed": 9, "train_cases": 4, "dice": 50.0}]
    summary = {s["arm"]: s for s in summarise(rows)}
    assert summary["random"]["n_pairs"] == 0 and np.isnan(summary["random"]["delta"])
    table = markdown_table(summarise(rows))
    assert "| random | 4 | endless | – | 1 | 50.00 ± n/a | n/a |" in table
    assert "| anatomy | 4 |" in table and "| scratch | 4 |" in table


def test_compare_two_pretrained_arms_pairs_by_seed():
    from anatosynth.experiment.stats import compare_arms, compare_table

    rows = _rows()
    for seed in range(4):  # random: 1 point below anatomy on every seed; one scaling row must be ignored
        rows.append({"arm": "random", "dataset": "chaos", "seed": seed, "train_cases": 4,
                     "dice": 70.0 + seed + 1.0 + 0.1 * (-1) ** seed})
    rows.append({"arm": "anatomy", "dataset": "chaos", "seed": 0, "train_cases": 4, "samples": 250, "dice": 0.0})
    (c,) = compare_arms(rows, [["anatomy", "random"]])
    assert (c["a"], c["b"], c["n_pairs"]) == ("anatomy", "random", 4)
    np.testing.assert_allclose(c["per_pair"], [1.0] * 4)
    assert c["delta_lo"] == c["delta_hi"] == 1.0
    assert "| chaos | 4 | anatomy − random | 4 | 1.00 [1.00, 1.00] | [1.00, 1.00] | 4/4 | +1.0, +1.0, +1.0, +1.0 |" \
        in compare_table([c])
    assert compare_table([]) == ""


def test_per_class_differences_show_where_a_gain_comes_from():
    from anatosynth.experiment.stats import per_class_summary, per_class_table

    rows = []
    for seed in range(3):  # anatomy gains 6 points on the spleen only; the liver is level
        rows.append({"arm": "scratch", "dataset": "chaos", "seed": seed, "train_cases": 1, "dice": 60.0,
                     "per_class": {"liver": 80.0 + seed, "spleen": 40.0}})
        rows.append({"arm": "anatomy", "dataset": "chaos", "seed": seed, "train_cases": 1, "dice": 63.0,
                     "per_class": {"liver": 80.0 + seed, "spleen": 46.0}})
    rows.append({"arm": "scratch", "dataset": "kbp", "seed": 0, "train_cases": 4, "dice": 30.0,
                 "per_class": {"mandible": 30.0}})  # another dataset's classes stay in its own block
    rows.append({"arm": "anatomy", "dataset": "chaos", "seed": 0, "train_cases": 1, "samples": 250, "dice": 0.0,
                 "per_class": {"liver": 0.0, "spleen": 0.0}})  # a scaling row: not the main grid
    got = {(s["dataset"], s["arm"], s["class"]): s for s in per_class_summary(rows)}
    assert got[("chaos", "anatomy", "spleen")]["delta"] == 6.0 and got[("chaos", "anatomy", "liver")]["delta"] == 0.0
    assert ("chaos", "scratch", "mandible") not in got and got[("kbp", "scratch", "mandible")]["n"] == 1
    table = per_class_table(per_class_summary(rows))
    assert "| spleen | 40.00 ± 0.00 (3) | 6.00 [6.00, 6.00], t [6.00, 6.00], 3/3 ahead |" in table
    assert "| liver | 81.00 ± 1.00 (3) | 0.00 [0.00, 0.00], t [0.00, 0.00], 0/3 ahead |" in table
    assert "kbp" not in table  # no arm but the baseline there: nothing to compare
    assert per_class_table([]) == ""


def test_json_ready_turns_undefined_numbers_into_null():
    import json

    from anatosynth.experiment.stats import json_ready, summarise

    one_seed = summarise([{"arm": "scratch", "dataset": "d", "seed": 0, "train_cases": 1, "dice": 50.0}])
    assert np.isnan(one_seed[0]["std"])  # one seed: no spread
    text = json.dumps(json_ready({"arms": one_seed, "x": (1.0, float("inf"))}), allow_nan=False)
    assert json.loads(text)["arms"][0]["std"] is None and json.loads(text)["x"] == [1.0, None]


def test_t_interval_is_wider_than_the_bootstrap_with_few_pairs_and_counts_pairs_ahead():
    from anatosynth.experiment.stats import bootstrap_ci, summarise, t_interval

    d = [5.54, 6.88, 7.87, 7.48, 0.66, 1.71]  # cpu-long, CHAOS-T2 one case, anatomy - scratch
    lo, hi = t_interval(d)
    assert (round(lo, 2), round(hi, 2)) == (1.78, 8.27)  # mean 5.02, s.d. 3.09, t(5) = 2.571
    b_lo, b_hi = bootstrap_ci(d)
    assert lo < b_lo and hi > b_hi
    assert np.isnan(t_interval([1.0])[0])
    rows = [{"arm": a, "dataset": "d", "seed": s, "train_cases": 1, "dice": 50.0 + (x if a == "anatomy" else 0)}
            for s, x in enumerate([2.0, -1.0, 3.0]) for a in ("scratch", "anatomy")]
    (got,) = [s for s in summarise(rows) if s["arm"] == "anatomy"]
    assert (got["n_ahead"], got["n_pairs"]) == (2, 3)


def test_scaling_points_are_compared_with_their_own_arm_on_the_main_grid():
    from anatosynth.experiment.stats import compare_table, scaling_differences

    rows = []
    for seed in range(3):
        rows.append({"arm": "scratch", "dataset": "d", "seed": seed, "train_cases": 1, "dice": 50.0})
        rows.append({"arm": "anatomy", "dataset": "d", "seed": seed, "train_cases": 1, "dice": 55.0 + seed})
        rows.append({"arm": "anatomy", "dataset": "d", "seed": seed, "train_cases": 1, "subjects": 20,
                     "dice": 57.0 + seed})  # two points above the 5-subject bank on every seed
    rows.append({"arm": "anatomy", "dataset": "d", "seed": 9, "train_cases": 1, "samples": 100, "dice": 1.0})
    (c,) = scaling_differences(rows)  # the pool point has no main-grid partner (seed 9): no pairs, no row
    assert (c["a"], c["b"], c["n_pairs"], c["delta"], c["n_ahead"]) == ("anatomy (20 subjects)", "anatomy", 3, 2.0, 3)
    assert "| d | 1 | anatomy (20 subjects) − anatomy | 3 | 2.00 [2.00, 2.00] |" in compare_table([c])


def test_case_seed_bootstrap_counts_a_repeated_labelled_set_once_and_resamples_test_cases():
    from anatosynth.experiment.stats import case_seed_bootstrap

    rng = np.random.default_rng(0)
    cases = [f"c{i}" for i in range(8)]
    effect = {c: float(v) for c, v in zip(cases, rng.normal(0, 3, 8))}  # case-to-case spread of the gain
    diffs = {s: {c: 2.0 + s_shift + effect[c] for c in cases} for s, s_shift in enumerate(rng.normal(0, 1, 6))}
    distinct = case_seed_bootstrap(diffs, {s: s for s in diffs})
    assert distinct["n_sets"] == 6 and distinct["n_cases"] == 8
    assert distinct["delta"] == pytest.approx(np.mean([list(d.values()) for d in diffs.values()]))
    assert distinct["lo"] < distinct["delta"] < distinct["hi"]
    # the same seeds with the cases' spread removed: only seeds vary, so the interval is much narrower
    flat = {s: {c: v - effect[c] for c, v in d.items()} for s, d in diffs.items()}
    narrow = case_seed_bootstrap(flat, {s: s for s in flat})
    assert narrow["hi"] - narrow["lo"] < 0.5 * (distinct["hi"] - distinct["lo"])
    # a seed that repeats seed 0's labelled cases (and result) adds no independent information
    twice = {**diffs, 6: dict(diffs[0])}
    repeated = case_seed_bootstrap(twice, {**{s: s for s in diffs}, 6: 0})
    assert repeated["n_seeds"] == 7 and repeated["n_sets"] == 6
    assert (repeated["delta"], repeated["lo"], repeated["hi"]) == pytest.approx(
        (distinct["delta"], distinct["lo"], distinct["hi"]))
    naive = case_seed_bootstrap(twice, {s: s for s in twice})  # counting it as new moves the estimate
    assert naive["delta"] != pytest.approx(distinct["delta"])
    one = case_seed_bootstrap({0: diffs[0], 1: diffs[1]}, {0: "a", 1: "a"})
    assert one["n_sets"] == 1 and np.isnan(one["lo"])


def test_case_level_comparisons_pair_seeds_and_cases_and_name_the_labelled_sets():
    from anatosynth.experiment.stats import case_level_comparisons, case_level_table

    def row(arm, seed, gain):
        return {"arm": arm, "dataset": "d", "seed": seed, "train_cases": 1, "dice": 50.0,
                "labelled": ["x"] if seed in (0, 2) else [f"y{seed}"],
                "test_cases": {"t1": 50.0 + gain, "t2": 60.0 + gain, "t3": 40.0 + 2 * gain}}

    rows = [row("scratch", s, 0) for s in range(4)] + [row("anatomy", s, 3.0) for s in range(4)]
    (c,) = case_level_comparisons(rows, [], "scratch")
    assert (c["a"], c["b"], c["n_seeds"], c["n_sets"], c["n_cases"]) == ("anatomy", "scratch", 4, 3, 3)
    assert c["delta"] == pytest.approx(4.0) and c["per_case"]["t3"] == pytest.approx(6.0)
    assert "| d | 1 | anatomy − scratch | 4 | 3 | 3 | 4.00 [" in case_level_table([c])


def test_holm_and_the_primary_table_answer_the_pre_registered_questions():
    from anatosynth.experiment.stats import holm, primary_table

    assert holm([0.01, 0.04]) == pytest.approx([0.02, 0.04])
    assert holm([0.03, 0.02]) == pytest.approx([0.04, 0.04])  # step-down keeps the order monotone
    found = [{"a": "anatomy", "b": "primitives", "dataset": "x", "train_cases": 1, "delta": 2.0, "lo": 0.5,
              "hi": 3.5, "p": 0.01, "n_seeds": 30, "n_sets": 10, "n_cases": 7}]
    questions = [{"a": "anatomy", "b": "primitives", "dataset": "x", "train_cases": 1},
                 {"a": "anatomy", "b": "primitives", "dataset": "y", "train_cases": 1}]
    text, rows = primary_table(found, questions)
    assert rows[0]["p_holm"] == pytest.approx(0.02) and "anatomy ahead" in text and "| open |" in text  # open = p 1
    text, rows = primary_table(found, questions, planned={("anatomy", "primitives", "x", 1): 40})
    assert "interim (30 of 40 seeds): anatomy ahead" in text
