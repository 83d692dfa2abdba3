"""Calibration of predicted cell-type probabilities, and the ensemble's label uncertainty.

Written by hand (numpy): torchmetrics has an ECE but no classwise ECE, reliability
table or per-class report, and scvi-tools only logs torchmetrics' ECE during training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Bins of the expected calibration error and the reliability diagram (Guo et al. 2017).
N_BINS = 15

_EPS = 1e-12


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0)
    return -(p * np.log(p)).sum(-1)


def label_uncertainty_parts(member_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cell uncertainty of the ensemble's label, from each member's probabilities.

    Parameters
    ----------
    member_probs
        ``(K, n_cells, n_types)``: each member's label probabilities.

    Returns
    -------
    dict
        ``probabilities`` (the mixture, ``(n_cells, n_types)``), ``label`` (its argmax),
        ``confidence`` (its maximum), ``entropy`` (predictive entropy ``H[mean_k p_k]``),
        ``expected_entropy`` (``mean_k H[p_k]``), ``mutual_information`` (their
        difference: the members' disagreement, >= 0) and ``agreement`` (share of members
        whose most probable type is the mixture's), in nats.
    """
    p = np.asarray(member_probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"member_probs must be (members, cells, types), got shape {p.shape}.")
    mix = p.mean(0)
    label = mix.argmax(1)
    entropy = _entropy(mix)
    expected = _entropy(p).mean(0)
    return {
        "probabilities": mix,
        "label": label,
        "confidence": mix.max(1),
        "entropy": entropy,
        "expected_entropy": expected,
        # Jensen: >= 0 up to rounding, which would read as "negative disagreement"
        "mutual_information": np.maximum(entropy - expected, 0.0),
        "agreement": (p.argmax(2) == label[None, :]).mean(0),
    }


def _bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1]: ``[0, 1/n), ..., [(n-1)/n, 1]``."""
    return np.minimum((np.asarray(values) * n_bins).astype(int), n_bins - 1)


def reliability_table(probs: np.ndarray, y: np.ndarray, *, n_bins: int = N_BINS) -> pd.DataFrame:
    """Cells binned by the confidence of their predicted type: accuracy against confidence.

    Parameters
    ----------
    probs
        ``(n_cells, n_types)`` predicted probabilities.
    y
        True type codes ``(n_cells,)``.
    n_bins
        Equal-width confidence bins.

    Returns
    -------
    pandas.DataFrame
        One row per bin: ``low``, ``high``, ``n_cells``, ``confidence`` (mean), ``accuracy``
        (``NaN`` in empty bins).
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(float)
    b = _bin_index(conf, n_bins)
    n = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, conf, minlength=n_bins) / n
        acc = np.bincount(b, correct, minlength=n_bins) / n
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {
            "low": edges[:-1],
            "high": edges[1:],
            "n_cells": n,
            "confidence": mean_conf,
            "accuracy": acc,
        }
    )


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE: the cell-weighted mean gap between accuracy and confidence over the bins.

    Parameters
    ----------
    probs
        ``(n_cells, n_types)`` predicted probabilities.
    y
        True type codes.
    n_bins
        Equal-width confidence bins (15, as Guo et al. 2017).
    """
    table = reliability_table(probs, y, n_bins=n_bins)
    full = table[table["n_cells"] > 0]
    gap = (full["accuracy"] - full["confidence"]).abs()
    return float((full["n_cells"] * gap).sum() / max(int(table["n_cells"].sum()), 1))


def classwise_ece(
    probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS
) -> tuple[float, np.ndarray]:
    """Classwise ECE (Kull et al. 2019): each type's probability binned over all cells.

    Parameters
    ----------
    probs
        ``(n_cells, n_types)`` predicted probabilities.
    y
        True type codes.
    n_bins
        Equal-width bins of each type's probability.

    Returns
    -------
    tuple
        The mean over types, and each type's ECE ``(n_types,)``.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    n_cells, n_types = probs.shape
    per_type = np.zeros(n_types)
    for c in range(n_types):
        b = _bin_index(probs[:, c], n_bins)
        gap = np.abs(
            np.bincount(b, (y == c).astype(float), minlength=n_bins)
            - np.bincount(b, probs[:, c], minlength=n_bins)
        )
        per_type[c] = gap.sum() / max(n_cells, 1)
    return float(per_type.mean()), per_type


def label_calibration_metrics(
    probs: np.ndarray, y: np.ndarray, *, n_bins: int = N_BINS
) -> dict[str, float]:
    """Accuracy, NLL, Brier score, ECE and classwise ECE of predicted probabilities.

    Parameters
    ----------
    probs
        ``(n_cells, n_types)`` predicted probabilities (rows sum to 1).
    y
        True type codes ``(n_cells,)`` in ``range(n_types)``.
    n_bins
        Bins of the two ECEs.

    Returns
    -------
    dict
        ``n_cells``, ``accuracy``, ``nll`` (mean ``-log p(true type)``, nats), ``brier``
        (mean over cells of the squared error summed over types), ``ece``,
        ``classwise_ece`` and ``mean_confidence``.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y).astype(int)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(
            f"probs must be (cells, types) with one label per cell, got "
            f"{probs.shape} and {len(y)} labels."
        )
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError("Labels must be type codes in range(n_types).")
    onehot = np.eye(probs.shape[1])[y]
    p_true = probs[np.arange(len(y)), y]
    return {
        "n_cells": len(y),
        "accuracy": float((probs.argmax(1) == y).mean()) if len(y) else float("nan"),
        "nll": float(-np.log(np.clip(p_true, _EPS, 1.0)).mean()) if len(y) else float("nan"),
        "brier": float(((probs - onehot) ** 2).sum(1).mean()) if len(y) else float("nan"),
        "ece": expected_calibration_error(probs, y, n_bins),
        "classwise_ece": classwise_ece(probs, y, n_bins)[0],
        "mean_confidence": float(probs.max(1).mean()) if len(y) else float("nan"),
    }


def per_type_calibration(
    probs: np.ndarray, y: np.ndarray, types: list[str], n_bins: int = N_BINS
) -> pd.DataFrame:
    """Per cell type: how often it is found, how often a call of it is right, how confident.

    Parameters
    ----------
    probs
        ``(n_cells, n_types)`` predicted probabilities.
    y
        True type codes.
    types
        The types' names, in code order.
    n_bins
        Bins of the classwise ECE.

    Returns
    -------
    pandas.DataFrame
        One row per type: ``n_cells`` (true), ``recall``, ``n_predicted``, ``precision``,
        ``confidence`` (mean confidence of the cells predicted as the type),
        ``overconfidence`` (``confidence - precision``: positive when its calls are surer
        than they are right), ``classwise_ece`` (the type's term) and ``nll``.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y).astype(int)
    pred, conf = probs.argmax(1), probs.max(1)
    _, per = classwise_ece(probs, y, n_bins)
    rows = []
    for c, name in enumerate(types):
        true, called = y == c, pred == c
        p_true = np.clip(probs[true, c], _EPS, 1.0)
        rows.append(
            {
                "cell_type": name,
                "n_cells": int(true.sum()),
                "recall": float((pred[true] == c).mean()) if true.any() else np.nan,
                "n_predicted": int(called.sum()),
                "precision": float((y[called] == c).mean()) if called.any() else np.nan,
                "confidence": float(conf[called].mean()) if called.any() else np.nan,
                "classwise_ece": float(per[c]),
                "nll": float(-np.log(p_true).mean()) if true.any() else np.nan,
            }
        )
    table = pd.DataFrame(rows)
    table.insert(6, "overconfidence", table["confidence"] - table["precision"])
    return table


def confusion_table(y: np.ndarray, pred: np.ndarray, types: list[str]) -> pd.DataFrame:
    """Counts of true type (rows) against predicted type (columns).

    Parameters
    ----------
    y, pred
        True and predicted type codes; a predicted code of ``len(types)`` is a cell called
        unknown (a last column ``"unknown"``).
    types
        The types' names.

    Returns
    -------
    ``len(types) x (len(types) + 1)`` counts (``sklearn.metrics.confusion_matrix``; every
    type a row and a column, also when no cell has it).
    """
    from sklearn.metrics import confusion_matrix

    n = len(types)
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    counts = confusion_matrix(y, pred, labels=np.arange(n + 1))[:n]  # no true "unknown"
    return pd.DataFrame(
        counts,
        index=pd.Index(types, name="true"),
        columns=pd.Index([*types, "unknown"], name="predicted"),
    )


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities tempered after pooling: ``p_T proportional to p ** (1 / T)``.

    For one model this is temperature scaling of its logits (Guo et al. 2017); for an
    ensemble it scales the log of the members' mixture ("pool then calibrate", Rahaman &
    Thiery 2021). The most probable type never changes.

    Parameters
    ----------
    probs
        ``(n_cells, n_types)`` probabilities.
    temperature
        ``T > 0``; above 1 softens, below 1 sharpens.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    # the smallest positive double, not _EPS: a floor would distort tiny probabilities
    tiny = np.finfo(np.float64).tiny
    log_p = np.log(np.clip(np.asarray(probs, dtype=np.float64), tiny, 1.0)) / temperature
    log_p -= log_p.max(1, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the NLL of ``apply_temperature(probs, T)`` on labelled cells.

    A one-parameter fit (bounded search over ``log T`` in ``[-3, 3]``): fit it on labelled
    cells the classifier did not train on.

    Parameters
    ----------
    probs
        ``(n_cells, n_types)`` probabilities.
    y
        True type codes.

    Returns
    -------
    The temperature ``T`` that minimises the NLL of ``probs ** (1 / T)`` renormalised
    (``apply_temperature``); above 1 softens over-confident probabilities.
    """
    from scipy.optimize import minimize_scalar

    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y).astype(int)
    if not len(y):
        raise ValueError("fit_temperature needs labelled cells.")

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0)).mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))
