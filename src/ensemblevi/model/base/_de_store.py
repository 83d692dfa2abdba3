"""Where a DE result goes: ``adata.uns[key]`` in scanpy's ``rank_genes_groups`` layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def store_de(
    adata: Any,
    tables: list[tuple[Any, pd.DataFrame]],
    key: str,
    groupby: str | None,
    settings: dict[str, Any],
) -> None:
    """Write DE tables to ``adata.uns[key]`` in scanpy's ``rank_genes_groups`` layout.

    Parameters
    ----------
    adata
        The AnnData the tables were computed on.
    tables
        ``(comparison, table)`` pairs (:class:`._de_groups.Comparison`, a table of
        :func:`ensemble_de` in its row order): one record field per comparison.
    key
        Key in ``adata.uns``.
    groupby
        The ``obs`` column of the groups (``None`` for ``idx1``/``idx2`` calls).
    settings
        The call's settings, kept under ``params`` (``estimand`` names the method).
    """
    comps = [c for c, _ in tables]
    fields = [c.name for c in comps]
    refs = {c.reference for c in comps}

    def rec(column, dtype, fn=None):
        values = [np.asarray(t[column] if fn is None else fn(t), dtype=dtype) for _, t in tables]
        return np.rec.fromarrays(values, names=fields)

    vanilla = settings["estimand"] == "scvi_vanilla"
    out = {
        "params": {
            "groupby": "idx1"
            if groupby is None and comps[0].group1 is None
            else groupby or "cell_type",
            "reference": "rest" if refs == {None} else ",".join(sorted(map(str, refs - {None}))),
            "method": f"ensemblevi_{settings['estimand']}",
            **settings,
            "n_cells1": [len(c.cells1) for c in comps] if len(comps) > 1 else len(comps[0].cells1),
            "n_cells2": [len(c.cells2) for c in comps] if len(comps) > 1 else len(comps[0].cells2),
        },
        "names": rec(None, "U64", lambda t: t.index.to_numpy(dtype=str)),
    }
    if settings["estimand"].startswith("samples_"):
        # the sample-aware test is frequentist: its own t, LFC, p-values and adjusted ones
        out["scores"] = rec("t", "float32")
        out["logfoldchanges"] = rec("lfc", "float32")
        out["pvals"] = rec("pval", "float64")
        out["pvals_adj"] = rec("padj", "float64")
    elif vanilla:
        out["scores"] = rec("bayes_factor", "float32")
        # a scale of 0 (a gene without counts on one side) would give an infinite LFC:
        # floor both at 1e-12 per unit library, far below any measurable expression
        out["logfoldchanges"] = rec(
            None,
            "float32",
            lambda t: np.log2(np.maximum(t["scale1"], 1e-12) / np.maximum(t["scale2"], 1e-12)),
        )
        # vanilla tests h1 > h2 with no FDR rule: proba_m2 is the posterior of the other side
        out["pvals"] = out["pvals_adj"] = rec("proba_m2", "float64")
    else:
        out["scores"] = rec("proba_de", "float32")
        out["logfoldchanges"] = rec("lfc_median", "float32")
        out["pvals"] = rec("proba_not_de", "float64")
        out["pvals_adj"] = rec("expected_fdr", "float64")
    out["table"] = pd.concat([t for _, t in tables]).reset_index()
    adata.uns[key] = out
