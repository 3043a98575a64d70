"""Result rows carry the pre-training budget and recipe; the budget plot joins arms that differ in budget only."""

from __future__ import annotations

import csv

from anatosynth.experiment.plots import plot_all
from anatosynth.experiment.protocol import expand
from anatosynth.experiment.runner import _rows, collect_results, write_results_csv

RAW = {
    "name": "budget",
    "bank": {"source": "data/flare", "subjects": 5, "spacing": [3, 3, 6]},
    "pretrain": {"model": "unet", "feature_size": 4, "steps": 10, "batch": 2},
    "finetune": {"model": "unet", "feature_size": 4, "steps": 5},
    "datasets": [{"name": "a", "path": "data/a", "train_cases": [2]}],
    "arms": [{"name": "scratch", "pretrain": "none"},
             {"name": "anatomy", "pretrain": {"mode": "anatomy"}},
             {"name": "anatomy-long", "pretrain": {"mode": "anatomy", "steps": 30}},
             {"name": "anatomy-clutter", "pretrain": {"mode": "anatomy", "synth": {"clutter": 0.3}}}],
    "seeds": [0, 1],
}


def _results(protocol):
    return {j.key: {"dice": 50.0 + 5 * j.seed + (3 if j.arm == "anatomy-long" else 0), "per_class": {"x": 1.0},
                    "validation": [[100, 0.9, 0.3 + 0.01 * j.seed], [200, 0.5, float("nan")], [300, 0.4, 0.5]]}
            for j in protocol.finetunes}


def test_rows_carry_budget_and_recipe_and_survive_the_csv(tmp_path):
    protocol = expand(RAW)
    rows = _rows(protocol, _results(protocol))
    by_arm = {r["arm"]: r for r in rows if r["seed"] == 0}
    assert by_arm["scratch"]["budget"] is None and by_arm["scratch"]["recipe"] is None
    assert by_arm["anatomy"]["budget"] == 20 and by_arm["anatomy-long"]["budget"] == 60
    assert by_arm["anatomy"]["recipe"] == by_arm["anatomy-long"]["recipe"]  # only the budget differs
    assert by_arm["anatomy-clutter"]["recipe"] != by_arm["anatomy"]["recipe"]
    write_results_csv(rows, tmp_path / "results.csv")
    # curves, per-case Dice and labelled cases live in the per-job JSON files, not in the CSV
    json_only = ("validation", "test_cases", "labelled")
    assert collect_results(tmp_path / "results.csv") == [{k: v for k, v in r.items() if k not in json_only}
                                                         for r in rows]
    assert "budget" in next(csv.reader(open(tmp_path / "results.csv")))


def test_where_the_pre_training_ran_is_not_the_recipe():
    """A budget point pre-trained in fp32 on a GPU joins the CPU points' line (its job is its own); one in
    bf16 (amp on a GPU) is another recipe."""
    gpu = {"name": "anatomy-gpu", "pretrain": {"mode": "anatomy", "steps": 40, "device": "cuda", "amp": False}}
    bf16 = {"name": "anatomy-bf16", "pretrain": {"mode": "anatomy", "steps": 40, "device": "cuda", "amp": True}}
    protocol = expand({**RAW, "arms": RAW["arms"] + [gpu, bf16]})
    by_arm = {r["arm"]: r for r in _rows(protocol, _results(protocol)) if r["seed"] == 0}
    assert by_arm["anatomy-gpu"]["recipe"] == by_arm["anatomy"]["recipe"] and by_arm["anatomy-gpu"]["budget"] == 80
    assert len({by_arm[a]["job"] for a in ("anatomy", "anatomy-long", "anatomy-gpu")}) == 3
    assert by_arm["anatomy-bf16"]["recipe"] != by_arm["anatomy"]["recipe"]


def test_budget_plot_only_when_a_recipe_has_two_budgets(tmp_path):
    from anatosynth.experiment.plots import budget_lines

    protocol = expand(RAW)
    # one recipe at two budgets (anatomy 20 patches, anatomy-long 60, 3 points ahead), as paired gains
    (panel,) = budget_lines(_rows(protocol, _results(protocol)), "scratch").values()
    (points,) = panel.values()
    assert [(b, c["a"], c["delta"], c["n_pairs"]) for b, c in points] == [(20, "anatomy", 0.0, 2),
                                                                         (60, "anatomy-long", 3.0, 2)]
    # a grid half done: anatomy-long has seed 0 only, so both points use seed 0 alone
    half = [r for r in _rows(protocol, _results(protocol)) if not (r["arm"] == "anatomy-long" and r["seed"] == 1)]
    (panel,) = budget_lines(half, "scratch").values()
    assert [(c["a"], c["n_pairs"]) for _, c in next(iter(panel.values()))] == [("anatomy", 1), ("anatomy-long", 1)]
    assert budget_lines([r for r in half if r["arm"] != "anatomy-long"], "scratch") == {}  # one budget: no line
    paths = plot_all(_rows(protocol, _results(protocol)), tmp_path)
    assert paths["budget"] == tmp_path / "dice_vs_budget.png" and paths["budget"].stat().st_size > 1000
    one_budget = expand({**RAW, "arms": [a for a in RAW["arms"] if a["name"] != "anatomy-long"]})
    (tmp_path / "b").mkdir()
    assert "budget" not in plot_all(_rows(one_budget, _results(one_budget)), tmp_path / "b")
    # the same folder re-drawn from rows that no longer allow the plot: the old one goes
    assert "budget" not in plot_all(_rows(one_budget, _results(one_budget)), tmp_path)
    assert not (tmp_path / "dice_vs_budget.png").exists() and (tmp_path / "dice_per_arm.png").exists()


def test_validation_curves_are_drawn_from_rows_that_carry_them(tmp_path):
    protocol = expand(RAW)
    rows = _rows(protocol, _results(protocol))
    assert rows[0]["validation"][0] == [100, 0.9, 0.3]
    assert plot_all(rows, tmp_path)["curves"].stat().st_size > 1000
    (tmp_path / "csv").mkdir()
    bare = [{k: v for k, v in r.items() if k != "validation"} for r in rows]  # as read back from results.csv
    assert "curves" not in plot_all(bare, tmp_path / "csv")


def test_paired_differences_per_comparison_and_setting_with_test_dice_when_every_row_has_it(tmp_path):
    from anatosynth.experiment.plots import difference_lines

    protocol = expand(RAW)
    rows = _rows(protocol, _results(protocol))
    # anatomy-long is 3 points above every other arm in every seed; compare once even when listed twice
    metrics, lines = difference_lines(rows, "scratch", [["anatomy-long", "anatomy"], ["anatomy", "scratch"]])
    assert metrics == ["dice"]
    assert [name for name, _ in lines] == [f"{a} − {b}\na, 2 labelled" for a, b in
                                           [("anatomy", "scratch"), ("anatomy-long", "scratch"),
                                            ("anatomy-clutter", "scratch"), ("anatomy-long", "anatomy")]]
    assert [per["dice"]["per_pair"] for _, per in lines] == [[0.0, 0.0], [3.0, 3.0], [0.0, 0.0], [3.0, 3.0]]
    assert [per["dice"]["delta"] for _, per in lines] == [0.0, 3.0, 0.0, 3.0]
    for r in rows:
        r["test_dice"] = r["dice"] - (1.0 if r["arm"] == "scratch" and r["seed"] == 1 else 0.0)
    metrics, lines = difference_lines(rows, "scratch", [])
    assert metrics == ["dice", "test_dice"] and lines[0][1]["test_dice"]["per_pair"] == [0.0, 1.0]
    assert lines[0][1]["test_dice"]["delta"] == 0.5 and lines[0][1]["test_dice"]["delta_lo"] == 0.0
    paths = plot_all(rows, tmp_path, "scratch", 5, [["anatomy-long", "anatomy"]])
    assert paths["differences"].name == "paired_differences.png" and paths["differences"].stat().st_size > 1000
    only_baseline = [r for r in rows if r["arm"] == "scratch"]
    (tmp_path / "b").mkdir()
    assert "differences" not in plot_all(only_baseline, tmp_path / "b", "scratch")
