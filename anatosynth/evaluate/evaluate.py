"""``anatosynth evaluate``: predict real scans with a fine-tuned run and score them against their labels.

For each case: load and check image and label (same geometry), preprocess as at training time
(the run's ``metadata.json``), sliding-window inference, probabilities brought back to the original
grid, argmax, class indices mapped to the dataset's own label ids (by class name), prediction saved as
``predictions/CASE.nii.gz`` with the image's affine, then Dice/HD95 per class on the original grid.

Post-processing (:mod:`anatosynth.transforms.postprocess`): ``auto`` (default) keeps the largest connected
component of the classes for which the run's ``postprocessing.json`` says so for the weights evaluated,
``none`` keeps the raw argmax, ``largest`` post-processes every class; applied on the original grid,
before scoring; what was applied is reported in the summary.

Which cases: ``cases`` if given; otherwise the run's evaluation split (``split.json``) when all those
cases are in the dataset; otherwise every case with an image. Cases without a label map are predicted
but not scored. Each scored case's role for the run (its ``split.json``: train, validation or test) is
reported; a case that trained the run or chose its checkpoint is warned about, marked in ``summary.md``, and
left out of the test Dice (``test_mean_dice``), the primary number. An existing, non-empty ``out`` is refused
unless ``overwrite`` (then cleared once every input has been checked), so no stale file sits beside a new report.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from anatosynth.errors import InputError
from anatosynth.evaluate.inference import Run, load_run, predict_prepared, read_split
from anatosynth.evaluate.metrics import ClassScore, case_scores
from anatosynth.evaluate.report import mean_dice, summarise, write_reports
from anatosynth.io import Volume, check_pair, load_image, load_label, read_dataset, save_volume
from anatosynth.io.datasets import Dataset
from anatosynth.io.splits import case_roles
from anatosynth.io.volume import check_output_dir, ensure_writable_dir
from anatosynth.options import bar_disable
from anatosynth.transforms.postprocess import POSTPROCESS_MODES, keep_largest_component, read_decision
from anatosynth.transforms.preprocess import ClassMap, prepare_image

__all__ = ["evaluate", "dataset_classes", "choose_cases", "scored_roles", "postprocessing_plan"]


def dataset_classes(run: Run, dataset: Dataset, source: str | Path) -> ClassMap:
    """The run's classes with the dataset's label ids, matched by name.

    Raises:
        InputError: the run and the dataset do not name the same foreground classes.
    """
    by_name = {name: ident for ident, name in dataset.labels.items()}
    run_fg, data_fg = run.classes.names[1:], [n for i, n in sorted(dataset.labels.items()) if i != 0]
    missing, extra = [n for n in run_fg if n not in by_name], [n for n in data_fg if n not in run_fg]
    if missing or extra:
        parts = ([f"run classes not in the dataset: {', '.join(missing)}"] if missing else []) + \
                ([f"dataset classes the run does not predict: {', '.join(extra)}"] if extra else [])
        raise InputError(source, "class names differ from the run's; " + "; ".join(parts))
    return ClassMap([0] + [int(by_name[n]) for n in run_fg], list(run.classes.names))


def choose_cases(dataset: Dataset, run: Run, cases: list[str] | None) -> tuple[list, str]:
    """Cases to evaluate and a short note saying why these."""
    if cases:
        return dataset.select(cases).cases, "named on the command line"
    split = read_split(run.path)
    names = {c.name for c in dataset.cases}
    if split and split.get("eval") and all(n in names for n in split["eval"]):
        return dataset.select(list(split["eval"])).cases, "the run's evaluation split (split.json)"
    return [c for c in dataset.cases if c.image is not None], "all cases of the dataset"


def scored_roles(run: Run, cases: list[str]) -> dict[str, str]:
    """Each scored case's role for the run (``train``, ``validation``, ``test`` or ``unknown`` when the run
    has no ``split.json``): a case that trained the run or chose its checkpoint is not a test case."""
    split = read_split(run.path)
    return case_roles(split, cases) if split else {c: "unknown" for c in cases}


def postprocessing_plan(run: Run, mode: str) -> dict:
    """Which classes keep only their largest component, and why (reported in ``summary.json``)."""
    from anatosynth.errors import ConfigError

    if mode not in POSTPROCESS_MODES:
        raise ConfigError(f"--postprocess must be one of {', '.join(POSTPROCESS_MODES)}, got {mode!r}")
    names = list(run.classes.names[1:])
    if mode == "none":
        return {"mode": mode, "keep_largest": [], "source": "--postprocess none"}
    if mode == "largest":
        return {"mode": mode, "keep_largest": names, "source": "--postprocess largest (every class)"}
    recorded = read_decision(run.path, run.weights.name)
    if recorded is None:
        return {"mode": mode, "keep_largest": [],
                "source": f"no decision recorded for {run.weights.name} (no post-processing)"}
    chosen, path = recorded
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise InputError(path, f"names classes the run does not predict: {', '.join(unknown)}")
    return {"mode": mode, "keep_largest": [n for n in names if n in chosen],
            "source": f"{path.name} (decided on the run's validation cases for {run.weights.name})"}


def _id_dtype(ids: list[int]) -> str:
    return "uint8" if max(ids) < 256 else ("uint16" if max(ids) < 65536 else "int32")


def _load_pair(case, names: dict[int, str]) -> tuple[Volume, Volume | None]:
    """Image and (optional) label of a case, checked to share one geometry and known label ids."""
    image = load_image(case.image)
    if case.label is None:
        return image, None
    label = load_label(case.label, names=names)
    check_pair(image, label, case.image, case.label)
    return image, label


def _precheck(cases, names: dict[int, str]) -> None:
    """Load and check every case before any output is written, so bad input leaves no half report.

    Reading the files is cheap next to inference; each case is read again when it is predicted.
    """
    for case in cases:
        _load_pair(case, names)


def evaluate(data: str | Path, run_path: str | Path, out: str | Path, cases: list[str] | None = None,
             overlap: float = 0.25, sw_batch: int = 1, save_predictions: bool = True,
             progress: bool = True, device: str | None = "auto", postprocess: str = "auto",
             overwrite: bool = False, labels: str | Path | None = None) -> dict:
    """Evaluate a fine-tuned run on a dataset and write the reports; returns the summary dict.

    Raises:
        InputError: unreadable run or data, class names that do not match, image/label geometry mismatch,
            label ids not named by the dataset.
    """
    from tqdm import tqdm

    from anatosynth.errors import ConfigError

    if not 0 <= overlap < 1:
        raise ConfigError(f"--overlap must be in [0, 1), got {overlap}")
    if sw_batch < 1:
        raise ConfigError(f"--sw-batch must be at least 1, got {sw_batch}")
    check_output_dir(out)
    held = Path(out).is_dir() and any(Path(out).iterdir())
    if held and not overwrite:
        raise InputError(out, "exists and is not empty (an earlier report?); choose another --out, or pass "
                              "--overwrite to clear it")
    run = load_run(run_path, device)
    plan = postprocessing_plan(run, postprocess)
    largest = [run.classes.names.index(n) for n in plan["keep_largest"]]
    dataset = read_dataset(data, labels).require_images("evaluate")
    classes = dataset_classes(run, dataset, data)
    chosen, why = choose_cases(dataset, run, cases)
    if not chosen:
        raise InputError(data, "no cases to evaluate")
    missing_image = [c.name for c in chosen if c.image is None]
    if missing_image:
        raise InputError(data, f"cases without an image: {', '.join(missing_image)}")
    _precheck(chosen, dict(dataset.labels))
    if held:  # every input checked: only now is the earlier report cleared
        shutil.rmtree(out)
    roles = scored_roles(run, [c.name for c in chosen])
    used = [f"{n} ({r})" for n, r in roles.items() if r in ("train", "validation")]
    if used:
        print(f"evaluate: warning: {len(used)} of {len(chosen)} cases scored are not test cases of the run: "
              f"{', '.join(used[:3])}{' …' if len(used) > 3 else ''}; summary.md marks them and its test Dice "
              f"leaves them out", file=sys.stderr)
    out = ensure_writable_dir(out)
    pred_dir = ensure_writable_dir(out / "predictions") if save_predictions else None
    fg = {name: ident for name, ident in zip(classes.names[1:], classes.ids[1:])}
    scores: dict[str, dict[str, ClassScore]] = {}
    unlabelled, seconds = [], {}
    for case in tqdm(chosen, desc="evaluating", unit="case", disable=bar_disable(progress)):
        start = time.time()
        image, label = _load_pair(case, dict(dataset.labels))
        prepared = prepare_image(case.name, image, run.preprocess)
        index = run.classes.to_index(predict_prepared(run, prepared, overlap, sw_batch).array)
        if largest:
            index = keep_largest_component(index, largest)
        pred = Volume(classes.to_ids(index), image.affine.copy())
        if pred_dir is not None:
            save_volume(pred, pred_dir / f"{case.name}.nii.gz", dtype=_id_dtype(classes.ids))
        if label is None:
            unlabelled.append(case.name)
        else:
            scores[case.name] = case_scores(pred.array, label.array, fg, image.spacing)
        seconds[case.name] = round(time.time() - start, 2)
    summary = summarise(scores, classes.names[1:])
    test_cases = [n for n in scores if roles.get(n) in ("test", "unknown")]
    summary = {"n_cases": len(scores), "cases_from": why, "unlabelled_cases": unlabelled,
               "case_roles": roles, "n_test_cases": len(test_cases),
               "test_mean_dice": mean_dice(summary["per_case"], set(scores) - set(test_cases)),
               "postprocessing": plan,
               "run": {"model": str(run.path), "weights": run.weights.name, "data": str(data), "overlap": overlap,
                       "sw_batch": sw_batch,
                       "architecture": run.metadata.get("model"), "preprocess": run.preprocess.to_dict()},
               "label_ids": dict(zip(classes.names[1:], classes.ids[1:])), "seconds": seconds, **summary}
    write_reports(summary, out, title=f"Evaluation of {Path(run.path).name} on {dataset.name or Path(data).name}")
    return summary
