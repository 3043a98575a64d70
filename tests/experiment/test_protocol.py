"""Protocol expansion: stable keys, shared pre-training, scaling points, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anatosynth.errors import ConfigError
from anatosynth.experiment.protocol import expand, load_protocol, subset

RAW = {
    "name": "t",
    "bank": {"source": "data/flare", "subjects": 5, "spacing": [3, 3, 6]},
    "pretrain": {"model": "unet", "feature_size": 4, "steps": 10},
    "finetune": {"model": "unet", "feature_size": 4, "steps": 5},
    "datasets": [{"name": "a", "path": "data/a", "train_cases": [2, 4]}, {"name": "b", "path": "data/b"}],
    "arms": [{"name": "scratch", "pretrain": "none"},
             {"name": "primitives", "pretrain": {"mode": "primitives", "render": "contour"}},
             {"name": "anatomy", "pretrain": {"mode": "anatomy"}},
             {"name": "no-anchors", "pretrain": {"mode": "anatomy", "synth": {"anchors": False}}}],
    "seeds": [0, 1, 2],
    "scaling": {"arm": "anatomy", "samples": [250, 1000, None], "subjects": [5, 20], "datasets": ["a"],
                "train_cases": 2},
}


def test_expand_counts_and_sharing():
    p = expand(RAW)
    # main grid: 4 arms x (2 + 1 sizes) x 3 seeds; scaling on 'a': 3 seeds x (2 pools + 1 extra bank size)
    assert len(p.finetunes) == 4 * 3 * 3 + 3 * 3
    # pre-training is shared by seeds and datasets: primitives, anatomy, no-anchors, 2 pools, 1 bank size
    assert len(p.pretrains) == 6
    assert {b.subjects for b in p.banks} == {5, 20}
    prim = next(j for j in p.pretrains if j.arm == "primitives")
    assert prim.bank is None and prim.config["model"] == "unet" and prim.config["steps"] == 10
    noanc = next(j for j in p.pretrains if j.arm == "no-anchors")
    assert noanc.config["synth"] == {"anchors": False}
    scratch = [j for j in p.finetunes if j.arm == "scratch"]
    assert all(j.pretrain is None for j in scratch)


def test_a_dataset_entry_can_run_a_subset_of_the_arms():
    raw = {**RAW, "datasets": [{"name": "a", "path": "data/a"},
                               {"name": "a-long", "path": "data/a", "arms": ["scratch", "anatomy"],
                                "finetune": {"steps": 1000}}]}
    p = expand(raw)
    long = [j for j in p.finetunes if j.dataset == "a-long"]
    assert {j.arm for j in long} == {"scratch", "anatomy"} and all(j.options["steps"] == 1000 for j in long)
    assert {j.arm for j in p.finetunes if j.dataset == "a"} == {a["name"] for a in RAW["arms"]}


def test_keys_are_stable_and_unique():
    a, b = expand(RAW), expand(RAW)
    assert [j.key for j in a.finetunes] == [j.key for j in b.finetunes]
    assert len({j.key for j in a.finetunes}) == len(a.finetunes)
    changed = dict(RAW, pretrain={"model": "unet", "feature_size": 4, "steps": 20})
    c = expand(changed)
    assert {j.key for j in c.pretrains}.isdisjoint({j.key for j in a.pretrains})


@pytest.mark.parametrize("edit,message", [
    ({"arms": [{"name": "x"}, {"name": "x"}]}, "unique"),
    ({"baseline": "nope"}, "baseline arm 'nope'"),
    ({"datasets": [{"name": "a"}]}, "'name' and a 'path'"),
    ({"scaling": {"arm": "ghost"}}, "scaling arm 'ghost'"),
    ({"datasets": [{"name": "a", "path": "p", "arms": ["anatomy"]}]}, "include the baseline"),
    ({"compare": [["anatomy", "ghost"]]}, "'compare' entries must be two arm names"),
    ({"datasets": [{"name": "a", "path": "p", "arms": ["scratch", "ghost"]}]}, "must name known arms"),
])
def test_bad_protocols(edit, message):
    with pytest.raises(ConfigError, match=message):
        expand({**RAW, **edit})


def test_load_protocol_rejects_unknown_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**RAW, "sedes": [0]}))
    with pytest.raises(ConfigError, match="unknown protocol key"):
        load_protocol(path)


@pytest.mark.parametrize("name", ["../escape", "a/b", "pretrain", ".hidden", ""])
def test_load_protocol_rejects_names_that_are_not_a_folder_name(tmp_path, name):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**RAW, "name": name}))
    with pytest.raises(ConfigError, match="plain folder name"):
        load_protocol(path)


def test_pick_eval_cases_is_stable_and_checked():
    from anatosynth.experiment.protocol import pick_eval_cases

    names = [f"case_{i:02d}" for i in range(20)]
    a = pick_eval_cases(names, 8)
    assert len(a) == 8 and set(a) <= set(names)
    assert a == pick_eval_cases(list(reversed(names)), 8)  # order of the listing does not matter
    assert pick_eval_cases(names, ["case_03"]) == ["case_03"]
    assert pick_eval_cases(names, None) is None
    with pytest.raises(ConfigError, match="between 1 and 19"):
        pick_eval_cases(names, 20)
    with pytest.raises(ConfigError, match="not in the dataset: nope"):
        pick_eval_cases(names, ["nope"])


PROTOCOLS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "protocols").glob("*.yaml"))


def test_the_documented_protocols_are_shipped():
    assert {"cpu-mini", "cpu-scaling", "cpu-investigate", "gpu-short", "paper"} <= set(PROTOCOLS)


@pytest.mark.parametrize("name", PROTOCOLS)
def test_shipped_protocols_are_valid(name):
    """Every shipped protocol expands, and every job's options are accepted by the verb that runs it."""
    from anatosynth.cli import build_parser
    from anatosynth.experiment.runner import _cli_args
    from anatosynth.train.config import PretrainConfig

    path = Path(__file__).resolve().parents[2] / "protocols" / f"{name}.yaml"
    p = expand(load_protocol(path), str(path))
    assert p.finetunes and any(j.arm == p.baseline for j in p.finetunes)
    for job in p.pretrains:
        PretrainConfig.from_dict({**job.config, "bank": "builtin:phantom"}, source=job.key)
    parser = build_parser()
    for job in p.finetunes:
        options = dict(job.options)
        evaluate = options.pop("evaluate")
        parser.parse_args(["finetune", "--data", job.data, "--out", "x", *_cli_args(options)])
        parser.parse_args(["evaluate", "--data", job.data, "--model", "x", "--out", "y", *_cli_args(evaluate)])


def test_keys_follow_code_defaults_not_only_the_protocol(monkeypatch):
    """A changed code default (or result version) gives new keys, so a stale run is never reused; spelling
    a default out in the protocol keeps the key."""
    from dataclasses import fields

    import anatosynth.synth.config as synth_config
    import anatosynth.train.finetune as finetune

    a = expand(RAW)
    monkeypatch.setattr(synth_config, "STREAM_VERSION", synth_config.STREAM_VERSION + 1)
    assert {j.key for j in expand(RAW).pretrains}.isdisjoint({j.key for j in a.pretrains})
    monkeypatch.undo()
    crops = next(f for f in fields(finetune.FinetuneConfig) if f.name == "crops")
    monkeypatch.setattr(crops, "default", crops.default + 1)
    changed = expand(RAW)
    assert {j.key for j in a.finetunes}.isdisjoint({j.key for j in changed.finetunes})
    assert [j.key for j in a.pretrains] == [j.key for j in changed.pretrains]
    monkeypatch.undo()
    spelled = expand({**RAW, "finetune": {**RAW["finetune"], "crops": crops.default},
                      "pretrain": {**RAW["pretrain"], "synth": {"anchors": True}, "threads": 1}})
    assert [j.key for j in a.finetunes] == [j.key for j in spelled.finetunes]
    assert [j.key for j in a.pretrains if j.arm == "anatomy"] == [j.key for j in spelled.pretrains if j.arm == "anatomy"]


def test_released_weights_enter_the_fine_tune_key(tmp_path):
    import json

    arms = [{"name": "scratch", "pretrain": "none"},
            {"name": "anatomy", "pretrain": {"mode": "anatomy"}, "weights": str(tmp_path / "w")}]
    before = expand({**RAW, "arms": arms})
    assert next(j for j in before.pretrains if j.arm == "anatomy").weights == str(tmp_path / "w")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "card.json").write_text(json.dumps({"weights_sha256": "ab" * 32}))
    after = expand({**RAW, "arms": arms})
    def keys(p, arm, main):  # main grid (uses the release) or scaling points (pre-train their own)
        return [j.key for j in p.finetunes if j.arm == arm and (j.samples is None and j.subjects is None) == main]

    assert set(keys(before, "anatomy", True)).isdisjoint(keys(after, "anatomy", True))
    assert keys(before, "anatomy", False) == keys(after, "anatomy", False)
    assert keys(before, "scratch", True) == keys(after, "scratch", True)
    with pytest.raises(ConfigError, match="unknown key"):
        expand({**RAW, "arms": [{"name": "scratch", "pretrain": "none", "weigths": "x"}]})
    with pytest.raises(ConfigError, match="does not pre-train"):
        expand({**RAW, "arms": [{"name": "scratch", "pretrain": "none", "weights": "x"}]})


def test_a_subset_of_arms_and_seeds_keeps_the_grid_keys():
    full = expand(RAW)
    pilot = subset(full, arms=["scratch", "anatomy"], seeds=[0])
    assert {j.arm for j in pilot.finetunes} == {"scratch", "anatomy"} and {j.seed for j in pilot.finetunes} == {0}
    assert {j.key for j in pilot.finetunes} <= {j.key for j in full.finetunes}  # the pilot's jobs are the grid's
    # only the pre-training runs and banks the selected fine-tunes need
    assert {j.key for j in pilot.pretrains} == {j.pretrain for j in pilot.finetunes if j.pretrain}
    assert {j.arm for j in pilot.pretrains} == {"anatomy"}
    assert {b.key for b in pilot.banks} == {j.bank for j in pilot.pretrains}
    with pytest.raises(ConfigError, match="unknown arm.*nope"):
        subset(full, arms=["nope"])
    with pytest.raises(ConfigError, match="seed.*7"):
        subset(full, seeds=[7])


def test_a_subset_of_settings_runs_one_dataset_or_one_labelled_set_size():
    full = expand(RAW)
    settings = sorted({(j.dataset, j.train_cases) for j in full.finetunes})
    name, k = settings[0]
    one = subset(full, datasets=[f"{name}:{k}"])
    assert {(j.dataset, j.train_cases) for j in one.finetunes} == {(name, k)}
    assert {j.key for j in one.finetunes} <= {j.key for j in full.finetunes}
    whole = subset(full, datasets=[name])
    assert {(j.dataset, j.train_cases) for j in whole.finetunes} == {s for s in settings if s[0] == name}
    both = subset(full, arms=["scratch"], datasets=[name])
    assert {j.arm for j in both.finetunes} == {"scratch"} and not both.pretrains
    with pytest.raises(ConfigError, match="no setting 'nope'.*the protocol has"):
        subset(full, datasets=["nope"])
    with pytest.raises(ConfigError, match=f"no setting '{name}:99'"):
        subset(full, datasets=[f"{name}:99"])
    with pytest.raises(ConfigError, match="NAME:CASES"):
        subset(full, datasets=[f"{name}:x"])


def test_options_added_later_keep_old_keys_at_their_neutral_value():
    from anatosynth.experiment.protocol import NEUTRAL_FINETUNE

    base = expand(RAW)
    for name, neutral in NEUTRAL_FINETUNE.items():
        same = expand({**RAW, "finetune": {**RAW["finetune"], name: neutral}})
        assert [j.key for j in same.finetunes] == [j.key for j in base.finetunes], name
    changed = expand({**RAW, "finetune": {**RAW["finetune"], "freeze_pretrained_steps": 2}})
    assert {j.key for j in changed.finetunes}.isdisjoint({j.key for j in base.finetunes})


def test_synthesis_options_added_later_keep_old_keys_at_their_neutral_value():
    from anatosynth.experiment.protocol import NEUTRAL_SYNTH

    base = expand(RAW)
    for name, neutral in NEUTRAL_SYNTH.items():
        same = expand({**RAW, "pretrain": {**RAW.get("pretrain", {}), "synth": {name: neutral}}})
        assert [j.key for j in same.pretrains] == [j.key for j in base.pretrains], name
    changed = expand({**RAW, "pretrain": {**RAW.get("pretrain", {}), "synth": {"clutter": 0.3}}})
    assert changed.pretrains and {j.key for j in changed.pretrains}.isdisjoint({j.key for j in base.pretrains})


def test_arms_that_pre_train_alike_share_one_run_named_after_the_first():
    arms = [*RAW["arms"], {"name": "anatomy-gentle", "pretrain": {"mode": "anatomy"},
                           "finetune": {"pretrained_lr_scale": 0.1}}]
    base, more = expand(RAW), expand({**RAW, "arms": arms})
    assert [j.key for j in more.pretrains] == [j.key for j in base.pretrains]  # no new pre-training run
    anatomy = {j.pretrain for j in more.finetunes if j.arm == "anatomy" and not (j.samples or j.subjects)}
    gentle = {j.pretrain for j in more.finetunes if j.arm == "anatomy-gentle" and not (j.samples or j.subjects)}
    assert len(anatomy) == 1 and gentle == anatomy and next(iter(anatomy)).startswith("pre-anatomy-")
    assert {j.key for j in more.finetunes if j.arm == "anatomy-gentle"}.isdisjoint(
        {j.key for j in more.finetunes if j.arm == "anatomy"})


def test_committed_results_are_jobs_of_the_protocols_that_keep_them():
    """A key that drifts (a changed default, an edited protocol) would orphan the results committed under
    results/: each of them must still be a job of a shipped protocol that keeps its results there."""
    import json

    root = Path(__file__).resolve().parents[2]
    keys: dict[str, set[str]] = {}
    for name in PROTOCOLS:
        raw = load_protocol(root / "protocols" / f"{name}.yaml")
        if raw.get("results"):
            keys.setdefault(str(raw["results"]), set()).update(j.key for j in expand(raw).finetunes)
    for folder, known in keys.items():
        for f in sorted((root / folder).glob("*.json")):
            assert json.loads(f.read_text())["key"] in known, f"{f.name}: no shipped protocol has this job any more"


def test_the_budget_protocol_reuses_the_grids_scratch_anatomy_and_primitives_jobs():
    """cpu-long-budget adds only the 2,500- and 30,000-patch arms: its scratch, anatomy and primitives fine-tunes
    must be cpu-long's own jobs in all three settings (same keys, so the same kept results), and its arms must
    differ from their 10,000-patch arm only in budget."""
    root = Path(__file__).resolve().parents[2]
    grid = expand(load_protocol(root / "protocols" / "cpu-long.yaml"))
    budget = expand(load_protocol(root / "protocols" / "cpu-long-budget.yaml"))
    shared = {j.key for j in budget.finetunes if j.arm in ("scratch", "anatomy", "primitives")}
    assert len(shared) == 3 * 18 and shared <= {j.key for j in grid.finetunes}
    assert budget.results == grid.results
    new = [j for j in budget.finetunes if j.arm == "anatomy-2.5k"]
    assert len(new) == 6 and not {j.key for j in new} & {j.key for j in grid.finetunes}
    controls = [j for j in budget.finetunes if j.arm == "primitives-30k"]
    assert len(controls) == 18 and {(j.dataset, j.train_cases) for j in controls} == {
        ("chaos-t2", 1), ("chaos-t2", 4), ("openkbp", 4)}
    (pre,) = {j.pretrain for j in controls}
    (ten,) = {j.pretrain for j in budget.finetunes if j.arm == "primitives"}
    a, b = (next(p for p in budget.pretrains if p.key == k) for k in (pre, ten))
    assert a.config["steps"] == 7500 and a.config["checkpoint_every"] == 100 and a.weights.endswith("primitives-30k")
    assert {k: v for k, v in a.config.items() if k != "steps"} == {k: v for k, v in b.config.items() if k != "steps"}
    from anatosynth.experiment.runner import _budget_and_recipe

    points = {j.arm: _budget_and_recipe(budget, j) for j in budget.finetunes}
    assert points["anatomy-2.5k"][0] == 2500 and points["anatomy"][0] == 10000
    assert points["anatomy-2.5k"][1] == points["anatomy"][1]  # one recipe: one line in dice_vs_budget.png
    # the 30k point was pre-trained on a GPU (released weights): the same line, its fine-tunes new CPU jobs
    assert points["anatomy-30k"] == (30000, points["anatomy"][1])
    assert points["primitives-30k"] == (30000, points["primitives"][1]) != points["anatomy"]
    far = [j for j in budget.finetunes if j.arm == "anatomy-30k"]
    assert len(far) == 18 and all(j.options.get("device") == "cpu" for j in far)


def test_the_screen_protocol_reuses_the_grids_scratch_and_anatomy_jobs_and_the_pilots_pretrainings():
    """cpu-long-screen varies the render model and the bank at the grid's budget: its scratch and anatomy jobs are
    cpu-long's (same keys, so the same kept results), its shell and fill pre-trainings the pilots' runs, so only
    the variants' pre-trainings and fine-tunes are new work."""
    root = Path(__file__).resolve().parents[2]
    grid, pilots, screen = (expand(load_protocol(root / "protocols" / f"{n}.yaml"))
                            for n in ("cpu-long", "cpu-long-pilots", "cpu-long-screen"))
    mine: dict[str, set[str]] = {j.arm: set() for j in screen.finetunes}
    for j in screen.finetunes:
        mine[j.arm].add(j.key)
    grid_keys = {j.key for j in grid.finetunes}
    assert len(mine["scratch"]) == 3 and mine["scratch"] <= grid_keys
    assert len(mine["anatomy"]) == 6  # three seeds, 5- and 20-subject banks
    five = {j.key for j in screen.finetunes if j.arm == "anatomy" and not j.subjects}
    assert len(five) == 3 and five <= grid_keys
    assert {j.subjects for j in screen.finetunes if j.arm == "anatomy"} == {None, 20}
    assert not (mine["anatomy-shell"] | mine["anatomy-fill"]) & grid_keys
    assert screen.results == grid.results
    renders = {p.config.get("render"): p for p in screen.pretrains}
    assert {"shell", "fill"} <= set(renders)
    assert all(p.config.get("steps") == 2500 for p in screen.pretrains)  # the grid's budget, not a quarter of it
    pilot_runs = {p.key for p in pilots.pretrains}
    assert renders["shell"].key in pilot_runs and renders["fill"].key in pilot_runs


def test_the_confirm_protocol_is_what_its_pre_registration_says():
    """confirm.yaml (issue 32): the split files keep test, validation, pool and the head-and-neck bank apart; seeds
    are new; the primary arms have 30 seeds with one labelled case, the others 10; the OpenKBP bank is its own
    and every pre-trained arm of a dataset has one budget; CHAOS-T2 reuses the cpu-long releases."""
    import json

    root = Path(__file__).resolve().parents[2]
    protocol = expand(load_protocol(root / "protocols" / "confirm.yaml"), "protocols/confirm.yaml")
    kbp = json.loads((root / "protocols" / "splits" / "openkbp.json").read_text())
    sets = [set(kbp[k]) for k in ("test", "validation", "pool", "bank")]
    assert sum(map(len, sets)) == len(set().union(*sets)) == 203 and len(kbp["test"]) >= 60
    (hn,) = [b for b in protocol.banks if b.cases]
    assert hn.cases == kbp["bank"] and hn.source.endswith("openkbp")
    seeds: dict[tuple, set[int]] = {}
    for j in protocol.finetunes:
        seeds.setdefault((j.dataset, j.train_cases, j.arm), set()).add(j.seed)
        assert j.seed >= 100 and j.eval_cases is None and isinstance(j.split, str)
    for (ds, k, arm), got in seeds.items():
        want = 30 if k == 1 and arm in ("anatomy", "primitives") else 10
        assert len(got) == want, (ds, k, arm)
    assert len(protocol.finetunes) == 280
    budgets = {(p.bank, p.arm): int(p.config.get("steps", 2500)) * 4 for p in protocol.pretrains}
    assert set(budgets.values()) == {10000}
    by_arm = {(j.dataset, j.arm): j.pretrain for j in protocol.finetunes}
    weights = {p.key: p.weights for p in protocol.pretrains}
    assert weights[by_arm["chaos-t2", "anatomy"]] == "weights/cpu-long-anatomy"
    assert weights[by_arm["openkbp", "anatomy"]] == "weights/confirm-hn-anatomy"
    assert by_arm["chaos-t2", "primitives"] == by_arm["openkbp", "primitives"]  # no bank: one release for both
    assert [(q["dataset"], q["train_cases"]) for q in protocol.raw["primary"]] == [("chaos-t2", 1), ("openkbp", 1)]
