"""PNG plots of experiment results: Dice per arm, against labelled cases, pool size, bank subjects and the
pre-training budget, paired differences between arms, and the validation curves of fine-tuning."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from anatosynth.experiment.stats import case_level_comparisons, compare_arms, main_grid
from anatosynth.options import counted

__all__ = ["plot_all"]


# What each plot of a report shows, and what it needs: the report lists them (:func:`plots_section`)
PLOTS = {
    "per_arm": ("dice_per_arm.png", "Dice per arm at each dataset's largest labelled-set size, seeds as dots",
                "finished runs"),
    "labelled": ("dice_vs_labelled.png", "Dice against labelled cases per arm, mean ± std over seeds",
                 "finished runs"),
    "samples": ("dice_vs_pool.png", "Dice against the synthetic pool size", "the protocol's scaling: samples points"),
    "subjects": ("dice_vs_subjects.png", "Dice against the bank's subjects", "the protocol's scaling: subjects points"),
    "curves": ("dice_curves.png", "validation Dice against fine-tuning step, mean over seeds per arm",
               "runs with their validation curves"),
    "budget": ("dice_vs_budget.png", "the paired gain over the baseline against the pre-training budget",
               "one recipe with finished pairs at two or more budgets"),
    "differences": ("paired_differences.png", "paired differences per comparison and setting: seeds as dots, "
                    "bootstrap and t intervals", "a comparison with at least one pair"),
    "case_level": ("case_level_differences.png", "paired test-Dice differences per seed (coloured by labelled "
                   "set) and per test case, with the two-level bootstrap interval",
                   "runs that recorded Dice per test case"),
}


def _save(plt, fig, out: Path, key: str) -> Path:
    """Lay out, write ``out/<the plot's file>`` and close the figure; returns the path."""
    fig.tight_layout()
    path = out / PLOTS[key][0]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots_section(paths: dict[str, Path]) -> str:
    """The report's list of plots: what each drawn one shows, and what each missing one waits for."""
    lines = ["## Plots", ""]
    for name, (file, what, needs) in PLOTS.items():
        lines.append(f"- `{file}`: {what}" if name in paths else f"- `{file}`: not drawn (needs {needs})")
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _baseline_band(ax, rows: list[dict], dataset: str, k: int, baseline: str) -> None:
    """The baseline's mean Dice (dashed) and ± one standard deviation (band) on ``dataset`` with ``k`` cases."""
    base = [r["dice"] for r in main_grid(rows) if r["dataset"] == dataset and r["arm"] == baseline
            and r["train_cases"] == k]
    if base:
        m, s = _mean_std(base)
        ax.axhline(m, color="0.4", ls="--", label=baseline)
        ax.axhspan(m - s, m + s, color="0.8", alpha=0.5)


def plot_all(rows: list[dict], out: Path, baseline: str = "scratch", bank_subjects: int = 5,
             pairs: list | None = None) -> dict[str, Path]:
    """Every plot the rows allow, into ``out``; returns name -> path. ``pairs``: the protocol's ``compare``
    (arm pairs whose paired differences are drawn beside each arm's difference from the baseline). A plot
    of an earlier report that these rows do not allow is removed, so the folder never shows a stale one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for file, _, _ in PLOTS.values():
        (out / file).unlink(missing_ok=True)
    paths: dict[str, Path] = {}
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    if not datasets:
        return paths
    arms = list(dict.fromkeys(r["arm"] for r in rows))

    # 1. Dice per arm (largest labelled-set size), seeds as dots
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        main = [r for r in main_grid(rows) if r["dataset"] == ds]
        k = max(r["train_cases"] for r in main) if main else None
        shown = [a for a in arms if any(r["arm"] == a and r["train_cases"] == k for r in main)]  # arms run here
        for i, arm in enumerate(shown):
            vals = [r["dice"] for r in main if r["arm"] == arm and r["train_cases"] == k]
            m, s = _mean_std(vals)
            colour = "0.6" if arm == baseline else f"C{arms.index(arm)}"  # one colour per arm in every panel
            ax.bar(i, m, yerr=s, color=colour, alpha=0.8, capsize=3)
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, s=10, color="k", zorder=3)
        ax.set_xticks(range(len(shown)), shown, rotation=30, ha="right")
        ax.set_ylabel("mean foreground Dice (%)")
        ax.set_title(f"{ds}, {counted(k, 'labelled case')}" if k is not None else ds)
        lo = min((r["dice"] for r in main), default=0)
        ax.set_ylim(max(0, lo - 10), None)
    fig.tight_layout()
    paths["per_arm"] = out / PLOTS["per_arm"][0]
    fig.savefig(paths["per_arm"], dpi=110)
    plt.close(fig)

    # 2. Dice against labelled cases: a log2 axis ticked at the sizes run, arms nudged apart so that their
    # error bars (± one standard deviation over seeds) do not hide each other
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        here = [r for r in main_grid(rows) if r["dataset"] == ds]
        shown = [a for a in arms if any(r["arm"] == a for r in here)]
        for j, arm in enumerate(shown):
            by_k = defaultdict(list)
            for r in here:
                if r["arm"] == arm:
                    by_k[r["train_cases"]].append(r["dice"])
            ks = sorted(by_k)
            ms = np.array([_mean_std(by_k[k]) for k in ks])
            nudge = 2 ** (0.06 * (j - (len(shown) - 1) / 2))
            colour = "0.4" if arm == baseline else f"C{arms.index(arm)}"
            ax.errorbar([k * nudge for k in ks], ms[:, 0], yerr=ms[:, 1], marker="o", capsize=3, label=arm,
                        color=colour)
            for k, m in zip(ks, ms[:, 0]):  # how many seeds each point averages (a grid half done differs)
                ax.annotate(str(len(by_k[k])), (k * nudge, m), textcoords="offset points", xytext=(4, 3),
                            fontsize=6, color=colour)
        sizes = sorted({r["train_cases"] for r in here})
        if sizes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(k) for k in sizes])
            ax.minorticks_off()
            ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
        ax.set_xlabel("labelled training cases")
        ax.set_ylabel("mean foreground Dice (%)")
        ax.set_title(f"{ds} (mean ± std over seeds; small numbers: seeds)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["labelled"] = out / PLOTS["labelled"][0]
    fig.savefig(paths["labelled"], dpi=110)
    plt.close(fig)

    # 3./4. scaling: pool size and bank subjects (the scaled arm; scratch as a reference band)
    for key, xlabel, name in (("samples", "synthetic pool size (samples)", PLOTS["samples"][0]),
                              ("subjects", "bank subjects", PLOTS["subjects"][0])):
        scaled = [r for r in rows if r.get(key)]
        if not scaled:
            continue
        arm = scaled[0]["arm"]
        fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.8), squeeze=False)
        for ax, ds in zip(axes[0], datasets):
            pts = [r for r in scaled if r["dataset"] == ds]
            if not pts:
                continue
            k = pts[0]["train_cases"]
            by_x = defaultdict(list)
            for r in pts:
                by_x[r[key]].append(r["dice"])
            # the main grid's point: endless pool / default bank
            main = [r["dice"] for r in main_grid(rows)
                    if r["dataset"] == ds and r["arm"] == arm and r["train_cases"] == k]
            xs = sorted(by_x)
            if main:
                x_main = (max(xs) * 4 if key == "samples" else bank_subjects)
                by_x[x_main] += main
                xs = sorted(by_x)
            ms = np.array([_mean_std(by_x[x]) for x in xs])
            ax.errorbar(xs, ms[:, 0], yerr=ms[:, 1], marker="o", capsize=3, label=arm)
            _baseline_band(ax, rows, ds, k, baseline)
            if key == "samples":
                ax.set_xscale("log")
                if main:
                    ax.set_xticks(xs, [str(x) for x in xs[:-1]] + ["endless"])
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mean foreground Dice (%)")
            ax.set_title(f"{ds}, {counted(k, 'labelled case')}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths[key] = out / name
        fig.savefig(paths[key], dpi=110)
        plt.close(fig)

    curves = _plot_curves(plt, rows, out, arms, baseline)
    if curves is not None:
        paths["curves"] = curves
    budget = _plot_budget(plt, rows, out, baseline)
    if budget is not None:
        paths["budget"] = budget
    differences = _plot_differences(plt, rows, out, baseline, pairs or [])
    if differences is not None:
        paths["differences"] = differences
    case_level = plot_case_level(plt, case_level_comparisons(rows, pairs or [], baseline), out)
    if case_level is not None:
        paths["case_level"] = case_level
    return paths


def plot_case_level(plt, comparisons: list[dict], out: Path) -> Path | None:
    """One row per comparison and setting (:func:`~anatosynth.experiment.stats.case_level_comparisons`): left,
    each seed's mean test-case difference, seeds that trained on the same labelled cases in one colour; right,
    each test case's mean difference over seeds, sorted. Both show the two-level bootstrap interval as a band
    and the estimate as a line: where an interval is narrow only because seeds or cases were counted as
    independent, the dots show it. None without comparisons."""
    if not comparisons:
        return None
    fig, axes = plt.subplots(len(comparisons), 2, figsize=(10, 1.9 * len(comparisons) + 0.6), squeeze=False)
    for (left, right), c in zip(axes, comparisons):
        sets = list(dict.fromkeys(tuple(v) for v in c["labelled"].values()))
        seeds = sorted(c["per_seed"])
        left.scatter(range(len(seeds)), [c["per_seed"][s] for s in seeds], s=18, zorder=3,
                     c=[f"C{sets.index(tuple(c['labelled'][s])) % 10}" for s in seeds])
        left.set_xticks(range(len(seeds)), [str(s) for s in seeds], fontsize=6)
        left.set_xlabel(f"seed ({len(seeds)} seeds, {len(sets)} distinct labelled sets: colours)", fontsize=7)
        cases = sorted(c["per_case"], key=c["per_case"].get)
        right.scatter(range(len(cases)), [c["per_case"][k] for k in cases], s=10, color="k", zorder=3)
        right.set_xticks([])
        right.set_xlabel(f"test case, sorted ({len(cases)} cases)", fontsize=7)
        for ax in (left, right):
            if np.isfinite(c["lo"]) and np.isfinite(c["hi"]):
                ax.axhspan(c["lo"], c["hi"], color="C0", alpha=0.15, lw=0)
            ax.axhline(c["delta"], color="C0", lw=1.2)
            ax.axhline(0, color="0.5", ls="--", lw=1)
            ax.set_ylabel("Δ test Dice (points)", fontsize=7)
        left.set_title(f"{c['a']} − {c['b']}, {c['dataset']}, {c['train_cases']} labelled: "
                       f"{c['delta']:+.2f} [{c['lo']:.2f}, {c['hi']:.2f}] (two-level bootstrap)",
                       fontsize=8, loc="left")
    return _save(plt, fig, out, "case_level")


def difference_lines(rows: list[dict], baseline: str, pairs: list) -> tuple[list[str], list[tuple[str, dict]]]:
    """What :func:`_plot_differences` draws: the metrics (``dice``, and ``test_dice`` when every main-grid row
    has it) and, per comparison and setting with at least one pair, ``(label, {metric: comparison})`` with
    the comparison as :func:`~anatosynth.experiment.stats.compare_arms` gives it (``per_pair``, ``delta``,
    ``delta_lo``, ``delta_hi``; None for a metric without pairs). Comparisons: each arm against
    ``baseline``, then ``pairs`` (the protocol's ``compare``), once each."""
    main = main_grid(rows)
    arms = list(dict.fromkeys(r["arm"] for r in main))
    comparisons = list(dict.fromkeys([(a, baseline) for a in arms if a != baseline] + [tuple(p) for p in pairs]))
    metrics = ["dice"] + (["test_dice"] if main and all(r.get("test_dice") is not None for r in main) else [])
    found = {m: {(c["a"], c["b"], c["dataset"], c["train_cases"]): c for c in compare_arms(main, comparisons, m)}
             for m in metrics}
    settings = list(dict.fromkeys((r["dataset"], r["train_cases"]) for r in main))
    lines: list[tuple[str, dict[str, dict | None]]] = []
    for a, b in comparisons:
        for ds, k in settings:
            per = {m: found[m].get((a, b, ds, k)) for m in metrics}
            if per["dice"] is not None:
                lines.append((f"{a} − {b}\n{ds}, {k} labelled", per))
    return metrics, lines


def _plot_differences(plt, rows: list[dict], out: Path, baseline: str, pairs: list) -> Path | None:
    """Paired differences on the main grid, one line per comparison and setting (see
    :func:`difference_lines`): per-seed differences as dots, their mean with its 95 % bootstrap interval as a
    thick bar and its Student-t interval as a thin one, green when the t-interval is above zero, red when
    below. A panel for Dice over the evaluation cases
    and, when the rows have it, one for test Dice (the validation cases left out). None when no comparison
    has a pair."""
    names, lines = difference_lines(rows, baseline, pairs)
    labels = {"dice": "Δ Dice, evaluation cases (points)", "test_dice": "Δ Dice, test cases only (points)"}
    metrics = [(m, labels[m]) for m in names]
    if not lines:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 0.55 * len(lines) + 1.4),
                             squeeze=False, sharey=True)
    for ax, (metric, xlabel) in zip(axes[0], metrics):
        for y, (_, per) in enumerate(lines):
            c = per[metric]
            if c is None:
                continue
            lo, hi = c["delta_lo"], c["delta_hi"]
            t_lo, t_hi = c["delta_t_lo"], c["delta_t_hi"]
            # green / red: the (wider, with few seeds) t-interval is above / below zero
            colour = "C2" if t_lo > 0 else ("C3" if t_hi < 0 else "0.3")
            if np.isfinite(t_lo) and np.isfinite(t_hi):
                ax.plot([t_lo, t_hi], [y, y], color=colour, lw=1, marker="|", ms=8)
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [y, y], color=colour, lw=2.5, alpha=0.7)
            ax.scatter(c["per_pair"], np.full(len(c["per_pair"]), y) + 0.18, s=9, color="k", zorder=3)
            ax.scatter([c["delta"]], [y], marker="D", s=30, color=colour, zorder=4)
        ax.axvline(0, color="0.5", ls="--", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_yticks(range(len(lines)), [name for name, _ in lines], fontsize=7)
    axes[0][0].set_ylim(len(lines) - 0.4, -0.6)  # the first comparison on top (the panels share the axis)
    axes[0][0].set_title("paired differences (dots: seeds; 95 % CI of the mean: thick bootstrap, thin t)",
                         fontsize=9, loc="left")
    return _save(plt, fig, out, "differences")


def budget_lines(rows: list[dict], baseline: str) -> dict[tuple[str, int], dict[str, list[tuple[int, dict]]]]:
    """What :func:`_plot_budget` draws: per setting (dataset, labelled cases) and per recipe run at two or
    more budgets (arms that differ only in pre-training steps), ``(budget, comparison)`` points sorted by
    budget, the comparison being the arm's paired difference from ``baseline`` as
    :func:`~anatosynth.experiment.stats.compare_arms` gives it. Every point of a line uses the same seeds
    (those finished at every budget and for the baseline), so that a grid half done cannot draw a trend
    that is only a change of seeds. Lines with fewer than two such budgets are left out."""
    main = [r for r in main_grid(rows) if r.get("budget")]
    budgets: dict[str, set[int]] = defaultdict(set)
    for r in main:
        budgets[r["recipe"]].add(r["budget"])
    base = main_grid([r for r in rows if r["arm"] == baseline])
    out: dict[tuple[str, int], dict[str, list[tuple[int, dict]]]] = {}
    for recipe in (recipe for recipe, b in budgets.items() if len(b) > 1):
        for ds, k in dict.fromkeys((r["dataset"], r["train_cases"]) for r in main if r["recipe"] == recipe):
            line = [r for r in main if r["recipe"] == recipe and r["dataset"] == ds and r["train_cases"] == k]
            arms = list(dict.fromkeys(r["arm"] for r in line))
            seeds = {r["seed"] for r in base if r["dataset"] == ds and r["train_cases"] == k}
            for arm in arms:
                seeds &= {r["seed"] for r in line if r["arm"] == arm}
            kept = [r for r in line + base if r["seed"] in seeds and r["dataset"] == ds and r["train_cases"] == k]
            points = sorted(((next(r["budget"] for r in line if r["arm"] == c["a"]), c)
                             for c in compare_arms(kept, [(arm, baseline) for arm in arms])), key=lambda p: p[0])
            if len(points) > 1:
                out.setdefault((ds, k), {})[recipe] = points
    return out


def _plot_budget(plt, rows: list[dict], out: Path, baseline: str) -> Path | None:
    """The paired gain over ``baseline`` against the pre-training budget (synthetic patches, log axis): one
    line per recipe run at two or more budgets (see :func:`budget_lines`), the mean with its 95 % bootstrap
    interval and each seed's difference as a dot, one panel per dataset and labelled-set size. Paired
    differences, not Dice itself: the seeds' spread (which cases are labelled) would hide the trend. None
    when no recipe has two budgets with pairs (see :func:`budget_lines`)."""
    panels = budget_lines(rows, baseline)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, ((ds, k), lines) in zip(axes[0], sorted(panels.items())):
        ticks: set[int] = set()
        for i, points in enumerate(lines.values()):
            xs = [b for b, _ in points]
            ticks.update(xs)
            mean = [c["delta"] for _, c in points]
            err = np.array([[c["delta"] - c["delta_lo"], c["delta_hi"] - c["delta"]] for _, c in points]).T
            n = points[0][1]["n_pairs"]
            ax.errorbar(xs, mean, yerr=np.nan_to_num(err), marker="o", capsize=3, color=f"C{i}",
                        label=" / ".join(c["a"] for _, c in points) + f" ({n} seed{'' if n == 1 else 's'})")
            for b, c in points:
                ax.scatter(np.full(len(c["per_pair"]), b * 1.04), c["per_pair"], s=9, color="k", zorder=3)
        ax.axhline(0, color="0.5", ls="--", lw=1, label=baseline)
        ax.set_xscale("log")
        ax.set_xticks(sorted(ticks), [f"{t:,}" for t in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlim(min(ticks) / 1.6, max(ticks) * 1.6)
        ax.set_xlabel("pre-training budget (synthetic patches)")
        ax.set_ylabel(f"Δ Dice vs {baseline}, evaluation cases (points)")
        ax.set_title(f"{ds}, {k} labelled (mean, 95 % CI; dots: seeds)", fontsize=9)
        ax.legend(fontsize=7)
    return _save(plt, fig, out, "budget")


def _plot_curves(plt, rows: list[dict], out: Path, arms: list[str], baseline: str) -> Path | None:
    """Validation Dice against fine-tuning step, the mean over seeds per arm, one panel per dataset and
    labelled-set size: whether each arm had converged where it stopped. None when no row has a curve
    (rows read back from results.csv carry none; the per-job JSON files under ``results:`` do)."""
    main = [r for r in main_grid(rows) if r.get("validation")]
    if not main:
        return None
    panels = sorted({(r["dataset"], r["train_cases"]) for r in main})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (ds, k) in zip(axes[0], panels):
        for arm in arms:
            by_step = defaultdict(list)
            for r in main:
                if r["arm"] == arm and r["dataset"] == ds and r["train_cases"] == k:
                    for step, _loss, dice in r["validation"]:
                        if dice == dice:  # NaN: no validation at that step
                            by_step[int(step)].append(100 * dice)
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [np.mean(by_step[s]) for s in steps], marker="o", ms=3, label=arm,
                        color="0.4" if arm == baseline else f"C{arms.index(arm)}")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("validation Dice % (mean over seeds)")
        ax.set_title(f"{ds}, {k} labelled cases")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return _save(plt, fig, out, "curves")
