"""Statistics for experiment results: mean ± std over seeds and paired differences with bootstrap CIs.

Results are rows (dicts) with at least ``arm``, ``dataset``, ``seed``, ``train_cases`` and ``dice``
(mean foreground Dice of one fine-tuned run, in percent). Rows of two arms are *paired* when they share
dataset, seed and train_cases: same split, same fine-tuning seed, only the pre-training differs (the
baseline, scratch, has one row per pair; scaling points of an arm pair with the same scratch row). The
confidence interval of the mean paired difference is a percentile bootstrap over pairs (seeded, so tables
are reproducible). With few pairs (six seeds) a percentile bootstrap is on the narrow side, so tables also
give the Student-t interval of the mean and how many pairs the arm is ahead in.

Both treat the seeds as independent and the evaluation cases as fixed. :func:`case_seed_bootstrap` does
neither: it resamples labelled sets (seeds that trained on the same labelled cases count once) and test
cases, crossed, so its interval is for a new user's labelled cases and a new user's scans
(:func:`case_level_comparisons`; docs/method.md "Intervals").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "t_interval", "paired_differences", "summarise", "markdown_table", "compare_arms",
           "compare_table", "scaling_differences", "main_grid", "per_class_summary", "per_class_table",
           "json_ready", "PAIR_KEYS", "case_seed_bootstrap", "case_level_comparisons", "case_level_table", "holm",
           "primary_table"]

PAIR_KEYS = ("dataset", "seed", "train_cases")
GROUP_KEYS = ("dataset", "train_cases", "samples", "subjects", "arm")


def main_grid(rows: list[dict]) -> list[dict]:
    """Rows of the main grid (endless stream, default bank), without the scaling points."""
    return [r for r in rows if not r.get("samples") and not r.get("subjects")]


def bootstrap_ci(values: Sequence[float], n_boot: int = 10000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaN, NaN for fewer than two values)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def t_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """Student-t CI of the mean of ``values`` (NaN, NaN for fewer than two values)."""
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size < 2:
        return float("nan"), float("nan")
    half = float(stats.t.ppf(1 - alpha / 2, v.size - 1)) * float(v.std(ddof=1)) / np.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def _intervals(d: Sequence[float]) -> dict:
    """The paired differences' mean, bootstrap and t intervals, and how many pairs are above zero."""
    lo, hi = bootstrap_ci(d)
    t_lo, t_hi = t_interval(d)
    return {"delta": float(np.mean(d)) if len(d) else float("nan"), "delta_lo": lo, "delta_hi": hi,
            "delta_t_lo": t_lo, "delta_t_hi": t_hi, "n_ahead": int(sum(x > 0 for x in d)), "n_pairs": len(d)}


def _key(row: dict, keys: Iterable[str]) -> tuple:
    return tuple(row.get(k) for k in keys)


def paired_differences(rows: list[dict], baseline: str = "scratch", metric: str = "dice") -> dict[tuple, list[float]]:
    """Differences ``arm - baseline`` of ``metric`` for each pair, grouped by (dataset, train_cases,
    samples, subjects, arm). Arms without a baseline partner contribute nothing."""
    base = {_key(r, PAIR_KEYS): r[metric] for r in rows if r["arm"] == baseline}
    out: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r["arm"] == baseline:
            continue
        partner = base.get(_key(r, PAIR_KEYS))
        if partner is not None and np.isfinite(partner) and np.isfinite(r[metric]):
            out[_key(r, GROUP_KEYS)].append(float(r[metric]) - float(partner))
    return dict(out)


def summarise(rows: list[dict], baseline: str = "scratch", metric: str = "dice") -> list[dict]:
    """One row per (dataset, train_cases, samples, subjects, arm): n, mean, std, and the paired Δ with its
    bootstrap and t intervals and the number of pairs ahead (:func:`_intervals`)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    order: list[tuple] = []
    for r in rows:
        k = _key(r, GROUP_KEYS)
        if k not in groups:
            order.append(k)
        groups[k].append(float(r[metric]))
    diffs = paired_differences(rows, baseline, metric)
    out = []
    for k in order:
        v = np.asarray(groups[k], dtype=np.float64)
        out.append({**dict(zip(GROUP_KEYS, k)), "n": int(v.size), "mean": float(np.nanmean(v)),
                    "std": float(np.nanstd(v, ddof=1)) if v.size > 1 else float("nan"),
                    **_intervals(diffs.get(k, []))})
    return out


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _ci(s: dict, kind: str = "") -> str:
    """``[lo, hi]`` of a summary's bootstrap (``kind=""``) or Student-t (``kind="t"``) 95 % interval of Δ."""
    key = f"delta_{kind}_" if kind else "delta_"
    return f"[{_fmt(s[key + 'lo'])}, {_fmt(s[key + 'hi'])}]"


def _t_and_ahead(s: dict, baseline: bool = False) -> str:
    """The t-interval and pairs-ahead cells of a table row ('—' for the baseline, 'n/a' without pairs)."""
    if baseline:
        return "— | —"
    if not s["n_pairs"]:
        return "n/a | n/a"
    return f"{_ci(s, 't')} | {s['n_ahead']}/{s['n_pairs']}"


def markdown_table(summary: list[dict], baseline: str = "scratch", label: str = "Dice %") -> str:
    """A Markdown table of :func:`summarise` output, one block per dataset (``label``: the metric's name)."""
    lines = []
    for dataset in dict.fromkeys(s["dataset"] for s in summary):
        lines += [f"**{dataset}**", "",
                  f"| arm | labelled cases | synthetic pool | bank subjects | n | {label} (mean ± std) "
                  f"| Δ vs {baseline} [bootstrap 95% CI] | t 95% CI | ahead |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in (s for s in summary if s["dataset"] == dataset):
            pool = "endless" if s.get("samples") in (None, 0, "endless") else s["samples"]
            subj = "–" if s.get("subjects") in (None, 0) else s["subjects"]
            delta = "—" if s["arm"] == baseline else (
                f"{_fmt(s['delta'], 2)} {_ci(s)}" if s["n_pairs"] else "n/a")
            lines.append(f"| {s['arm']} | {s['train_cases']} | {pool} | {subj} | {s['n']} | "
                         f"{_fmt(s['mean'])} ± {_fmt(s['std'])} | {delta} | {_t_and_ahead(s, s['arm'] == baseline)} |")
        lines.append("")
    return "\n".join(lines)


def compare_arms(rows: list[dict], pairs: Sequence[Sequence[str]], metric: str = "dice") -> list[dict]:
    """Paired differences ``a - b`` between two pre-trained arms (e.g. anatomy vs random), per dataset and
    labelled-set size, on the main grid (endless stream, default bank): mean, bootstrap and t CIs, pairs
    ahead, n."""
    out = []
    main = main_grid(rows)
    for a, b in pairs:
        two = [r for r in main if r["arm"] in (a, b)]
        for k, d in paired_differences(two, baseline=b, metric=metric).items():
            group = dict(zip(GROUP_KEYS, k))
            out.append({"dataset": group["dataset"], "train_cases": group["train_cases"], "a": a, "b": b,
                        **_intervals(d), "per_pair": [round(x, 4) for x in d]})
    return out


def scaling_differences(rows: list[dict], metric: str = "dice") -> list[dict]:
    """Each scaling point (a synthetic pool of ``samples``, or a bank of ``subjects``) against its own arm on
    the main grid (endless stream, the protocol's bank), paired by dataset, seed and labelled cases: does
    the change of pool or bank move the arm? Same fields as :func:`compare_arms`; ``a`` names the point
    (e.g. ``anatomy (20 subjects)``), ``b`` the arm."""
    main = main_grid(rows)
    scaled = [r for r in rows if r.get("samples") or r.get("subjects")]
    out = []
    for arm in dict.fromkeys(r["arm"] for r in scaled):
        # the arm's own main-grid runs, renamed, are the baseline its scaling points pair with
        own = f"{arm} (main grid)"
        mine = [{**r, "arm": own} for r in main if r["arm"] == arm] + [r for r in scaled if r["arm"] == arm]
        for k, d in paired_differences(mine, baseline=own, metric=metric).items():
            g = dict(zip(GROUP_KEYS, k))
            point = f"{g['samples']} samples" if g["samples"] else f"{g['subjects']} subjects"
            out.append({"dataset": g["dataset"], "train_cases": g["train_cases"], "a": f"{arm} ({point})",
                        "b": arm, **_intervals(d), "per_pair": [round(x, 4) for x in d]})
    return out


def compare_table(comparisons: list[dict], label: str = "Δ Dice %") -> str:
    """A Markdown table of :func:`compare_arms` output ('' when there is none; ``label``: the metric's Δ)."""
    if not comparisons:
        return ""
    lines = ["**paired differences between arms** (same dataset, seed and labelled cases)", "",
             f"| dataset | labelled cases | difference | n | {label} [bootstrap 95% CI] | t 95% CI | ahead "
             "| per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['dataset']} | {c['train_cases']} | {c['a']} − {c['b']} | {c['n_pairs']} | "
                     f"{_fmt(c['delta'])} {_ci(c)} | {_t_and_ahead(c)} | "
                     f"{', '.join(f'{x:+.1f}' for x in c['per_pair'])} |")
    return "\n".join(lines) + "\n"


def per_class_summary(rows: list[dict], baseline: str = "scratch") -> list[dict]:
    """:func:`summarise` per class on the main grid: which organs an arm's gain comes from. Rows need
    ``per_class`` (class -> Dice %); a class a run did not score is left out of that run's pairs."""
    main = main_grid(rows)
    classes = list(dict.fromkeys(c for r in main for c in (r.get("per_class") or {})))
    out = []
    for name in classes:
        scored = [{**r, "class_dice": float(r["per_class"][name])} for r in main if name in (r.get("per_class") or {})]
        out += [{"class": name, **s} for s in summarise(scored, baseline, "class_dice")]
    return out


def per_class_table(per_class: list[dict], baseline: str = "scratch") -> str:
    """A Markdown table of :func:`per_class_summary` output, one block per dataset and labelled-set size
    with an arm besides the baseline: the baseline's Dice per class (mean ± std over its n seeds), then each
    arm's paired Δ (mean over its pairs; from two pairs on, the 95 % bootstrap CI, the t-interval and the
    pairs ahead, as in :func:`markdown_table`; n/a without pairs). Returns '' when no block has such an arm.
    The intervals are per class and uncorrected for the number of classes: a descriptive view of where a
    gain comes from, not a test per organ."""
    lines = []
    for ds, k in dict.fromkeys((s["dataset"], s["train_cases"]) for s in per_class):
        block = [s for s in per_class if s["dataset"] == ds and s["train_cases"] == k]
        arms = [a for a in dict.fromkeys(s["arm"] for s in block) if a != baseline]
        if not arms:
            continue
        lines += [f"**{ds}, {k} labelled**", "",
                  f"| class | {baseline}: Dice % (n) | "
                  + " | ".join(f"Δ {a} − {baseline} [bootstrap 95% CI], t 95% CI, ahead" for a in arms) + " |",
                  "|---|---|" + "---|" * len(arms)]
        for name in dict.fromkeys(s["class"] for s in block):
            cells = {s["arm"]: s for s in block if s["class"] == name}
            b = cells.get(baseline)
            base = "n/a" if not b else _fmt(b["mean"]) + (f" ± {_fmt(b['std'])}" if b["n"] > 1 else "") + f" ({b['n']})"
            deltas = ["n/a" if not (c := cells.get(a)) or not c["n_pairs"] else _fmt(c["delta"]) + (
                f" {_ci(c)}, t {_ci(c, 't')}"
                if c["n_pairs"] > 1 else "") + f", {c['n_ahead']}/{c['n_pairs']} ahead" for a in arms]
            lines.append(f"| {name} | {base} | " + " | ".join(deltas) + " |")
        lines.append("")
    return "\n".join(lines)


def json_ready(value):
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, recursively: ``json.dumps``
    would write them as ``NaN``, which is not JSON and which other tools refuse."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def case_seed_bootstrap(diffs: dict[int, dict[str, float]], labelled: Mapping[int, Hashable], n_boot: int = 10000,
                        alpha: float = 0.05, seed: int = 0) -> dict:
    """Two-level percentile bootstrap of a paired difference over labelled sets and test cases.

    Args:
        diffs: seed -> test case -> difference of the two arms on that case (percentage points).
        labelled: seed -> its labelled set (any hashable); seeds with the same set are averaged into one
            unit first, so a labelled case drawn twice is not counted as two independent draws.

    Each replicate draws the labelled sets with replacement and, independently, the test cases with
    replacement (crossed: every set is scored on the same cases); its statistic is the mean over the drawn
    sets and cases. The point estimate is the same mean on the data (each labelled set weighted once).

    Returns:
        ``{"delta", "lo", "hi", "n_seeds", "n_sets", "n_cases"}`` (NaN bounds with fewer than two sets or cases).
    """
    cases = sorted(set.intersection(*(set(d) for d in diffs.values()))) if diffs else []
    units: dict[Hashable, list[int]] = defaultdict(list)
    for s in sorted(diffs):
        units[labelled[s]].append(s)
    if not cases:
        return {"delta": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_seeds": len(diffs),
                "n_sets": len(units), "n_cases": 0}
    table = np.asarray([[np.mean([diffs[s][c] for s in seeds]) for c in cases] for seeds in units.values()])
    n_sets, n_cases = table.shape
    out = {"delta": float(table.mean()), "lo": float("nan"), "hi": float("nan"), "n_seeds": len(diffs),
           "n_sets": n_sets, "n_cases": n_cases}
    if n_sets < 2 or n_cases < 2:
        return out
    rng = np.random.default_rng(seed)
    # multinomial counts of each set and each case per replicate: stat = w_set . table . w_case / (S C)
    w_set = rng.multinomial(n_sets, np.full(n_sets, 1 / n_sets), size=n_boot).astype(np.float64)
    w_case = rng.multinomial(n_cases, np.full(n_cases, 1 / n_cases), size=n_boot).astype(np.float64)
    stats = np.einsum("bs,sc,bc->b", w_set, table, w_case) / (n_sets * n_cases)
    out["lo"], out["hi"] = (float(q) for q in np.quantile(stats, [alpha / 2, 1 - alpha / 2]))
    # two-sided bootstrap p of "no difference": twice the smaller tail beyond zero (at least 1 / n_boot)
    out["p"] = float(min(1.0, 2 * max(min(np.mean(stats <= 0), np.mean(stats >= 0)), 1 / n_boot)))
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the family-wise error rate is held at the
    level they are compared with."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def case_level_comparisons(rows: list[dict], pairs: Sequence[Sequence[str]], baseline: str | None = None) -> list[dict]:
    """For each protocol comparison ``a - b`` (and each arm against ``baseline``), per dataset and labelled-set
    size: the paired per-test-case differences of the main grid, :func:`case_seed_bootstrap` over them, and
    the per-seed and per-case means a figure shows. Rows need ``test_cases`` (case -> Dice %) and
    ``labelled`` (the cases they trained on); rows without them are left out."""
    main = [r for r in main_grid(rows) if r.get("test_cases")]
    arms = list(dict.fromkeys(r["arm"] for r in main))
    wanted = [tuple(p) for p in pairs]
    if baseline is not None:
        wanted += [(a, baseline) for a in arms if a != baseline and (a, baseline) not in wanted]
    out = []
    for a, b in wanted:
        for ds, k in dict.fromkeys((r["dataset"], r["train_cases"]) for r in main):
            by = {arm: {r["seed"]: r for r in main if r["arm"] == arm and r["dataset"] == ds and r["train_cases"] == k}
                  for arm in (a, b)}
            seeds = sorted(set(by[a]) & set(by[b]))
            if not seeds:
                continue
            diffs = {s: {c: by[a][s]["test_cases"][c] - by[b][s]["test_cases"][c]
                         for c in set(by[a][s]["test_cases"]) & set(by[b][s]["test_cases"])} for s in seeds}
            labelled = {s: tuple(sorted(by[a][s].get("labelled") or [f"seed {s}"])) for s in seeds}
            boot = case_seed_bootstrap(diffs, labelled)
            cases = sorted(set.intersection(*(set(d) for d in diffs.values())))
            out.append({"dataset": ds, "train_cases": k, "a": a, "b": b, **boot,
                        "per_seed": {s: float(np.mean([diffs[s][c] for c in cases])) if cases else float("nan")
                                     for s in seeds},
                        "per_case": {c: float(np.mean([diffs[s][c] for s in seeds])) for c in cases},
                        "labelled": {s: list(labelled[s]) for s in seeds}})
    return out


def case_level_table(comparisons: list[dict], label: str = "Δ test Dice %") -> str:
    """A Markdown table of :func:`case_level_comparisons` ('' when there is none)."""
    if not comparisons:
        return ""
    lines = ["**paired differences on test cases, two-level bootstrap** (labelled sets × test cases resampled; seeds "
             "that trained on the same labelled cases count as one set; Δ is the mean of each test case's Dice "
             "difference, each labelled set weighted once)", "",
             f"| dataset | labelled cases | difference | seeds | distinct labelled sets | test cases | {label} "
             "[two-level bootstrap 95% CI] | bootstrap p |", "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['dataset']} | {c['train_cases']} | {c['a']} − {c['b']} | {c['n_seeds']} | {c['n_sets']} | "
                     f"{c['n_cases']} | {_fmt(c['delta'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}] | "
                     f"{_fmt(c.get('p', float('nan')), 4)} |")
    return "\n".join(lines) + "\n"


def primary_table(comparisons: list[dict], primary: Sequence[dict], alpha: float = 0.05,
                  planned: Mapping[tuple, int] | None = None) -> tuple[str, list[dict]]:
    """The protocol's pre-registered primary questions (``{a, b, dataset, train_cases}`` each) from
    :func:`case_level_comparisons`, with Holm-adjusted bootstrap p-values over the whole family (a question not
    answered yet counts as p = 1, so an early reading is never less strict than the final one). ``planned``:
    the seeds each question will have; a question short of them reads "interim". Returns the Markdown and rows."""
    rows = []
    for q in primary:
        key = (q["a"], q["b"], q["dataset"], int(q["train_cases"]))
        found = next((c for c in comparisons if (c["a"], c["b"], c["dataset"], c["train_cases"]) == key), None)
        rows.append({**q, "found": found, "planned": (planned or {}).get(key)})
    answered = [r["found"] is not None and bool(np.isfinite(r["found"].get("p", float("nan")))) for r in rows]
    adjusted = holm([r["found"]["p"] if done else 1.0 for r, done in zip(rows, answered)])
    for r, done, adj in zip(rows, answered, adjusted):
        if done:
            r["p_holm"] = adj
    lines = [f"## Primary questions (pre-registered; Holm over {len(primary)}, α {alpha})", "",
             "| question | seeds | distinct labelled sets | test cases | Δ test Dice % [two-level bootstrap 95% CI] "
             "| bootstrap p | Holm p | reading |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{r['a']} − {r['b']}, {r['dataset']}, {r['train_cases']} labelled"
        c = r["found"]
        if c is None or "p_holm" not in r:
            lines.append(f"| {name} | {c['n_seeds'] if c else 0} | | | not finished | | | open |")
            continue
        if r["p_holm"] < alpha:
            reading = f"{r['a']} {'ahead' if c['delta'] > 0 else 'behind'}"
        else:
            reading = "no difference shown"
        if r["planned"] and c["n_seeds"] < r["planned"]:
            reading = f"interim ({c['n_seeds']} of {r['planned']} seeds): {reading}"
        lines.append(f"| {name} | {c['n_seeds']} | {c['n_sets']} | {c['n_cases']} | {_fmt(c['delta'])} "
                     f"[{_fmt(c['lo'])}, {_fmt(c['hi'])}] | {_fmt(c['p'], 4)} | {_fmt(r['p_holm'], 4)} | {reading} |")
    return "\n".join(lines) + "\n\n", rows
