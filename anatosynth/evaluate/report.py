"""Evaluation reports: ``summary.json``, ``per_case.csv`` and ``summary.md`` (a table for people).

Undefined values (see :mod:`anatosynth.evaluate.metrics`) are ``null`` in JSON, empty in CSV and
``n/a`` in Markdown.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from anatosynth.evaluate.metrics import ClassScore
from anatosynth.io.volume import atomic_write_text

__all__ = ["summarise", "mean_dice", "write_reports", "markdown_table"]


def _finite(values: list[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr[np.isfinite(arr)]


def _stats(values: list[float]) -> dict:
    arr = _finite(values)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def _json_value(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def mean_dice(per_case: dict, exclude: Iterable[str] = ()) -> float | None:
    """The evaluation's mean Dice: the mean over classes of each class's mean over cases, undefined values
    (a class absent from reference and prediction) left out; None when nothing is scorable.

    ``per_case``: case -> class -> Dice in [0, 1], or ``{"dice": ...}`` per class as ``summary.json``'s
    ``per_case`` has it. ``exclude``: cases left out (e.g. the validation cases that chose a checkpoint).
    """
    left = set(exclude)
    by_class: dict[str, list[float]] = {}
    for case, classes in per_case.items():
        if case in left:
            continue
        for name, v in classes.items():
            v = v.get("dice") if isinstance(v, dict) else v
            by_class.setdefault(name, []).append(math.nan if v is None else float(v))
    class_means = [m for m in (_stats(v)["mean"] for v in by_class.values()) if m is not None]
    return float(np.mean(class_means)) if class_means else None


def summarise(scores: dict[str, dict[str, ClassScore]], class_names: list[str]) -> dict:
    """Aggregate per-case scores (case → class → score) into per-class and overall statistics."""
    classes: dict[str, dict[str, Any]] = {}
    for name in class_names:
        rows = [scores[c][name] for c in scores]
        counts = {s: sum(1 for r in rows if r.status == s) for s in ("ok", "missed", "false_positive", "absent")}
        classes[name] = {"dice": _stats([r.dice for r in rows]), "hd95": _stats([r.hd95 for r in rows]),
                         "cases": len(rows), **{f"n_{k}": v for k, v in counts.items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        case_means = {c: float(np.nanmean([s.dice for s in per.values()])) if per else math.nan
                      for c, per in scores.items()}
    per_case = {c: {n: {"dice": _json_value(s.dice), "hd95": _json_value(s.hd95), "status": s.status,
                        "ref_voxels": s.ref_voxels, "pred_voxels": s.pred_voxels}
                    for n, s in per.items()} for c, per in scores.items()}
    hd_means = [v["hd95"]["mean"] for v in classes.values() if v["hd95"]["mean"] is not None]
    return {
        "classes": classes,
        "mean_dice": mean_dice(per_case),
        "mean_hd95": float(np.mean(hd_means)) if hd_means else None,
        "case_mean_dice": {c: _json_value(v) for c, v in case_means.items()},
        "per_case": per_case,
    }


def _fmt(stats: dict, digits: int) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _cell(v: float | None, digits: int) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    """A Dice in [0, 1] as a percentage with one decimal, as the experiment reports give it."""
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def _fmt_pct(stats: dict) -> str:
    return "n/a" if stats["mean"] is None else f"{_pct(stats['mean'])} ± {_pct(stats['std'])}"


def markdown_table(summary: dict, title: str = "Evaluation") -> str:
    """Per-class table (Dice and HD95 mean ± std with n) and a per-case Dice table."""
    lines = [f"# {title}", ""]
    meta = summary.get("run", {})
    if meta:
        lines += [f"Model: `{meta.get('model')}` · data: `{meta.get('data')}` · cases: {summary.get('n_cases')} · "
                  f"sliding-window overlap {meta.get('overlap')}", ""]
    post = summary.get("postprocessing")
    if post:
        kept = ", ".join(post["keep_largest"]) or "none"
        lines += [f"Post-processing (largest connected component kept): {kept} — {post['source']}", ""]
    roles = summary.get("case_roles") or {}
    test = summary.get("test_mean_dice")
    if roles and any(r in ("train", "validation") for r in roles.values()):
        lines += [f"**Test Dice: {_pct(test)} %** over the {summary.get('n_test_cases')} test cases. The tables "
                  "below include cases marked *train* or *validation*: they trained the run or chose its "
                  "checkpoint, so their Dice is not a test result.", ""]
    elif roles:
        lines += [f"**Test Dice: {_pct(test)} %** (all {summary.get('n_test_cases')} scored cases are test cases "
                  "of the run)" if all(r == "test" for r in roles.values()) else
                  f"**Dice: {_pct(test)} %** (the run records no split: the cases' roles are unknown)", ""]
    lines += ["| class | Dice % (mean ± std) | n | HD95 mm (mean ± std) | n | absent in both | missed "
              "| false positive |",
              "|---|---|---|---|---|---|---|---|"]
    for name, c in summary["classes"].items():
        lines.append(f"| {name} | {_fmt_pct(c['dice'])} | {c['dice']['n']} | {_fmt(c['hd95'], 1)} | {c['hd95']['n']} | "
                     f"{c['n_absent']} | {c['n_missed']} | {c['n_false_positive']} |")
    md, mh = summary.get("mean_dice"), summary.get("mean_hd95")
    lines.append(f"| **mean of classes** | **{_pct(md)}** | | **{_cell(mh, 1)}** | | | | |")
    lines += ["", "Dice 0 when a class is missed or predicted where the reference has none; HD95 is then undefined. "
              "A class absent from both reference and prediction is n/a and left out of the means "
              "(std is the population std over the n defined values).", ""]
    names = list(summary["classes"])
    if summary["per_case"] and len(summary["per_case"]) <= 200:
        lines += ["## Dice per case (%)", "", "| case | role | " + " | ".join(names) + " | mean |",
                  "|---|---|" + "---|" * (len(names) + 1)]
        for case, per in summary["per_case"].items():
            cells = [_pct(per[n]["dice"]) for n in names]
            role = roles.get(case, "unknown")
            role = role if role in ("test", "unknown") else f"*{role}*"
            lines.append(f"| {case} | {role} | " + " | ".join(cells) +
                         f" | {_pct(summary['case_mean_dice'][case])} |")
    return "\n".join(lines) + "\n"


def _csv(summary: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "class", "dice", "hd95_mm", "status", "ref_voxels", "pred_voxels"])
    for case, per in summary["per_case"].items():
        for name, s in per.items():
            w.writerow([case, name, "" if s["dice"] is None else f"{s['dice']:.6f}",
                        "" if s["hd95"] is None else f"{s['hd95']:.4f}", s["status"], s["ref_voxels"],
                        s["pred_voxels"]])
    return buf.getvalue()


def write_reports(summary: dict, out: str | Path, title: str = "Evaluation") -> dict[str, Path]:
    """Write summary.json, per_case.csv and summary.md into ``out`` (each atomically)."""
    out = Path(out)
    paths = {"json": out / "summary.json", "csv": out / "per_case.csv", "md": out / "summary.md"}
    atomic_write_text(paths["json"], json.dumps(summary, indent=1) + "\n")
    atomic_write_text(paths["csv"], _csv(summary))
    atomic_write_text(paths["md"], markdown_table(summary, title))
    return paths
