"""Write the tutorial notebooks (docs/tutorials/NN_*.ipynb) from the cell lists in _nb*.py.

    python docs/tutorials/_build_notebooks.py 03_new_sample      # one notebook, no outputs yet
    python docs/tutorials/_build_notebooks.py --force            # every notebook, outputs cleared
    python docs/tutorials/_build_notebooks.py --text 01_quickstart_pbmc3k   # markdown only

The notebooks are generated so that they share one set-up cell and one style (title, the
question, code, a reading of each output); executing them is run_tutorials.py's job, which
writes the outputs back into these files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _nb_cells import NOTEBOOKS  # noqa: E402

SETUP = '''\
import logging
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import ensemblevi as ev

# Lightning's start-up banner and one deprecation inside Lightning say nothing about the data.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*treespec.*")

%config InlineBackend.figure_format = 'png'
plt.rcParams["figure.dpi"] = 80
pd.set_option("display.precision", 3)
pd.set_option("display.width", 120)

# run_tutorials.py --quick sets this to check the notebooks in seconds; a reader leaves it unset.
QUICK = os.environ.get("EV_TUTORIAL_QUICK") == "1"


def shared_data(name):
    """The file `shared/data/<name>` in this folder or one above it (the project's data
    beside the clone), or None where it is absent."""
    for folder in [Path.cwd(), *Path.cwd().parents]:
        path = folder / "shared" / "data" / name
        if path.exists():
            return path
    return None


print("ensemblevi", ev.__version__, "| quick mode" if QUICK else "| full settings")'''


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    out = []
    for kind, text in cells:
        text = text.strip("\n")
        if kind == "setup":
            out.append(nbformat.v4.new_code_cell(SETUP))
        elif kind == "md":
            out.append(nbformat.v4.new_markdown_cell(text))
        elif kind == "code":
            out.append(nbformat.v4.new_code_cell(text))
        else:
            raise ValueError(f"{name}: unknown cell kind {kind!r}")
    for index, cell in enumerate(out):
        cell["id"] = f"{name[:2]}-{index:02d}"  # stable ids: rebuilding gives the same file
    nb.cells = out
    nbformat.validate(nb)
    return nb


def _has_outputs(path: Path) -> bool:
    if not path.exists():
        return False
    nb = nbformat.read(path, as_version=4)
    return any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


def _format(path: Path) -> None:
    # The project's formatter owns the code cells' layout (make test checks notebooks too).
    ruff = Path(sys.executable).parent / "ruff"
    if ruff.exists():
        subprocess.run([str(ruff), "format", "-q", str(path)], check=True)


def update_text(name: str, path: Path) -> None:
    """Replace the markdown cells of an executed notebook, keeping its code and outputs.

    Refused unless the code cells are those the builder would write: outputs must belong
    to the code shown beside them.
    """
    fresh_path = path.with_suffix(".rebuilt.ipynb")
    try:
        nbformat.write(build(name, NOTEBOOKS[name]), fresh_path)
        _format(fresh_path)
        fresh = nbformat.read(fresh_path, as_version=4)
    finally:
        fresh_path.unlink(missing_ok=True)
    old = nbformat.read(path, as_version=4)
    kinds = [(c.cell_type, c.source if c.cell_type == "code" else "") for c in old.cells]
    if kinds != [(c.cell_type, c.source if c.cell_type == "code" else "") for c in fresh.cells]:
        raise SystemExit(f"{path.name}: code cells changed; rebuild with --force and execute it")
    for cell, new in zip(old.cells, fresh.cells, strict=True):
        if cell.cell_type == "markdown":
            cell.source = new.source
    nbformat.write(old, path)


def main(argv: list[str]) -> int:
    force, text = "--force" in argv, "--text" in argv
    wanted = {a for a in argv if not a.startswith("--")} or set(NOTEBOOKS)
    for name in sorted(wanted):
        if name not in NOTEBOOKS:
            raise SystemExit(f"no notebook {name!r}; there are {sorted(NOTEBOOKS)}")
        path = HERE / f"{name}.ipynb"
        if text:
            update_text(name, path)
            print(f"updated the text of {name}.ipynb")
            continue
        # The committed notebooks carry minutes of executed outputs: clear them only on purpose.
        if _has_outputs(path) and not force:
            raise SystemExit(f"{path.name} holds executed outputs; pass --force to rebuild it")
        nbformat.write(build(name, NOTEBOOKS[name]), path)
        _format(path)
        print(f"wrote {name}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
