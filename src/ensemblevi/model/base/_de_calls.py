"""The posterior expected-FDR rule and the one builder of every DE table.

:func:`de_table` makes the table of every path (the ensemble estimands, scvi-tools'
``change`` mode and the sample-aware test) and is the one place that applies the FDR rule
(:func:`fdr_calls`) to a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

EPS = 1e-8  # scvi-tools' guard in the Bayes factor's logs


def expected_fdr(proba_de: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior expected FDR of calling each gene and every gene more probably DE.

    Returns ``(efdr, order)``: ``efdr[g]`` is the mean of ``1 - p`` over the genes ranked at
    or above ``g`` (ranking by ``p`` descending, ties in input order), ``order`` the ranking.

    Parameters
    ----------
    proba_de
        Posterior probability of a change, one per gene.
    """
    p = np.asarray(proba_de, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(1.0 - p[order]) / np.arange(1, p.size + 1)
    efdr = np.empty_like(p)
    efdr[order] = cum
    return efdr, order


def fdr_calls(proba_de: np.ndarray, target: float) -> np.ndarray:
    """Boolean calls: the largest top-ranked set whose posterior expected FDR <= target.

    Parameters
    ----------
    proba_de
        Posterior probability of a change, one per gene; a 2-D array is one set of genes
        per row (e.g. one per member), each called on its own.
    target
        The FDR target, in ``(0, 1)``.
    """
    if not 0 < target < 1:
        raise ValueError(f"The FDR target must be in (0, 1), got {target}.")
    p = np.asarray(proba_de, dtype=np.float64)
    if p.ndim == 2:
        return np.stack([fdr_calls(row, target) for row in p]) if len(p) else p.astype(bool)
    efdr, order = expected_fdr(p)
    ok = np.flatnonzero(efdr[order] <= target)
    calls = np.zeros(len(order), dtype=bool)
    if ok.size:
        calls[order[: ok[-1] + 1]] = True
    return calls


def tail_proba(x: np.ndarray, delta: float, axis: int, test_mode: str = "two") -> np.ndarray:
    """``P(|LFC| >= delta)`` (``two``) or the larger one-sided tail (``three``) of draws.

    Parameters
    ----------
    x
        LFC draws.
    delta
        Smallest |LFC| that counts as a change.
    axis
        The draws' axis.
    test_mode
        ``"two"`` or ``"three"`` (scvi-tools' ``change`` default).
    """
    if test_mode == "two":
        return np.mean(np.abs(x) >= delta, axis=axis)
    return np.maximum(np.mean(x >= delta, axis=axis), np.mean(x < -delta, axis=axis))


def lfc_summary(pooled: np.ndarray) -> dict[str, np.ndarray]:
    """The LFC columns of a table from ``(N, G)`` posterior draws.

    Parameters
    ----------
    pooled
        Draws, pooled over members.
    """
    q = np.quantile(pooled, [0.025, 0.5, 0.975], axis=0)
    return {
        "lfc_mean": pooled.mean(0),
        "lfc_median": q[1],
        "lfc_std": pooled.std(0),
        "lfc_min": pooled.min(0),
        "lfc_max": pooled.max(0),
        "lfc_q2.5": q[0],
        "lfc_q97.5": q[2],
    }


def de_table(
    columns: dict[str, np.ndarray],
    gene_names: Sequence[str],
    fdr_target: float,
    *,
    proba_de: np.ndarray | None = None,
    member_proba: np.ndarray | None = None,
    padj: np.ndarray | None = None,
    trailing: dict[str, Any] | None = None,
    sort: Literal["proba", "pval", "scvi", "bayes_factor"] | None = "proba",
) -> pd.DataFrame:
    """A DE table, its calls at ``fdr_target`` and its row order: every path's builder.

    Bayesian results (``proba_de``) get ``proba_de``, ``proba_not_de`` and ``bayes_factor``
    first (unless ``columns`` has them: scvi-tools' own), then ``columns``, then (with
    ``member_proba``) ``member_calls``/``call_flips``, ``expected_fdr`` and
    ``is_de_fdr_<target>`` by the posterior expected FDR rule. Frequentist results
    (``padj``) get ``is_de_fdr_<target>`` = ``padj <= target`` after their ``padj``.

    Parameters
    ----------
    columns
        Per-gene columns, in order.
    gene_names
        The index.
    fdr_target
        The target of ``is_de_fdr_<target>``.
    proba_de
        Posterior probability of a change per gene.
    member_proba
        ``(K, G)``: each member's own probability (``member_calls``: members whose own
        rule calls the gene; ``call_flips``: called by some members, not all).
    padj
        Adjusted p-values (the sample path), instead of ``proba_de``.
    trailing
        Columns after the calls (per gene, or one value for all).
    sort
        ``"proba"``: ``proba_de`` descending, ties by ``|lfc_median|``; ``"pval"``:
        ``pval`` ascending, ties by ``|lfc|``; ``"scvi"``: scvi-tools' own sort by
        ``proba_de``; ``"bayes_factor"``: by it, descending (``vanilla``); ``None``: in
        ``gene_names`` order.
    """
    index = pd.Index(np.asarray(gene_names, dtype=str), name="gene")
    data: dict[str, np.ndarray] = {}
    column = f"is_de_fdr_{fdr_target:g}"
    if proba_de is not None:
        p = np.asarray(proba_de, dtype=np.float64)
        data["proba_de"] = p
        if "proba_not_de" not in columns:
            data["proba_not_de"] = 1.0 - p
        if "bayes_factor" not in columns:
            data["bayes_factor"] = np.log(p + EPS) - np.log(1.0 - p + EPS)
        data.update(columns)
        rows = p[None] if member_proba is None else np.vstack([p[None], member_proba])
        calls = fdr_calls(rows, fdr_target)  # the one use of the rule: pooled, then members
        if member_proba is not None:
            k = len(member_proba)
            n = calls[1:].sum(0)
            data["member_calls"] = n.astype(int)
            data["call_flips"] = (n > 0) & (n < k)
        data["expected_fdr"], _ = expected_fdr(p)
        data[column] = calls[0]
    else:
        data.update(columns)
        if padj is not None:
            data["padj"] = np.asarray(padj, dtype=np.float64)
            data[column] = data["padj"] <= fdr_target
    data.update(trailing or {})
    table = pd.DataFrame(data, index=index)
    if sort is None:
        return table
    if sort == "proba":
        order = np.lexsort((-np.abs(table["lfc_median"].to_numpy()), -table["proba_de"].to_numpy()))
        return table.iloc[order]
    if sort == "pval":
        order = np.lexsort((-np.abs(table["lfc"].to_numpy()), table["pval"].to_numpy()))
        return table.iloc[order]
    # scvi-tools' own sorts (ties in its default, unstable order), so one member gives its rows
    by = "proba_de" if sort == "scvi" else "bayes_factor"
    return table.sort_values(by=by, ascending=False)


def summarise_lfc(
    draws: np.ndarray,
    delta: float,
    fdr_target: float,
    gene_names: Sequence[str],
    test_mode: Literal["two", "three"] = "two",
    *,
    extra: dict[str, Any] | None = None,
    sort: bool = False,
) -> pd.DataFrame:
    """The DE table from LFC draws ``(K, N, G)`` (members x draws per member x genes).

    ``proba_de`` pools all members' draws; ``lfc_member_std`` is the standard deviation of
    the members' mean LFCs; ``member_calls`` counts the members whose own posterior calls the
    gene at the target, and ``call_flips`` marks genes some members call and others not.
    ``bayes_factor`` is scvi-tools' ``log(p / (1 - p))`` of ``proba_de``.

    Parameters
    ----------
    draws
        LFC draws, ``(K, N, G)``.
    delta
        Smallest |LFC| that counts as a change.
    fdr_target
        Target of the expected-FDR rule (column ``is_de_fdr_<target>``).
    gene_names
        The ``G`` gene names (the table's index).
    test_mode
        ``two``: ``P(|LFC| >= delta)``; ``three`` (scvi-tools' default in ``change`` mode):
        the larger of ``P(LFC >= delta)`` and ``P(LFC < -delta)``.
    extra
        Columns added after the calls (the call's scales, pseudocount, delta).
    sort
        Rows by ``proba_de`` then ``|lfc_median|`` (``False``: in ``gene_names`` order).
    """
    k, _, g = draws.shape
    pooled = draws.reshape(-1, g)
    columns = {
        **lfc_summary(pooled),
        "lfc_member_std": draws.mean(1).std(0) if k > 1 else np.zeros(g),
    }
    table = de_table(
        columns,
        gene_names,
        fdr_target,
        proba_de=tail_proba(pooled, delta, 0, test_mode),
        member_proba=tail_proba(draws, delta, 1, test_mode),
        trailing=extra,
        sort="proba" if sort else None,
    )
    return table
