"""Marker gene sets: built-in ones, user files, and checking them against the data."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

MARKER_SETS: dict[str, dict[str, list[str]]] = {
    # Nine markers of three heart cell types, with the heart cell atlas' cell_type names.
    "heart": {
        "Fibroblast": ["DCN", "GSN", "PDGFRA"],
        "Smooth_muscle_cells": ["MYH11", "TAGLN", "ACTA2"],
        "Myeloid": ["CD14", "C1QA", "CD68"],
    },
    # The cell type labels of scanpy's PBMC 3k tutorial.
    "pbmc3k": {
        "CD14+ Monocytes": ["CD14", "LYZ"],
        "B cells": ["MS4A1", "CD79A"],
        "NK cells": ["NKG7", "GNLY"],
        "CD4 T cells": ["IL7R", "CD3E"],
        "CD8 T cells": ["CD8A"],
        "FCGR3A+ Monocytes": ["FCGR3A"],
        "Dendritic cells": ["FCER1A"],
        "Megakaryocytes": ["PPBP"],
    },
}


def load_markers(spec: str | Path | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """A marker set from a built-in name, a JSON/YAML file (``{group: [genes]}``) or a dict.

    Parameters
    ----------
    spec
        A name in :data:`MARKER_SETS`, a path to a ``.json``/``.yaml`` file mapping each
        group to its genes, or such a mapping.
    """
    if isinstance(spec, Mapping):
        return {str(k): [str(g) for g in v] for k, v in spec.items()}
    if str(spec) in MARKER_SETS:
        return {k: list(v) for k, v in MARKER_SETS[str(spec)].items()}
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"Unknown marker set {str(spec)!r} (--markers): use one of {sorted(MARKER_SETS)} "
            "or a JSON/YAML file mapping each group to its genes."
        )
    data = _read_marker_file(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(
            f"The marker file {path} (--markers) must map each group to a list of gene names, "
            'e.g. {"B cells": ["MS4A1", "CD79A"]}; it holds a '
            f"{type(data).__name__}{'' if not isinstance(data, dict) else ' with other values'}."
        )
    return load_markers(data)


def _read_marker_file(path: Path):
    """The parsed content of a JSON/YAML marker file, or a ``ValueError`` naming the file."""
    import yaml

    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    kind = "YAML" if yaml_file else "JSON"
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM from a Windows editor is fine
    except UnicodeDecodeError as err:
        raise ValueError(
            f"The marker file {path} (--markers) is not UTF-8 text ({err.reason} at byte "
            f"{err.start}; UTF-16 perhaps): save it as UTF-8 and pass it again."
        ) from None
    try:
        # safe_load: a YAML tag such as !!python/object is refused, never run
        return yaml.safe_load(text) if yaml_file else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(
            f"The marker file {path} (--markers) is not valid {kind}: "
            f"{' '.join(str(err).split())}. Fix it, or pass a built-in set "
            f"({', '.join(sorted(MARKER_SETS))}) or none."
        ) from None


def parse_marker_options(items: Sequence[str]) -> dict[str, list[str]]:
    """``TYPE=GENE,GENE`` strings (the CLI's ``--marker``) as a marker set.

    Parameters
    ----------
    items
        Strings ``TYPE=GENE,GENE``; a type given twice collects both lists.
    """
    out: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{item!r} is not TYPE=GENE,GENE (e.g. --marker B=MS4A1,CD79A).")
        group, genes = item.split("=", 1)
        out.setdefault(group.strip(), []).extend(g.strip() for g in genes.split(",") if g)
    return out


def check_markers(
    markers: Mapping[str, Sequence[str]],
    var_names: Sequence[str],
    groups: Sequence[str] | None = None,
) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """Split a marker set into the genes present and a table of what is missing and why.

    Returns the markers found in ``var_names`` and a DataFrame (``group``, ``gene``,
    ``problem``, ``close_matches``) of missing genes (with close names from the data) and
    of groups absent from ``groups`` (the values of the grouping column).

    Parameters
    ----------
    markers
        The marker set ``{group: [genes]}``.
    var_names
        The data's gene names.
    groups
        The values of the grouping column (``None``: groups are not checked).
    """
    names = pd.Index(var_names).astype(str)
    upper = {n.upper(): n for n in names}
    found: dict[str, list[str]] = {}
    rows = []
    for group, genes in markers.items():
        if groups is not None and group not in set(groups):
            close = difflib.get_close_matches(group, [str(g) for g in groups], n=3)
            rows.append((group, "", "group not in the data", ", ".join(close)))
            continue
        for gene in genes:
            if gene in names:
                found.setdefault(group, []).append(gene)
                continue
            close = [upper[gene.upper()]] if gene.upper() in upper else []
            close += difflib.get_close_matches(gene, list(names), n=3, cutoff=0.75)
            rows.append((group, gene, "gene not in the data", ", ".join(dict.fromkeys(close))))
    report = pd.DataFrame(rows, columns=["group", "gene", "problem", "close_matches"])
    return found, report


def data_markers(
    adata,
    groupby: str,
    *,
    layer: str | None = None,
    n_genes: int = 3,
    max_groups: int = 20,
) -> dict[str, list[str]]:
    """Each group's top marker genes, found in the data (for data without a marker set).

    A gene's score in a group is the difference of its mean ``log1p`` normalised
    expression (counts per 1e4) in the group and in all other cells; the ``n_genes``
    highest-scoring genes, each used for one group only, are the group's markers. Only
    the ``max_groups`` largest groups get markers, so that the spread figures stay legible.

    Parameters
    ----------
    adata
        The data (counts in ``layer``).
    groupby
        ``obs`` column of the groups.
    layer
        Layer of the counts (``None``: ``X``).
    n_genes
        Markers per group.
    max_groups
        Most groups given markers (the largest).
    """
    import numpy as np
    import scipy.sparse as sp

    counts = adata.X if layer is None else adata.layers[layer]
    counts = sp.csr_matrix(counts, dtype=np.float64)
    size = np.asarray(counts.sum(1)).ravel()
    norm = sp.diags(1e4 / np.maximum(size, 1)) @ counts
    norm.data = np.log1p(norm.data)
    labels = adata.obs[groupby].astype(str).to_numpy()
    total = np.asarray(norm.sum(0)).ravel()
    used: set[str] = set()
    out: dict[str, list[str]] = {}
    for group in pd.Series(labels).value_counts().index[:max_groups]:
        sel = labels == group
        inside = np.asarray(norm[sel].sum(0)).ravel()
        n_in, n_out = sel.sum(), max(len(sel) - sel.sum(), 1)
        score = inside / n_in - (total - inside) / n_out
        genes = [g for g in adata.var_names[np.argsort(-score, kind="stable")] if g not in used]
        if genes:  # with fewer genes than groups x n_genes, the last groups get none
            out[group] = [str(g) for g in genes[:n_genes]]
            used.update(out[group])
    return out
