"""Experiment protocols: a YAML file that names banks, pre-training arms, datasets, seeds and scaling.

A protocol expands into a list of jobs (:func:`expand`): bank builds, pre-training runs (one per arm
and pool/bank size, shared by all seeds and datasets) and fine-tune+evaluate runs (one per arm × dataset
× labelled-set size × seed, plus the scaling points). Every job has a stable key that names its folder,
so a finished job is reused and a half-finished grid resumes where it stopped.

A dataset's ``split`` fixes its test / validation / pool split (:mod:`anatosynth.io.splits`) for every arm
and seed: ``{test: N, validation: M}`` (sizes of the default split made from the case names) or the path of a
split file; each seed draws its ``train_cases`` from the pool, distinct for consecutive seeds until the pool is
used up. Without ``split`` the default sizes apply. The earlier protocols name ``eval_cases`` instead (a list
of case names, or a count picked by a hash of the names): one evaluation set whose first ``val_max_cases``
also choose the checkpoint, so validation sits inside evaluation; their reports say so.

Job keys hash what changes a job's result: the protocol's options *with every code-level default filled
in* (:func:`resolved_pretrain`, :func:`resolved_finetune`) and the code's result versions
(:data:`RESULT_VERSIONS`), so a changed default or a changed synthetic stream never silently reuses a
stale run. Options that only change how a job runs (threads, logging, checkpoint interval) are left out.

Two optional protocol keys make a grid survive a machine change: ``results: DIR`` keeps each finished
fine-tune job's metrics as ``DIR/<job key>.json`` (committed with the repository; a job whose metrics are
there is not run again, and ``--report-only`` draws every table and plot from them), and an arm's
``weights: DIR`` names its released pre-trained weights (``anatosynth release``): when the folder exists,
the grid fine-tunes from it instead of pre-training again; when not, the grid pre-trains and releases there.
A third, ``resume: DIR``, carries an unfinished pre-training across machines: ``experiment --save-resumable``
writes ``DIR/<job key>.resume`` for each pre-training that has a checkpoint (``release --resumable``; commit it),
a run folder without a checkpoint continues from that archive, and the release of the finished run deletes it.

Paths in a protocol (bank sources, datasets, results, weights) are resolved relative to the current working
directory, like paths given on the command line; the shipped protocols are meant to be run from the project root.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from anatosynth.errors import ConfigError
from anatosynth.io.splits import SPLIT_METHOD

__all__ = ["Protocol", "BankJob", "PretrainJob", "FinetuneJob", "load_protocol", "expand", "pick_eval_cases"]

RESERVED_NAMES = {"banks", "pretrain", "finetune"}  # job folders of an experiment folder
TOP_KEYS = {"name", "description", "bank", "pretrain", "finetune", "evaluate", "datasets", "arms", "seeds", "compare",
            "scaling", "baseline", "results", "resume", "primary"}
ARM_KEYS = {"name", "pretrain", "finetune", "weights"}
# pre-training / fine-tuning options that change how a job runs, not what it computes: left out of keys
RUN_ONLY_PRETRAIN = ("bank", "out", "threads", "workers", "minutes", "checkpoint_every", "log_every", "image_every",
                     "trace_indices")
RUN_ONLY_FINETUNE = ("data", "out", "init", "overwrite", "extra", "threads", "quiet", "seed", "train_cases",
                     "val_cases", "checkpoint_every", "log_every")
# options added after jobs were run, with the value that reproduces the earlier behaviour: left out of a key
# at that value, so adding the option does not orphan finished jobs; any other value enters the key
NEUTRAL_FINETUNE = {"pretrained_lr_scale": 1.0, "freeze_pretrained_steps": 0, "split": None, "labels": None}
NEUTRAL_SYNTH = {"clutter": 0.0, "mix_fraction": 0.5, "mix_render": "contour"}  # the same, for synthesis options
NEUTRAL_PRETRAIN = {"nnunet": None}  # the same, for pre-training options


def result_versions() -> dict[str, int]:
    """Versions of the code paths behind a job's result; each is bumped when its code changes results
    for unchanged options (hashed into every job key)."""
    from anatosynth.synth.config import STREAM_VERSION
    from anatosynth.train.finetune import FINETUNE_VERSION

    return {"stream": STREAM_VERSION, "finetune": FINETUNE_VERSION}


@dataclass
class BankJob:
    key: str
    source: str
    subjects: int
    spacing: list[float]
    seed: int
    cases: list[str] | None = None  # named subjects (``bank build --cases``) instead of a seeded pick


@dataclass
class PretrainJob:
    key: str
    arm: str
    bank: str | None  # BankJob key, "builtin:phantom", or None (primitives)
    config: dict      # PretrainConfig fields (bank filled in by the runner)
    samples: int | None = None
    subjects: int | None = None
    weights: str | None = None  # the arm's released weights folder (used if present, else written)


@dataclass
class FinetuneJob:
    key: str
    arm: str
    dataset: str
    data: str
    seed: int
    train_cases: int
    pretrain: str | None  # PretrainJob key, or None (scratch)
    options: dict = field(default_factory=dict)
    samples: int | None = None
    subjects: int | None = None
    eval_cases: int | list[str] | None = None  # fixed evaluation set: a count (picked by name hash) or names
    split: dict | str | None = None  # test/validation sizes or a split file (used when eval_cases is None)


@dataclass
class Protocol:
    name: str
    raw: dict
    banks: list[BankJob]
    pretrains: list[PretrainJob]
    finetunes: list[FinetuneJob]
    baseline: str = "scratch"
    results: str | None = None  # folder of committed per-job metrics (``results:``)
    source: str | None = None  # the protocol file, as given (model cards name it in their command)
    resume: str | None = None  # folder of resumable archives of unfinished pre-trainings (``resume:``)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolved_pretrain(cfg: dict) -> dict:
    """A pre-training job's options with every code default filled in (PretrainConfig, and in its ``synth``
    every SynthConfig default: ``PretrainConfig().to_dict()`` writes them all)."""
    from anatosynth.train.config import PretrainConfig

    full = _merge(PretrainConfig().to_dict(), cfg)
    if isinstance(full.get("patch"), int):
        full["patch"] = [full["patch"]] * 3
    for k in RUN_ONLY_PRETRAIN:
        full.pop(k, None)
    for k, neutral in NEUTRAL_PRETRAIN.items():
        if full.get(k, neutral) == neutral:
            full.pop(k, None)
    synth = full.get("synth")
    if isinstance(synth, dict):
        for k, neutral in NEUTRAL_SYNTH.items():
            if synth.get(k) == neutral:
                synth.pop(k)
    return full


def resolved_finetune(options: dict) -> dict:
    """Fine-tune (and its ``evaluate``) options with every code default filled in (FinetuneConfig, evaluate)."""
    import inspect
    from dataclasses import fields

    from anatosynth.evaluate.evaluate import evaluate
    from anatosynth.train.finetune import FinetuneConfig

    base = {f.name: f.default for f in fields(FinetuneConfig) if f.name not in RUN_ONLY_FINETUNE}
    base = {k: list(v) if isinstance(v, tuple) else v for k, v in base.items()}
    ev_base = {k: p.default for k, p in inspect.signature(evaluate).parameters.items()
               if k in ("overlap", "sw_batch", "postprocess")}
    ev_base["no_predictions"] = False
    options = dict(options)
    ev = _merge(ev_base, options.pop("evaluate", None) or {})
    full = _merge(base, options)
    for k in ("patch", "spacing"):
        if isinstance(full.get(k), (int, float)):
            full[k] = [full[k]] * 3
    for k in RUN_ONLY_FINETUNE:
        full.pop(k, None)
    for k, neutral in NEUTRAL_FINETUNE.items():
        if full.get(k) == neutral:
            full.pop(k)
    ev.pop("no_predictions", None)  # writes files, changes no metric
    full["evaluate"] = ev
    return full


def load_protocol(path: str | Path) -> dict:
    """Read and check the top-level structure of a protocol YAML."""
    from anatosynth.train.config import load_yaml

    raw = load_yaml(path)
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown protocol key(s) {', '.join(unknown)}; known: {', '.join(sorted(TOP_KEYS))}")
    for key in ("datasets", "arms", "seeds"):
        if not raw.get(key):
            raise ConfigError(f"{path}: '{key}' is required and must not be empty")
    raw.setdefault("name", Path(path).stem)
    name = str(raw["name"])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name in RESERVED_NAMES:
        raise ConfigError(f"{path}: protocol name {name!r} must be a plain folder name (letters, digits, '._-'), "
                          f"not one of {', '.join(sorted(RESERVED_NAMES))}: its reports go to OUT/<name>/")
    return raw


def expand(raw: dict, source: str = "protocol") -> Protocol:
    """Expand a protocol mapping into its jobs (deterministic order, stable keys)."""
    bank_spec = raw.get("bank") or {"source": "builtin:phantom"}
    if not isinstance(bank_spec, dict) or "source" not in bank_spec:
        raise ConfigError(f"{source}: 'bank' must be a mapping with a 'source'")
    pre_defaults = raw.get("pretrain") or {}
    ft_defaults = raw.get("finetune") or {}
    eval_defaults = raw.get("evaluate") or {}
    seeds = [int(s) for s in raw["seeds"]]
    baseline = raw.get("baseline", "scratch")
    versions = result_versions()

    banks: dict[str, BankJob] = {}

    def bank_for(subjects: int | None, spec: dict | None = None) -> str | None:
        spec = spec or bank_spec
        src = str(spec["source"])
        if src.startswith("builtin:"):
            return src
        cases = [str(c) for c in spec["cases"]] if spec.get("cases") else None
        k = len(cases) if cases else int(subjects or spec.get("subjects", 5))
        spacing = [float(v) for v in spec.get("spacing", [1.5, 1.5, 2.0])]
        seed = int(spec.get("seed", 0))
        # named cases enter the key only when given, so the keys of seeded picks do not move
        key = f"bank-{k}subj-{_digest([src, k, spacing, seed] + ([cases] if cases else []))}"
        banks.setdefault(key, BankJob(key, src, k, spacing, seed, cases))
        return key

    pretrains: dict[str, PretrainJob] = {}
    same_run: dict[str, str] = {}  # what a pre-training run computes (key without the arm name) -> its key

    def pretrain_for(arm: dict, samples: int | None = None, subjects: int | None = None,
                     ds: dict | None = None) -> str | None:
        spec = arm.get("pretrain", "none")
        if spec in (None, "none"):
            return None
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: arm {arm['name']!r}: 'pretrain' must be 'none' or a mapping")
        cfg = _merge(pre_defaults, spec)
        if samples is not None:
            cfg["samples"] = samples
        ds_bank = (ds or {}).get("bank")
        bank = None if cfg.get("mode") == "primitives" else bank_for(subjects, ds_bank)
        suffix = (f"-pool{samples}" if samples else "") + (f"-subj{subjects}" if subjects else "") + \
            f"-{_digest([resolved_pretrain(cfg), bank, versions])}"
        if suffix in same_run:  # an earlier arm pre-trains exactly this: one run, named after that arm
            return same_run[suffix]
        key = f"pre-{arm['name']}{suffix}"
        weights = arm.get("weights") if samples is None and subjects is None else None
        if isinstance(weights, dict):  # one release per dataset (arms whose bank differs by dataset)
            weights = weights.get((ds or {}).get("name"))
        pretrains[key] = PretrainJob(key, arm["name"], bank, cfg, samples, subjects, str(weights) if weights else None)
        same_run[suffix] = key
        return key

    arms = raw["arms"]
    names = [a.get("name") for a in arms if isinstance(a, dict)]
    if len(names) != len(arms) or not all(names) or len(set(names)) != len(names):
        raise ConfigError(f"{source}: every arm needs a unique 'name'")
    for arm in arms:
        unknown = sorted(set(arm) - ARM_KEYS)
        if unknown:
            raise ConfigError(f"{source}: arm {arm['name']!r}: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(ARM_KEYS))}")
        if arm.get("weights") and arm.get("pretrain", "none") in (None, "none"):
            raise ConfigError(f"{source}: arm {arm['name']!r} names 'weights' but does not pre-train")
    if baseline not in names:
        raise ConfigError(f"{source}: baseline arm {baseline!r} is not among the arms ({', '.join(map(str, names))})")

    for q in raw.get("primary") or []:
        if not isinstance(q, dict) or set(q) != {"a", "b", "dataset", "train_cases"} or \
                q["a"] not in names or q["b"] not in names:
            raise ConfigError(f"{source}: 'primary' entries are {{a: ARM, b: ARM, dataset: NAME, train_cases: K}} "
                              f"with known arms; got {q!r}")
    for pair in raw.get("compare") or []:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or any(a not in names for a in pair):
            raise ConfigError(f"{source}: 'compare' entries must be two arm names, e.g. [anatomy, random]; "
                              f"got {pair!r}")

    finetunes: list[FinetuneJob] = []
    seen: set[str] = set()

    def add_finetune(arm: dict, ds: dict, k: int, seed: int, samples=None, subjects=None) -> None:
        pre = pretrain_for(arm, samples, subjects, ds)
        options = _merge(ft_defaults, ds.get("finetune") or {})
        options = _merge(options, arm.get("finetune") or {})
        options["evaluate"] = _merge(eval_defaults, options.get("evaluate") or {})
        init = pre
        job = pretrains.get(pre) if pre else None
        if job is not None and job.weights:  # released weights: the fine-tune depends on their bytes
            init = released_digest(job.weights) or pre
        # the split enters the key only where it is not the earlier eval_cases one, so those keys do not move
        split = ds.get("split") or {} if ds.get("eval_cases") is None else None
        what = [resolved_finetune(options), init, ds.get("eval_cases"), versions] + \
            ([{"split": split, "method": SPLIT_METHOD}] if split is not None else [])
        key = f"ft-{ds['name']}-{arm['name']}-k{k}-s{seed}" + (f"-pool{samples}" if samples else "") + \
              (f"-subj{subjects}" if subjects else "") + f"-{_digest(what)}"
        if key in seen:  # two dataset entries that both run this job (e.g. the baseline at shared seeds)
            return
        seen.add(key)
        finetunes.append(FinetuneJob(key, arm["name"], ds["name"], str(ds["path"]), seed, k, pre, options,
                                     samples, subjects, ds.get("eval_cases"), split))

    datasets = raw["datasets"]
    for ds in datasets:
        if not isinstance(ds, dict) or not ds.get("name") or not ds.get("path"):
            raise ConfigError(f"{source}: every dataset needs a 'name' and a 'path'")
        check_split_spec(ds, source)
        sizes = ds.get("train_cases", [4])
        sizes = [int(s) for s in (sizes if isinstance(sizes, list) else [sizes])]
        only = ds.get("arms")  # optional: run only these arms on this dataset entry
        if only is not None:
            unknown = [a for a in only if a not in names]
            if unknown or (baseline not in only and "seeds" not in ds):
                raise ConfigError(f"{source}: dataset {ds['name']!r}: 'arms' must name known arms and include the "
                                  f"baseline {baseline!r} (got {', '.join(map(str, only))}); an entry that only "
                                  "adds seeds to arms of another entry names its own 'seeds'")
        entry_seeds = [int(s) for s in ds["seeds"]] if "seeds" in ds else seeds
        for arm in (a for a in arms if only is None or a["name"] in only):
            for k in sizes:
                for seed in entry_seeds:
                    add_finetune(arm, ds, k, seed)

    scaling = raw.get("scaling") or {}
    if scaling:
        arm_name = scaling.get("arm", "anatomy")
        arm = next((a for a in arms if a["name"] == arm_name), None)
        if arm is None:
            raise ConfigError(f"{source}: scaling arm {arm_name!r} is not among the arms")
        scale_sets = scaling.get("datasets") or [d["name"] for d in datasets]
        for ds in (d for d in datasets if d["name"] in scale_sets):
            k = int(scaling.get("train_cases", (ds.get("train_cases") or [4])[0]
                                if isinstance(ds.get("train_cases"), list) else ds.get("train_cases", 4)))
            for seed in seeds:
                for samples in scaling.get("samples", []):
                    if samples:  # null/0 = the endless stream = the main grid's point
                        add_finetune(arm, ds, k, seed, samples=int(samples))
                for subjects in scaling.get("subjects", []):
                    if int(subjects) != int(bank_spec.get("subjects", 5)):  # the default is the main grid's
                        add_finetune(arm, ds, k, seed, subjects=int(subjects))
    results, resume = raw.get("results"), raw.get("resume")
    return Protocol(str(raw.get("name", "protocol")), raw, list(banks.values()), list(pretrains.values()),
                    finetunes, baseline, str(results) if results else None,
                    source if source != "protocol" else None, str(resume) if resume else None)


def subset(protocol: Protocol, arms: list[str] | None = None, seeds: list[int] | None = None,
           source: str = "protocol", datasets: list[str] | None = None) -> Protocol:
    """The jobs of ``protocol`` for some arms, seeds and settings only (a pilot of a grid).

    ``datasets`` holds dataset names (every labelled-set size) or ``name:k`` (``k`` labelled cases only):
    a pilot of a costly pre-training can be read on one setting first. Job keys do not depend on what a
    run selects, so a pilot's finished jobs are the grid's own: the full run later reuses them.
    """
    known_arms = {a["name"] for a in protocol.raw["arms"]}
    known_seeds = {int(s) for s in protocol.raw["seeds"]} | {j.seed for j in protocol.finetunes}
    settings = {(j.dataset, j.train_cases) for j in protocol.finetunes}
    chosen = set()
    for spec in datasets or []:
        name, _, k = spec.partition(":")
        if k and not k.isdigit():
            raise ConfigError(f"{source}: --datasets {spec!r}: expected NAME or NAME:CASES, e.g. chaos-t2:4")
        match = {(d, n) for d, n in settings if d == name and (not k or n == int(k))}
        if not match:
            have = ", ".join(f"{d}:{n}" for d, n in sorted(settings))
            raise ConfigError(f"{source}: no setting {spec!r}; the protocol has {have}")
        chosen |= match
    if arms is not None and not set(arms) <= known_arms:
        raise ConfigError(f"{source}: unknown arm(s) {', '.join(sorted(set(arms) - known_arms))}; "
                          f"the protocol has {', '.join(sorted(known_arms))}")
    if seeds is not None and not set(seeds) <= known_seeds:
        raise ConfigError(f"{source}: seed(s) {', '.join(map(str, sorted(set(seeds) - known_seeds)))} are not "
                          f"among the protocol's seeds ({', '.join(map(str, sorted(known_seeds)))})")
    finetunes = [j for j in protocol.finetunes
                 if (arms is None or j.arm in arms) and (seeds is None or j.seed in seeds)
                 and (datasets is None or (j.dataset, j.train_cases) in chosen)]
    used = {j.pretrain for j in finetunes}
    pretrains = [j for j in protocol.pretrains if j.key in used]
    used_banks = {j.bank for j in pretrains}
    banks = [b for b in protocol.banks if b.key in used_banks]
    return Protocol(protocol.name, protocol.raw, banks, pretrains, finetunes, protocol.baseline, protocol.results,
                    protocol.source, protocol.resume)


def check_split_spec(ds: dict, source: str) -> None:
    """A dataset entry's ``split``: a mapping of ``test``/``validation`` sizes or a split-file path, and not
    beside ``eval_cases`` (two ways of naming the evaluation set)."""
    spec = ds.get("split")
    if spec is None:
        return
    if ds.get("eval_cases") is not None:
        raise ConfigError(f"{source}: dataset {ds['name']!r}: give 'split' or 'eval_cases', not both")
    if isinstance(spec, dict):
        bad = sorted(set(spec) - {"test", "validation"})
        if bad or not all(isinstance(v, int) and v >= 1 for v in spec.values()):
            raise ConfigError(f"{source}: dataset {ds['name']!r}: 'split' takes test and validation sizes (whole "
                              f"numbers, at least 1) or a split-file path; got {spec!r}")
    elif not isinstance(spec, str):
        raise ConfigError(f"{source}: dataset {ds['name']!r}: 'split' must be sizes or a split-file path")


def released_digest(folder: str | Path) -> str | None:
    """What a fine-tune from released weights depends on: the pre-training job key on the card (releases the
    grid wrote itself, so keys are the same before and after the release), else ``weights:<sha256 prefix>``;
    None when the folder is not there yet."""
    from anatosynth.train.release import read_card

    info = read_card(folder)
    if info is None:
        return None
    return str(info.get("job_key") or f"weights:{info['weights_sha256'][:16]}")


def pick_eval_cases(names: list[str], spec: int | list[str] | None) -> list[str] | None:
    """The fixed evaluation set: ``spec`` names as given, or ``spec`` names picked by a stable hash."""
    if spec is None:
        return None
    if isinstance(spec, list):
        missing = [n for n in spec if n not in names]
        if missing:
            raise ConfigError(f"eval_cases not in the dataset: {', '.join(missing)}")
        return list(spec)
    n = int(spec)
    if not 0 < n < len(names):
        raise ConfigError(f"eval_cases must be between 1 and {len(names) - 1}, got {n}")
    ranked = sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    return sorted(ranked[:n])
