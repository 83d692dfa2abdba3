"""The committed tutorials, checked without executing them (run_tutorials.py executes them).

Each notebook must be valid nbformat, carry the outputs it was executed with (the docs
render them as committed), hold no error, and call ensemblevi only through its public API:
``ev.<package>.<name>`` with the names listed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

TUTORIALS = Path(__file__).resolve().parent.parent / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9]*.ipynb"))
MAX_BYTES = 1_500_000
#: tutorials whose answers are commands and tables, not figures
NO_FIGURE = {"07_scaling_up"}

PUBLIC = {
    "data": {
        "read",
        "validate_counts",
        "preprocess",
        "heart_cell_atlas",
        "synthetic",
        "synthetic_replicates",
        "digits",
    },
    "model": {"EnsembleSCVI", "EnsembleSCANVI", "ConvVAE"},
    "tl": {
        "uncertainty_analysis",
        "expression_spread",
        "gene_uncertainty",
        "cell_novelty",
        "group_novelty",
        "label_uncertainty",
        "label_calibration",
        "cluster_stability",
        "marker_stability",
        "neighbourhood_stability",
        "expression_umap",
        "member_umaps",
        "seed_ensemble",
        "sample_split",
        "differential_expression",
    },
    "pl": {
        "biological_spread",
        "model_spread",
        "gene_uncertainty",
        "calibration",
        "de_volcano",
        "group_novelty",
        "novelty_umap",
        "hyperparameter_trajectories",
        "label_calibration",
        "label_confusion",
        "cluster_stability",
        "stability_umap",
        "member_embeddings",
    },
    "metrics": {
        "predictive_calibration",
        "interval_coverage",
        "randomized_pit",
        "label_calibration_metrics",
        "reliability_table",
        "fit_temperature",
    },
}
TOP_LEVEL = {*PUBLIC, "__version__"}


def _code(cell) -> str:
    """A code cell's source with IPython magics and shell lines blanked, for ``ast``."""
    lines = cell.source.splitlines()
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def _private_uses(source: str) -> list[str]:
    """``ev.<pkg>.<name>`` and ``ensemblevi`` imports outside the public lists."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ensemblevi"):
            bad.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.startswith("ensemblevi.")]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "ev" and node.attr not in TOP_LEVEL:
                bad.append(f"ev.{node.attr}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "ev"
        ):
            package = node.value.attr
            if package in PUBLIC and node.attr not in PUBLIC[package]:
                bad.append(f"ev.{package}.{node.attr}")
    return bad


def test_the_seven_tutorials_are_there():
    names = [p.stem for p in NOTEBOOKS]
    assert len(names) == 7, names
    assert names[0].startswith("01_") and names[-1].startswith("07_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_and_small(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_was_executed_without_errors(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    unexecuted = [i for i, c in enumerate(code) if c.execution_count is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} were not executed"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: executed out of order"
    outputs = [o for c in code for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {[e.ename for e in errors]}"
    tracebacks = [o for o in outputs if o.output_type == "stream" and "Traceback" in o.text]
    assert not tracebacks, f"{path.name}: a traceback printed to a stream"
    assert outputs, f"{path.name}: no outputs"
    root = str(TUTORIALS.parent.parent)
    leaked = [o for o in outputs if o.output_type == "stream" and root in o.text]
    assert not leaked, f"{path.name}: this checkout's path in the outputs (run_tutorials tidies it)"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images or path.stem in NO_FIGURE, f"{path.name}: no figure among the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_only_the_public_api(path):
    nb = nbformat.read(path, as_version=4)
    bad = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            bad += [f"cell {index}: {use}" for use in _private_uses(_code(cell))]
    assert not bad, f"{path.name} reaches past the public API: {bad}"


def test_the_scan_catches_private_names():
    source = "import ensemblevi as ev\nev.tl.load_markers('x')\nev.pipeline.run_map()\n"
    source += "from ensemblevi.tl._de import fdr_calls\nev.data.read('f')\n"
    assert sorted(_private_uses(source)) == [
        "ev.pipeline",
        "ev.tl.load_markers",
        "from ensemblevi.tl._de import ...",
    ]
