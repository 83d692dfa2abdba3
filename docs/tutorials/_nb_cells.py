"""The tutorials' cells, one module per notebook: ``CELLS`` is a list of (kind, text)."""

from __future__ import annotations

import importlib

NAMES = [
    "01_quickstart_pbmc3k",
    "02_seeds_vs_ensemble",
    "03_new_sample",
    "04_de_replicates",
    "05_label_transfer",
    "06_clusters",
    "07_scaling_up",
]

NOTEBOOKS = {}
for _name in NAMES:
    try:
        NOTEBOOKS[_name] = importlib.import_module(f"_nb{_name[:2]}").CELLS
    except ModuleNotFoundError:
        pass
