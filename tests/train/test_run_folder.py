"""run_folder: the commit a run, a model card or a kept result names."""

import shutil
import subprocess

import pytest

from anatosynth.train.run_folder import code_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_code_commit_names_head_and_says_when_tracked_code_differs(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("a\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert code_commit(pkg) == head
    (pkg / "new.py").write_text("y = 2\n")  # untracked: not code the commit claims
    (tmp_path / "notes.md").write_text("b\n")  # outside the package: results and docs change while runs go on
    assert code_commit(pkg) == head
    (pkg / "mod.py").write_text("x = 2\n")
    assert code_commit(pkg) == head + "-dirty"


def test_code_commit_is_none_outside_a_checkout(tmp_path):
    assert code_commit(tmp_path) is None
