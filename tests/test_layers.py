"""The package's layers (docs/method.md, "Layers"): every import goes down the documented order, none goes up.

Each module is parsed with ``ast`` (nothing is imported); every ``import``/``from ... import`` in it, at any
depth (inside functions and ``if TYPE_CHECKING:`` too), is an edge from the module's unit (its sub-package, or
the top-level module itself) to the imported one. The edges must all be in :data:`ALLOWED`, which only points
down :data:`ORDER`, so the graph is acyclic.
"""

from __future__ import annotations

import ast
import graphlib
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "anatosynth"

#: Bottom to top. ``errors``, ``version`` and ``options`` are the base every layer may use; ``anatosynth``
#: is the public Python API (``anatosynth/__init__.py``); ``cli`` and ``__main__`` are the command line.
ORDER = ("errors", "version", "options", "io", "transforms", "bank", "synth", "train", "evaluate", "experiment",
         "anatosynth", "cli", "__main__")
BASE = {"errors", "version", "options"}

#: The exact edges allowed besides the base (a new one is a design decision: add it here and to the docs).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "version": set(),
    "options": {"errors"},
    "io": BASE,
    "transforms": BASE | {"io"},
    "bank": BASE | {"io"},
    "synth": BASE | {"io", "bank"},
    "train": BASE | {"io", "transforms", "bank", "synth"},
    "evaluate": BASE | {"io", "transforms", "train"},
    "experiment": BASE | {"io", "bank", "synth", "train", "evaluate"},
    "anatosynth": BASE | {"io", "transforms", "bank", "synth", "train", "evaluate", "experiment"},
    "cli": BASE | {"anatosynth"},  # the stage CLIs are imported by name (importlib), below cli
    "__main__": {"cli"},
}


@dataclass(frozen=True)
class Edge:
    """``where`` (file:line) imports ``module``: unit ``source`` depends on unit ``target``."""

    source: str
    target: str
    module: str
    where: str


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str, root: Path) -> str:
    """The layer unit of a dotted module name: ``pkg.train.finetune`` → ``train``, ``pkg`` → ``pkg``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imported(node: ast.AST, module: str, is_package: bool, root: Path) -> list[str]:
    """Dotted names of the package's own modules (or the package itself) that ``node`` imports."""
    package = root.name
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == package or a.name.startswith(package + ".")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from . import x, from ..train import y
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    if name != package and not name.startswith(package + "."):
        return []
    if name == package:  # `from pkg import options` names a module; `from pkg import __version__` the API
        return [f"{package}.{a.name}" if (root / a.name).is_dir() or (root / f"{a.name}.py").is_file() else package
                for a in node.names]
    return [name]


def import_edges(root: Path) -> list[Edge]:
    """Every import between different units of the package in folder ``root``."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        source = _unit(module, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for name in _imported(node, module, path.name == "__init__.py", root):
                target = _unit(name, root)
                if target != source:
                    where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
                    edges.append(Edge(source, target, name, where))
    return edges


def violations(edges: list[Edge], allowed: dict[str, set[str]]) -> list[str]:
    """One line per import that the layer table does not allow (units missing from the table included)."""
    out = []
    for e in edges:
        if e.source not in allowed:
            out.append(f"{e.where}: {e.source!r} is not a documented layer (add it to ORDER/ALLOWED and the docs)")
        elif e.target not in allowed[e.source]:
            out.append(f"{e.where}: imports {e.module}, but {e.source} may not import {e.target} "
                       f"(allowed: {', '.join(sorted(allowed[e.source])) or 'nothing'})")
    return out


def test_every_import_follows_the_layers():
    edges = import_edges(PACKAGE_DIR)
    assert len({e.source for e in edges}) >= 10, "the parser found too few units: is the package there?"
    assert violations(edges, ALLOWED) == []


def test_every_unit_is_a_documented_layer():
    units = {_unit(_module_name(p, PACKAGE_DIR), PACKAGE_DIR) for p in PACKAGE_DIR.rglob("*.py")}
    assert units <= set(ORDER), f"undocumented units: {sorted(units - set(ORDER))}"


def test_the_allowed_edges_only_point_down_so_the_graph_is_acyclic():
    assert set(ALLOWED) == set(ORDER)
    rank = {name: i for i, name in enumerate(ORDER)}
    upward = [(a, b) for a, targets in ALLOWED.items() for b in targets if rank[b] >= rank[a]]
    assert upward == []
    graph: dict[str, set[str]] = {}
    for e in import_edges(PACKAGE_DIR):
        graph.setdefault(e.source, set()).add(e.target)
    list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


@pytest.mark.parametrize("line", [
    "from pkg.train.finetune import fit",  # absolute, module level
    "def f():\n    import pkg.train.finetune\n",  # inside a function
    "from ..train import finetune",  # relative
    "from pkg import train",  # a sub-package named through the root
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.train.finetune import fit\n",
])
def test_an_upward_import_is_caught(tmp_path, line):
    """A synthetic package whose ``io`` imports ``train`` (and a cycle back) fails in every spelling."""
    root = _write(tmp_path, {"__init__.py": "", "io/__init__.py": "", "io/volume.py": line + "\n",
                             "train/__init__.py": "", "train/finetune.py": "from pkg.io import volume\n"})
    edges = import_edges(root)
    assert {(e.source, e.target) for e in edges} == {("io", "train"), ("train", "io")}
    found = violations(edges, {"io": set(), "train": {"io"}})
    assert len(found) == 1 and found[0].startswith("pkg/io/volume.py:") and "io may not import train" in found[0]
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter({"io": {"train"}, "train": {"io"}}).static_order())


def test_the_root_api_and_undocumented_units_are_caught(tmp_path):
    """``from pkg import __version__`` inside a layer imports the public API (above every layer)."""
    root = _write(tmp_path, {"__init__.py": "", "io/__init__.py": "from pkg import __version__\n",
                             "extra.py": "from pkg.io import x\n"})
    found = violations(import_edges(root), {"io": {"errors"}, "pkg": set()})
    assert any("io may not import pkg" in f for f in found)
    assert any("'extra' is not a documented layer" in f for f in found)


def test_no_two_modules_import_each_other_even_inside_a_layer():
    """Module by module (not only layer by layer), at any depth: no import circle, such as the one through
    ``SampleParams`` between the stream and the rasteriser that ``synth/params.py`` cut."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        module = _module_name(path, PACKAGE_DIR)
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # a package's __init__ re-exporting its modules is not a circle: only edges between modules count
            edges |= {n for n in _imported(node, module, path.name == "__init__.py", PACKAGE_DIR)
                      if n != module and not module.startswith(n + ".") and not path.name == "__init__.py"}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import circle: {' -> '.join(err.args[1])}")
