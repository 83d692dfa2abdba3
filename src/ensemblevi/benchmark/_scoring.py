"""Scoring DE calls against ground truth: true FDR, TPR, FDR curves, ROC/PR areas.

A method is described by a score per gene (higher = more likely DE) and a rule that turns
an FDR target into calls together with the FDR the method itself expects of them:
Bayesian methods call by the posterior expected FDR (:func:`ensemblevi.tl.fdr_calls`) and
expect the mean ``1 - p`` of their calls; frequentist ones (Benjamini-Hochberg) call
``p_adj <= target`` and expect the target itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ensemblevi.model.base._de_calls import fdr_calls

TARGETS = (0.05, 0.1, 0.2)
#: FDR targets over which curves and the l1 distance are computed
GRID = np.round(np.arange(0.01, 0.3001, 0.01), 2)


@dataclass
class MethodResult:
    """One method's answer on one data set.

    Attributes
    ----------
    kind
        ``"bayes"`` (``values`` = posterior probability of DE) or ``"bh"`` (``values`` =
        Benjamini-Hochberg adjusted p-values).
    values
        One value per gene.
    mask
        With ``"bh"``: a call also requires ``mask`` (e.g. ``|LFC| >= delta``).
    """

    kind: str
    values: np.ndarray
    mask: np.ndarray | None = None

    @property
    def score(self) -> np.ndarray:
        """Higher = more likely DE (for ROC and precision-recall)."""
        v = np.asarray(self.values, dtype=np.float64)
        score = v if self.kind == "bayes" else -np.log10(np.clip(v, 1e-300, 1.0))
        if self.mask is not None:  # masked-out genes rank below every other gene
            score = np.where(self.mask, score, -1.0 - np.max(np.abs(score)))
        return score

    def calls(self, target: float) -> tuple[np.ndarray, float]:
        """Calls at ``target`` and the FDR the method expects of them.

        Parameters
        ----------
        target
            The FDR target (e.g. 0.05).
        """
        v = np.asarray(self.values, dtype=np.float64)
        if self.kind == "bayes":
            called = fdr_calls(v, target)
            expected = float(np.mean(1.0 - v[called])) if called.any() else 0.0
            return called, expected
        called = v <= target
        if self.mask is not None:
            called &= self.mask
        return called, float(target) if called.any() else 0.0


def true_fdr(called: np.ndarray, truth: np.ndarray) -> float:
    """False discoveries / discoveries (0 with no discoveries, as in Lopez et al.).

    Parameters
    ----------
    called
        Boolean calls per gene.
    truth
        Boolean ground truth per gene (DE or not).
    """
    n = int(called.sum())
    return float((called & ~truth).sum() / n) if n else 0.0


def tpr(called: np.ndarray, truth: np.ndarray) -> float:
    """True discoveries / DE genes.

    Parameters
    ----------
    called
        Boolean calls per gene.
    truth
        Boolean ground truth per gene (DE or not).
    """
    n = int(truth.sum())
    return float((called & truth).sum() / n) if n else float("nan")


def fdr_curve(result: MethodResult, truth: np.ndarray, grid=GRID) -> pd.DataFrame:
    """Per target: the expected and the true FDR of the calls, TPR and number of calls.

    Parameters
    ----------
    result
        The method's answer.
    truth
        Boolean ground truth per gene.
    grid
        FDR targets.
    """
    rows = []
    for t in grid:
        called, expected = result.calls(float(t))
        rows.append(
            {
                "target": float(t),
                "expected_fdr": expected,
                "true_fdr": true_fdr(called, truth),
                "tpr": tpr(called, truth),
                "n_calls": int(called.sum()),
            }
        )
    return pd.DataFrame(rows)


def score_method(result: MethodResult, truth: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC, FDR and TPR at :data:`TARGETS`, and the l1 FDR-curve distance.

    ``fdr_l1`` is the mean over :data:`GRID` of |expected - true FDR| of the calls made at
    each target: how far the method's own FDR estimate is from the truth.

    Parameters
    ----------
    result
        The method's answer.
    truth
        Boolean ground truth per gene.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = np.asarray(truth, dtype=bool)
    score = result.score
    out = {
        "auroc": float(roc_auc_score(truth, score)),
        "auprc": float(average_precision_score(truth, score)),
    }
    for t in TARGETS:
        called, _ = result.calls(t)
        out[f"fdr@{t:g}"] = true_fdr(called, truth)
        out[f"tpr@{t:g}"] = tpr(called, truth)
        out[f"calls@{t:g}"] = int(called.sum())
    curve = fdr_curve(result, truth)
    out["fdr_l1"] = float(np.mean(np.abs(curve["expected_fdr"] - curve["true_fdr"])))
    return out
