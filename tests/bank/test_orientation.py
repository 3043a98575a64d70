"""Anatomical invariants catch wrong orientation headers: flipped and swapped copies of a real FLARE22 map.

The copies keep the voxels and change only the header (the world axes of the affine), as a wrong
header in a public dataset does; the tests check that building, merging and ``check`` name the file
and the axis, that ``--fix-orientation`` gives back the original's anchors, and that real subjects
and the phantom pass every invariant.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anatosynth.bank import load_bank
from anatosynth.bank.build import build_bank, merge_banks
from anatosynth.bank.names import canonical_name
from anatosynth.bank.orientation import (INVARIANTS, OrientationError, bank_report, check_centroids,
                                         reorient_shapes)
from anatosynth.cli import main

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
FLARE = DATA / "labels" / "flare22"
SPACING = "3,3,4"  # coarse: the check needs centroids only, and the tests stay fast

# header transforms: world axes mapped by a signed permutation (voxels unchanged)
HEADERS = {
    "rl": (np.diag([-1.0, 1, 1]), "right-left looks flipped"),
    "ap": (np.diag([1.0, -1, 1]), "anterior-posterior looks flipped"),
    "si": (np.diag([1.0, 1, -1]), "superior-inferior looks flipped"),
    "swap": (np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]]), "right-left and anterior-posterior look swapped"),
}


def _header(affine: np.ndarray, t: np.ndarray) -> np.ndarray:
    w = np.eye(4)
    w[:3, :3] = t
    return w @ affine


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """A real FLARE22 map (cropped to its organs, every 2nd voxel in-plane for speed) and its
    mis-oriented copies, one folder each."""
    if not FLARE.is_dir():
        pytest.fail(f"real data folder missing: {FLARE}")
    from anatosynth.io import crop_foreground, load_label

    root = tmp_path_factory.mktemp("orient")
    vol = crop_foreground(load_label(FLARE / "FLARE22_Tr_0001.nii.gz"), margin=2)
    arr = np.ascontiguousarray(vol.array[::2, ::2].astype(np.uint16))
    vol.affine[:3, :2] *= 2
    folders = {}
    for name, affine in [("good", vol.affine)] + [(k, _header(vol.affine, t)) for k, (t, _) in HEADERS.items()]:
        d = root / name
        d.mkdir()
        shutil.copy(FLARE / "labels.json", d / "labels.json")
        nib.save(nib.Nifti1Image(arr, affine), str(d / f"{name}_case.nii.gz"))
        folders[name] = d
    return folders


@pytest.fixture(scope="module")
def banks(maps, tmp_path_factory):
    """The original's bank, a bank of all four copies re-oriented, and the A-P copy built as it is."""
    out = tmp_path_factory.mktemp("orient_banks")
    assert main(["bank", "build", str(maps["good"]), "--subjects", "1", "--spacing", SPACING,
                 "--out", str(out / "good.bank"), "--quiet"]) == 0
    assert main(["bank", "build", *(str(maps[k]) for k in HEADERS), "--subjects", "4", "--spacing", SPACING,
                 "--fix-orientation", "--out", str(out / "fixed.bank"), "--quiet"]) == 0
    assert main(["bank", "build", str(maps["ap"]), "--subjects", "1", "--spacing", SPACING,
                 "--ignore-orientation", "--out", str(out / "ignored.bank"), "--quiet"]) == 0
    return out


def test_invariants_use_canonical_names_and_each_axis():
    for inv in INVARIANTS:
        assert canonical_name(inv.a) == inv.a and canonical_name(inv.b) == inv.b and inv.a != inv.b
    assert {inv.axis for inv in INVARIANTS} == {0, 1, 2}
    assert len({(inv.a, inv.b, inv.axis) for inv in INVARIANTS}) == len(INVARIANTS)


def test_diagnosis_from_centroids_names_the_axis():
    good = {"liver": [70, 40, 20], "spleen": [-80, -10, 30], "kidney_right": [70, -20, -30],
            "kidney_left": [-60, -15, -25], "gallbladder": [70, 70, -20], "stomach": [-25, 70, 25]}
    assert check_centroids(good).ok
    flipped = {k: np.array(v) * [1, -1, 1] for k, v in good.items()}
    f = check_centroids(flipped)
    assert f.explained and f.diagnosis == "anterior-posterior looks flipped" and not f.alternatives
    assert "kidney_right and kidney_left anterior of liver" in f.message("x.nii.gz")
    odd = dict(good, gallbladder=[70, 70, 40])  # one relation off, no axis pattern: a warning, not a flip
    assert not check_centroids(odd).ok and not check_centroids(odd).explained


def test_phantom_passes_all_invariants():
    report = bank_report(load_bank("builtin:phantom"))
    assert all(len(r["checked"]) >= 30 and r["violated"] == [] for r in report.values()), report


@pytest.mark.slow
def test_real_flare22_subjects_pass_all_invariants(capsys):
    """`anatosynth check` on all 50 FLARE22 label maps: every invariant holds, no warning."""
    assert main(["check", str(FLARE), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "ok: 50 cases valid" in captured.out and "warning" not in captured.err


@pytest.mark.parametrize("copy", list(HEADERS))
def test_build_names_the_file_and_the_axis_and_writes_nothing(maps, tmp_path, capsys, copy):
    out = tmp_path / "never.bank"
    assert main(["bank", "build", str(maps[copy]), "--subjects", "1", "--spacing", SPACING,
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{copy}_case.nii.gz: {HEADERS[copy][1]} (" in err[0]
    assert err[0].endswith("— fix the header or pass --fix-orientation")
    assert not out.exists() and not any(tmp_path.glob(".never*"))


def test_fix_orientation_gives_back_the_original_anchors(banks, capsys):
    good, fixed = load_bank(banks / "good.bank"), load_bank(banks / "fixed.bank")
    assert [o.name for o in fixed.organs] == [o.name for o in good.organs]
    assert all(len(o.shapes) == 4 for o in fixed.organs)
    for o in fixed.organs:
        ref = good.organ(o.name).anchor_mean_mm
        for s in o.shapes:
            assert np.abs(s.centroid_mm - ref).max() < 1.0, (o.name, s.centroid_mm, ref)
    records = fixed.meta["orientation"]
    assert sorted(r["finding"] for r in records.values()) == sorted(d for _, d in HEADERS.values())
    assert main(["bank", "inspect", str(banks / "fixed.bank"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["orientation"]
    assert sorted(r["fix"] for r in report.values()) == sorted(d for _, d in HEADERS.values())
    assert all(r["violated"] == [] and len(r["checked"]) > 30 for r in report.values())
    assert main(["bank", "audit", str(banks / "fixed.bank")]) == 0
    out = capsys.readouterr().out
    assert "0 with violations, 4 re-oriented" in out and "fixed at build: anterior-posterior looks flipped" in out


def test_ignored_subject_is_recorded_and_reported(banks, capsys):
    bank = load_bank(banks / "ignored.bank")
    (record,) = bank.meta["orientation"].values()
    assert record == {"action": "ignored", "finding": "anterior-posterior looks flipped",
                      "transform": [[1, 0, 0], [0, -1, 0], [0, 0, 1]]}
    assert main(["bank", "inspect", str(banks / "ignored.bank")]) == 0
    out = capsys.readouterr().out
    assert "1 with violations" in out and "ignored at build: anterior-posterior looks flipped" in out
    assert main(["bank", "audit", str(banks / "ignored.bank")]) == 0  # de-identified, orientation reported


def test_merge_refuses_a_flipped_bank_and_fixes_it_on_request(banks, tmp_path, capsys):
    out = tmp_path / "m.bank"
    assert main(["bank", "merge", str(banks / "good.bank"), str(banks / "ignored.bank"), "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{banks / 'ignored.bank'}: subject " in err and "anterior-posterior looks flipped (" in err
    assert not out.exists()
    assert main(["bank", "merge", str(banks / "good.bank"), str(banks / "ignored.bank"), "--out", str(out),
                 "--quiet", "--fix-orientation"]) == 0
    merged, good = load_bank(out), load_bank(banks / "good.bank")
    for o in merged.organs:  # the re-oriented subject now agrees with the good one
        assert np.abs(o.anchor_mean_mm - good.organ(o.name).anchor_mean_mm).max() < 1.0, o.name
    assert [r["action"] for r in merged.meta["orientation"].values()] == ["fixed"]
    assert main(["bank", "audit", str(out)]) == 0


def test_merge_refuses_banks_whose_consensus_anchors_disagree_by_a_flip(tmp_path):
    """Organs outside the invariants table: only the comparison of the two banks can see the flip."""
    lab = np.zeros((40, 30, 20), np.uint8)
    lab[25:35, 5:20, 8:16], lab[3:10, 8:18, 9:15], lab[26:31, 20:26, 3:8], lab[6:11, 20:26, 4:9] = 1, 2, 3, 4
    names = {"0": "background", "1": "blob_a", "2": "blob_b", "3": "blob_c", "4": "blob_d"}
    made = []
    for name, aff in [("a", np.diag([2.0, 2, 3, 1])), ("b", np.diag([2.0, -2, 3, 1]))]:
        d = tmp_path / name
        d.mkdir()
        (d / "labels.json").write_text(json.dumps(names))
        nib.save(nib.Nifti1Image(lab, aff), str(d / f"{name}.nii.gz"))
        made.append(build_bank([d], subjects=1, spacing=(2, 2, 3), progress=False))
    with pytest.raises(OrientationError, match=r"^two.bank: anterior-posterior looks flipped relative to one.bank"):
        merge_banks(made, names=["one.bank", "two.bank"])
    assert len(merge_banks(made, orientation="ignore").subjects) == 2


def test_check_verb_reports_flipped_label_maps(maps, capsys):
    assert main(["check", str(maps["si"]), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "si_case.nii.gz: superior-inferior looks flipped (" in err and "--fix-orientation" in err
    assert main(["check", str(maps["si"]), "--quiet", "--ignore-orientation"]) == 0
    assert "warning:" in capsys.readouterr().err
    assert main(["check", str(maps["good"]), "--quiet"]) == 0


def test_reorient_shapes_round_trip_and_spacing_guard():
    bank = load_bank("builtin:phantom")
    subject = bank.shapes_of(bank.subjects[0])
    t = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]])  # x-y swap (equal spacing) and an S-I flip
    moved = reorient_shapes(subject, t, bank.spacing)
    assert check_centroids({k: s.centroid_mm for k, s in moved.items()}).ok is False
    back = reorient_shapes(moved, t.T, bank.spacing)
    for name, s in subject.items():
        assert np.array_equal(back[name].mask, s.mask) and np.allclose(back[name].origin_mm, s.origin_mm)
        assert np.allclose(back[name].centroid_mm, s.centroid_mm) and np.allclose(back[name].axes, s.axes)
    with pytest.raises(ValueError, match="different bank spacings"):
        reorient_shapes(subject, np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]), bank.spacing)


def test_bank_without_orientation_meta_inspects_and_audits(tmp_path, capsys):
    """Banks written before the check (no ``meta.orientation``) load, inspect and audit as before."""
    from anatosynth.bank import save_bank

    path = save_bank(load_bank("builtin:phantom"), tmp_path / "old.bank")
    assert "orientation" not in load_bank(path).meta
    assert main(["bank", "inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["orientation"]
    assert len(report) == 5 and all(r["fix"] is None and r["violated"] == [] for r in report.values())
    assert main(["bank", "audit", str(path)]) == 0
    assert "0 with violations, 0 re-oriented" in capsys.readouterr().out


def test_conflicting_orientation_flags_are_a_config_error(maps, tmp_path, capsys):
    assert main(["bank", "build", str(maps["good"]), "--out", str(tmp_path / "x.bank"), "--fix-orientation",
                 "--ignore-orientation", "--quiet"]) == 2
    assert "exclude each other" in capsys.readouterr().err
