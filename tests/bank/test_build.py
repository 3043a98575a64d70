"""``bank build`` / ``bank merge`` on tiny label maps: selection, names, bad input, CLI behaviour."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from anatosynth.bank import load_bank
from anatosynth.bank.build import build_bank, merge_banks
from anatosynth.cli import main
from anatosynth.errors import ConfigError, InputError


def _map(seed: int, drop: tuple[int, ...] = ()) -> np.ndarray:
    """A 40x30x20 map with liver (1), spleen (2), kidneys (3, 4); position jitter by seed."""
    rng = np.random.default_rng(seed)
    s = int(rng.integers(0, 3))
    lab = np.zeros((40, 30, 20), np.uint8)
    lab[25 + s:35 + s, 5:20, 8:16] = 1
    lab[3:10, 8:18, 9:15] = 2
    lab[26:31, 1:7, 3:8] = 3  # kidneys behind the liver, as in a body
    lab[6:11, 1:7, 4:9] = 4
    for d in drop:
        lab[lab == d] = 0
    return lab


def _write(folder, name, arr, labels=None, affine=None):
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine),
             str(folder / f"{name}.nii.gz"))
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels))


FLARE_LIKE = {"0": "background", "1": "liver", "2": "spleen", "3": "right_kidney", "4": "left_kidney"}


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "maps"
    for i in range(4):
        _write(d, f"patient_{i:03d}", _map(i), FLARE_LIKE if i == 0 else None)
    return d


def test_build_picks_k_subjects_by_seed_and_hides_names(folder, tmp_path):
    a = build_bank([folder], subjects=2, spacing=(2, 2, 3), seed=1, progress=False)
    b = build_bank([folder], subjects=2, spacing=(2, 2, 3), seed=1, progress=False)
    assert a.subjects == b.subjects and len(a.subjects) == 2
    assert all(len(s) == 16 and "patient" not in s for s in a.subjects)
    assert [o.name for o in a.organs] == ["liver", "kidney_right", "spleen", "kidney_left"]
    named = build_bank([folder], cases=["patient_003"], spacing=(2, 2, 3), progress=False)
    assert len(named.subjects) == 1


def test_ras_canonicalisation_puts_liver_on_the_right(folder, tmp_path):
    # the same anatomy stored LPS-flipped in x must give the same body-frame relations
    flipped = tmp_path / "flipped"
    aff = np.diag([-2.0, 2.0, 3.0, 1.0])
    for i in range(2):
        _write(flipped, f"p{i}", _map(i)[::-1].copy(), FLARE_LIKE, aff)
    bank = build_bank([flipped], subjects=2, spacing=(2, 2, 3), progress=False)
    ref = build_bank([folder], cases=["patient_000", "patient_001"], spacing=(2, 2, 3), progress=False)
    assert np.allclose(bank.relation("spleen", "liver").direction, ref.relation("spleen", "liver").direction)
    assert ref.relation("spleen", "liver").direction[0] > 0.9


def test_missing_organs_are_allowed(tmp_path):
    d = tmp_path / "m"
    _write(d, "a", _map(0), FLARE_LIKE)
    _write(d, "b", _map(1, drop=(2,)))
    bank = build_bank([d], subjects=2, spacing=(2, 2, 3), progress=False)
    assert len(bank.organ("spleen").shapes) == 1 and len(bank.organ("liver").shapes) == 2


def test_too_many_subjects_is_a_config_error(folder):
    with pytest.raises(ConfigError, match="--subjects 9 is more than the 4 label maps"):
        build_bank([folder], subjects=9, progress=False)


def test_unknown_case_name_is_a_config_error(folder):
    with pytest.raises(ConfigError, match="nobody"):
        build_bank([folder], cases=["nobody"], progress=False)


def test_empty_label_map_is_an_input_error(tmp_path):
    d = tmp_path / "e"
    _write(d, "empty", np.zeros((10, 10, 10), np.uint8), FLARE_LIKE)
    with pytest.raises(InputError, match="empty.nii.gz: label map is empty"):
        build_bank([d], subjects=1, progress=False)


def test_two_names_for_one_organ_is_an_input_error(tmp_path):
    d = tmp_path / "dup"
    _write(d, "a", _map(0), {"0": "background", "1": "liver", "2": "Liver", "3": "rk", "4": "lk"})
    with pytest.raises(InputError, match="both mean organ 'liver'"):
        build_bank([d], subjects=1, progress=False)


def test_merge_requires_same_spacing_and_joins_by_name(folder, tmp_path):
    a = build_bank([folder], cases=["patient_000"], spacing=(2, 2, 3), progress=False)
    other = tmp_path / "other"
    # a differently numbered scheme: spleen 1, liver 2, kidneys swapped ids
    arr = _map(5)
    remap = np.array([0, 2, 1, 4, 3], np.uint8)[arr]
    _write(other, "x", remap, {"0": "background", "1": "Spleen", "2": "Liver", "3": "LKid", "4": "RKid"})
    b = build_bank([other], subjects=1, spacing=(2, 2, 3), progress=False)
    merged = merge_banks([a, b])
    assert [o.name for o in merged.organs] == ["liver", "kidney_right", "spleen", "kidney_left"]
    assert all(len(o.shapes) == 2 for o in merged.organs)
    assert merged.relation("spleen", "liver").n_subjects == 2
    c = build_bank([folder], cases=["patient_001"], spacing=(1, 1, 1), progress=False)
    with pytest.raises(ConfigError, match="different spacings"):
        merge_banks([a, c])
    with pytest.raises(ConfigError, match="more than one bank"):
        merge_banks([a, a])


def test_cli_build_merge_inspect(folder, tmp_path, capsys):
    out = tmp_path / "b.bank"
    assert main(["bank", "build", str(folder), "--subjects", "2", "--spacing", "2,2,3", "--seed", "3",
                 "--out", str(out), "--quiet"]) == 0
    assert load_bank(out).num_classes == 5
    merged = tmp_path / "m.bank"
    assert main(["bank", "merge", str(out), "builtin:phantom", "--out", str(merged), "--quiet"]) == 2
    assert "different spacings" in capsys.readouterr().err
    assert main(["bank", "inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"version", "spacing", "subjects", "organs", "edges"} <= set(info)
    liver = info["organs"][0]
    assert liver["name"] == "liver" and len(liver["anchor"]["mean_mm"]) == 3 and "std" in liver["volume_ml"]
    assert {"a", "b", "contact", "direction", "overlap"} <= set(info["edges"][0])


@pytest.mark.parametrize("argv, expect", [
    (["--subjects", "9"], "more than the 4"),
    (["--spacing", "1,2"], "spacing"),
    (["--labels", "missing.json"], "missing.json"),
])
def test_cli_bad_input_exits_2_without_output(folder, tmp_path, capsys, argv, expect):
    out = tmp_path / "never.bank"
    assert main(["bank", "build", str(folder), "--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0]
    assert not out.exists() and not any(tmp_path.glob(".never*"))


def test_organ_names_that_match_no_canonical_organ_are_named_and_a_disjoint_merge_is_refused(folder, tmp_path,
                                                                                           capsys):
    """German names build (they are organs the user knows) with a warning that names them; merging such a bank
    with an English one is refused unless --allow-disjoint (it would hold liver and leber side by side)."""
    german = tmp_path / "german"
    for i in range(2):
        _write(german, f"p{i}", _map(i), {"0": "background", "1": "Leber", "2": "Milz", "3": "Niere rechts",
                                          "4": "Niere links"} if i == 0 else None)
    assert main(["bank", "build", str(german), "--subjects", "2", "--spacing", "4,4,6", "--out",
                 str(tmp_path / "de.bank"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: 4 organ name(s) match no canonical organ (Leber, Milz, Niere links, Niere rechts)" in err
    assert main(["bank", "build", str(folder), "--subjects", "2", "--spacing", "4,4,6", "--out",
                 str(tmp_path / "en.bank"), "--quiet"]) == 0
    assert "match no canonical organ" not in capsys.readouterr().err
    merge = ["bank", "merge", str(tmp_path / "en.bank"), str(tmp_path / "de.bank"), "--out", str(tmp_path / "m.bank"),
             "--quiet", "--ignore-orientation"]
    assert main(merge) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "de.bank shares no organ" in err[0] and "--allow-disjoint" in err[0]
    assert not (tmp_path / "m.bank").exists()
    assert main([*merge, "--allow-disjoint"]) == 0
    assert len(load_bank(tmp_path / "m.bank").organs) == 8
