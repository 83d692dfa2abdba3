"""The package's layering: no module imports from a layer above its own (read with ast).

A module's layer is its top-level name under ``ensemblevi`` (``tl/_de.py`` is ``tl``), except
for the packages in :data:`SUBLAYERS`, which rank on their own (``model/base/_de_core.py`` is
``model.base``, below ``model``, as scvi-tools' ``scvi.model.base`` never imports
``scvi.model``). Imports of the same or a lower rank are allowed; an import of a higher rank,
anywhere in a file (inside functions and ``TYPE_CHECKING`` blocks too), fails the test,
and so does a top-level module without a rank, so that a new one gets a place here. The
layers' import graph must also have no circle (two layers of one rank importing each other).
"""

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ensemblevi"

RANKS = {
    "_constants": 0,
    "_version": 0,
    "_compat": 0,
    "_scvi_check": 0,
    "_files": 0,
    "_seeding": 0,
    "_fingerprint": 0,
    "_interrupt": 0,
    "_names": 0,
    "_warnings": 0,
    "data": 1,
    "metrics": 1,
    "nn": 1,
    "module": 2,
    "train": 3,
    "model.base": 4,
    "model": 5,
    "tl": 6,
    "pl": 7,
    "benchmark": 8,
    "pipeline": 9,
    "cli": 10,
    "__init__": 10,
    "__main__": 10,
}

#: sub-packages that are a layer of their own, below their parent package
SUBLAYERS = ("model.base",)

MAX_LINES = 600

#: TEMPORARY: known upward imports in files owned elsewhere, each (importing file relative
#: to the package, imported layer); to be fixed and this set emptied at merge.
TEMPORARY_ALLOWED_IMPORTS: set[tuple[str, str]] = set()

#: TEMPORARY: known files over MAX_LINES owned elsewhere; to be split and emptied at merge.
TEMPORARY_ALLOWED_LONG: set[str] = set()


def _sources(package: Path = PACKAGE) -> list[Path]:
    return sorted(package.rglob("*.py"))


def _layer_of_parts(parts: list[str]) -> str:
    """The layer of a module given as names below ``ensemblevi`` (``["model", "base", "_x"]``)."""
    for sub in SUBLAYERS:
        names = sub.split(".")
        if parts[: len(names)] == names:
            return sub
    return parts[0]


def _layer_of_path(path: Path, package: Path = PACKAGE) -> str:
    return _layer_of_parts(list(path.relative_to(package).with_suffix("").parts))


def _imported_layers(path: Path, package: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, layer)`` of every ensemblevi import in the file (``package``: its root)."""
    return list(_parsed_imports(path.relative_to(package.parent).parts, path.read_text()))


@functools.cache  # the planted copies parse the same files again: parse each text once
def _parsed_imports(where: tuple[str, ...], text: str) -> list[tuple[int, str]]:
    """:func:`_imported_layers` of a file at ``where`` (``("ensemblevi", ...)``) with ``text``."""
    tree = ast.parse(text, filename="/".join(where))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ensemblevi":
                    layer = _layer_of_parts(parts[1:]) if len(parts) > 1 else "__init__"
                    found.append((node.lineno, layer))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # the file's package as names, ["ensemblevi", "model", ...], then up
                base = list(where[:-1])
                base = base[: len(base) - node.level + 1]
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")
            if parts[0] != "ensemblevi":
                continue
            for alias in node.names:
                # from ensemblevi.model import base: the imported name may be a (sub)layer;
                # from ensemblevi import __version__: the package itself
                named = _layer_of_parts([*parts[1:], alias.name])
                if len(parts) == 1 and named not in RANKS:
                    named = "__init__"
                found.append((node.lineno, named))
    return found


def _violations(
    package: Path = PACKAGE, allowed: set[tuple[str, str]] = TEMPORARY_ALLOWED_IMPORTS
) -> list[tuple[str, int, str, str]]:
    """``(file, line, layer, imported layer)`` of every import of a higher layer."""
    out = []
    for path in _sources(package):
        layer = _layer_of_path(path, package)
        rel = str(path.relative_to(package))
        for line, target in _imported_layers(path, package):
            if target not in RANKS or layer not in RANKS:
                continue  # reported by test_every_layer_has_a_rank
            if RANKS[target] > RANKS[layer] and (rel, target) not in allowed:
                out.append((rel, line, layer, target))
    return out


def _layer_circles(package: Path = PACKAGE) -> list[list[str]]:
    """The circles of the layers' import graph: its strongly connected parts of 2 or more.

    Ranks alone allow two layers of one rank to import each other; this finds that, and any
    circle the allow list lets through.
    """
    graph: dict[str, set[str]] = {}
    for path in _sources(package):
        layer = _layer_of_path(path, package)
        graph.setdefault(layer, set()).update(
            t for _, t in _imported_layers(path, package) if t != layer
        )
    # Tarjan's algorithm (recursive: the graph has a dozen nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def _line_counts(package: Path = PACKAGE) -> dict[str, int]:
    return {str(p.relative_to(package)): len(p.read_text().splitlines()) for p in _sources(package)}


def _stale_allowances(
    package: Path = PACKAGE,
    allowed_imports: set[tuple[str, str]] = TEMPORARY_ALLOWED_IMPORTS,
    allowed_long: set[str] = TEMPORARY_ALLOWED_LONG,
) -> list[str]:
    """Allow-list entries that no longer allow anything (the violation was fixed)."""
    present = {
        (str(p.relative_to(package)), t)
        for p in _sources(package)
        for _, t in _imported_layers(p, package)
    }
    stale = [f"TEMPORARY_ALLOWED_IMPORTS: {e}" for e in sorted(allowed_imports - present)]
    counts = _line_counts(package)
    short = [f for f in sorted(allowed_long) if counts.get(f, 0) <= MAX_LINES]
    stale += [f"TEMPORARY_ALLOWED_LONG: {f}" for f in short]
    return stale


def test_every_layer_has_a_rank():
    layers = {_layer_of_path(p) for p in _sources()}
    targets = {t for p in _sources() for _, t in _imported_layers(p)}
    unknown = sorted((layers | targets) - set(RANKS))
    assert not unknown, f"top-level modules without a rank in RANKS: {unknown}"


def test_no_import_from_a_higher_layer():
    # an allowed violation that was fixed must leave its list, so it cannot come back
    # unseen (the check itself is tested on planted entries: test_stale_allowances_are_reported)
    stale = _stale_allowances()
    assert not stale, f"fixed: remove from the allow lists: {stale}"
    bad = _violations()
    assert not bad, "upward imports (file:line layer -> higher layer):\n" + "\n".join(
        f"  {rel}:{line} {layer} ({RANKS[layer]}) -> {target} ({RANKS[target]})"
        for rel, line, layer, target in bad
    )


def test_the_layers_import_no_circle():
    circles = _layer_circles()
    assert not circles, f"layers that import each other (a circle): {circles}"


def test_no_source_file_exceeds_the_line_limit():
    long = {
        f: n for f, n in _line_counts().items() if n > MAX_LINES and f not in TEMPORARY_ALLOWED_LONG
    }
    assert not long, f"source files over {MAX_LINES} lines: {long}"


@pytest.fixture
def planted(tmp_path) -> Path:
    """A copy of the package's sources, for the tests of the tests to plant imports in."""
    root = tmp_path / "ensemblevi"
    for path in _sources():
        target = root / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    return root


def _plant(root: Path, rel: str, source: str) -> None:
    path = root / rel
    path.write_text(path.read_text() + "\n\n" + source + "\n")


def test_the_copy_is_clean(planted):
    """The planted tests below start from a copy that passes, so a failure is the plant's."""
    assert not _violations(planted)
    assert not _layer_circles(planted)


@pytest.mark.parametrize(
    ("rel", "source", "layer", "target"),
    [
        # the circle issue 33 found: model.base importing the model layer (lazily, too)
        ("model/base/_vaemixin.py", "from .._members import MemberOnly", "model.base", "model"),
        (
            "model/base/_assembly.py",
            "def f():\n    from ensemblevi.model._shards import merge_models",
            "model.base",
            "model",
        ),
        ("module/_likelihood.py", "from ..train import TrainingPlan", "module", "train"),
    ],
)
def test_a_planted_upward_import_fails(planted, rel, source, layer, target):
    _plant(planted, rel, source)
    found = [(r, la, t) for r, _, la, t in _violations(planted)]
    assert (rel, layer, target) in found
    assert not _violations(planted, allowed={(rel, target)})  # the allow list lets it through


def test_a_planted_circle_fails(planted):
    """Two layers of one rank importing each other: the ranks allow it, the circle test not."""
    _plant(planted, "data/_io.py", "from ensemblevi.metrics import x")
    _plant(planted, "metrics/_counts.py", "from ensemblevi.nn import y")
    assert not _violations(planted)
    assert not _layer_circles(planted)  # data -> metrics -> nn: no circle yet
    _plant(planted, "nn/_base.py", "def f():\n    from ensemblevi.data import z")
    assert _layer_circles(planted) == [["data", "metrics", "nn"]]


def test_stale_allowances_are_reported(planted):
    """The allow-list test can fail: an entry for a fixed import or a short file is stale."""
    present = ("model/_ensemble_scvi.py", "model.base")  # an import that exists
    fixed = ("model/base/_vaemixin.py", "model")  # one that does not (any more)
    assert _stale_allowances(planted, {present}, set()) == []
    assert _stale_allowances(planted, {present, fixed}, set()) == [
        f"TEMPORARY_ALLOWED_IMPORTS: {fixed}"
    ]
    assert _stale_allowances(planted, set(), {"_version.py"}) == [
        "TEMPORARY_ALLOWED_LONG: _version.py"
    ]


@pytest.mark.parametrize(
    ("source", "where", "expected"),
    [
        ("from ensemblevi.tl import x", "model/_a.py", ["tl"]),
        ("from ..tl import x", "model/_a.py", ["tl"]),
        ("from ...tl._de import x", "model/base/_a.py", ["tl"]),
        ("from . import _de_core", "model/base/_a.py", ["model.base"]),
        ("from .base import x", "model/_a.py", ["model.base"]),
        ("from .._members import x", "model/base/_a.py", ["model"]),
        ("from ensemblevi.model import base, EnsembleSCVI", "tl/_a.py", ["model.base", "model"]),
        ("import ensemblevi.model.base._de_core", "tl/_a.py", ["model.base"]),
        ("import ensemblevi.pl._plots as p", "tl/_a.py", ["pl"]),
        ("from ensemblevi import model, __version__", "tl/_a.py", ["model", "__init__"]),
        ("import numpy\nfrom scvi import REGISTRY_KEYS", "model/_a.py", []),
        ("def f():\n    from ensemblevi.cli import app", "nn/_a.py", ["cli"]),
        ("from ._compat import x", "_seeding.py", ["_compat"]),
    ],
)
def test_imports_are_resolved_to_layers(tmp_path, source, where, expected):
    """The resolver on known snippets: absolute, relative, lazy and package imports."""
    root = tmp_path / "ensemblevi"
    path = root / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    assert [t for _, t in _imported_layers(path, root)] == expected
    layer = "model.base" if where.startswith("model/base/") else where.split("/")[0]
    assert _layer_of_path(path, root) == layer.removesuffix(".py")
