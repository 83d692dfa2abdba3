"""The posterior expected-FDR rule and the DE table built from LFC draws.

Shared by every ensemble estimand (:mod:`._de_core`'s ``population`` and ``cell_pairs``,
:mod:`._de_counts`' ``counts``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

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
        Posterior probability of a change, one per gene.
    target
        The FDR target, in ``(0, 1)``.
    """
    if not 0 < target < 1:
        raise ValueError(f"The FDR target must be in (0, 1), got {target}.")
    efdr, order = expected_fdr(proba_de)
    ranked = efdr[order]
    ok = np.flatnonzero(ranked <= target)
    calls = np.zeros(len(order), dtype=bool)
    if ok.size:
        calls[order[: ok[-1] + 1]] = True
    return calls


def summarise_lfc(
    draws: np.ndarray,
    delta: float,
    fdr_target: float,
    gene_names: Sequence[str],
    test_mode: Literal["two", "three"] = "two",
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
    """
    k, _, g = draws.shape
    pooled = draws.reshape(-1, g)

    def proba(x, axis):
        if test_mode == "two":
            return np.mean(np.abs(x) >= delta, axis=axis)
        return np.maximum(np.mean(x >= delta, axis=axis), np.mean(x < -delta, axis=axis))

    p = proba(pooled, 0)
    member_p = proba(draws, 1)  # (K, G)
    member_calls = np.stack([fdr_calls(m, fdr_target) for m in member_p]).sum(0)
    efdr, _ = expected_fdr(p)
    q = np.quantile(pooled, [0.025, 0.5, 0.975], axis=0)
    table = pd.DataFrame(
        {
            "proba_de": p,
            "proba_not_de": 1.0 - p,
            "bayes_factor": np.log(p + EPS) - np.log(1.0 - p + EPS),
            "lfc_mean": pooled.mean(0),
            "lfc_median": q[1],
            "lfc_std": pooled.std(0),
            "lfc_min": pooled.min(0),
            "lfc_max": pooled.max(0),
            "lfc_q2.5": q[0],
            "lfc_q97.5": q[2],
            "lfc_member_std": draws.mean(1).std(0) if k > 1 else np.zeros(g),
            "member_calls": member_calls.astype(int),
            "call_flips": (member_calls > 0) & (member_calls < k),
            "expected_fdr": efdr,
            f"is_de_fdr_{fdr_target:g}": fdr_calls(p, fdr_target),
        },
        index=pd.Index(gene_names, name="gene"),
    )
    return table
