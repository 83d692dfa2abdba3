"""The thresholds of the novelty and ``unknown`` rules, and the rate measured on the cells
that set them.

A threshold is a conformal quantile of calibration cells' scores (:func:`conformal_threshold`);
with whole samples the model did not train on as calibration cells, the largest of the
samples' own (:func:`rule_threshold`), because the rate is stated for a new sample. The
flagged share of the calibration cells, each against a threshold it did not set
(:func:`cross_fit_flags`), is the rate measured. Written by hand: scikit-learn and
scvi-tools have no conformal threshold, let alone one by sample.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def conformal_threshold(reference: np.ndarray, alpha: float) -> tuple[float, bool]:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``reference``, and whether it exists.

    A new score exchangeable with the ``n`` reference scores exceeds it with probability at
    most ``alpha``. With fewer than ``1 / alpha - 1`` reference scores that rank is past the
    largest: the largest is returned with ``False`` (the rate is then not guaranteed).

    Parameters
    ----------
    reference
        Scores of cells like the training data that the model did not train on.
    alpha
        Target false-positive rate.
    """
    values = np.sort(np.asarray(reference, dtype=np.float64))
    rank = math.ceil((len(values) + 1) * (1 - alpha))
    return float(values[min(rank, len(values)) - 1]), rank <= len(values)


#: :func:`threshold_rule` of a pooled threshold (one sample, or none known)
POOLED_RULE = "the conformal (1 - alpha) threshold of the calibration cells"


def rule_threshold(
    reference: np.ndarray, alpha: float, samples: np.ndarray | None = None
) -> tuple[float, bool]:
    """The threshold a rule flags above: the conformal threshold of the calibration cells, or
    with two or more calibration samples, the largest of the samples' own.

    A new sample, not a new cell, is what a user brings: its known cells differ from every
    calibration cell by that sample's effects, so the rate it sees is its own sample's, not
    the calibration cells' pooled rate. The pooled threshold holds alpha for a cell drawn
    from the calibration samples together, and a new sample like the one of them with the
    higher scores is flagged more often than alpha (issue 35: on the simulator's
    development seeds, ``benchmarks/bench_novelty_candidates.py --thresholds``, 100 epochs,
    the pooled threshold flagged 6.2-6.5% of a new sample's known cells on average and up
    to 10.3%; this one 5.0-5.4%, up to 8.0%). With ``n`` calibration samples
    exchangeable with the new one, the new sample's own ``1 - alpha`` threshold exceeds the
    largest of theirs with probability at most ``1 / (n + 1)``: only then is its rate above
    alpha. No library sets a threshold by sample; it is a maximum over
    :func:`conformal_threshold`.

    Parameters
    ----------
    reference
        Scores of the calibration cells.
    alpha
        Target false-positive rate.
    samples
        Sample of each calibration cell where they are samples the model did not train on
        (``NoveltyReference.fold_samples`` of :mod:`ensemblevi.tl._novelty_rule`); ``None``
        or one sample: the pooled threshold.

    Returns
    -------
    The threshold, and whether every threshold it is the largest of exists
    (:func:`conformal_threshold`).
    """
    if samples is None or len(names := pd.unique(np.asarray(samples))) < 2:
        return conformal_threshold(reference, alpha)
    reference, samples = np.asarray(reference, dtype=np.float64), np.asarray(samples)
    each = [conformal_threshold(reference[samples == name], alpha) for name in names]
    return max(t for t, _ in each), all(ok for _, ok in each)


def threshold_rule(samples: np.ndarray | None) -> str:
    """How :func:`rule_threshold` sets a threshold from these calibration samples, for ``uns``.

    Parameters
    ----------
    samples
        As in :func:`rule_threshold`.
    """
    if samples is None or (n := len(pd.unique(np.asarray(samples)))) < 2:
        return POOLED_RULE
    return (
        f"the largest of the {n} calibration samples' own conformal (1 - alpha) thresholds: "
        f"a new sample like them is flagged more often than alpha with probability at most "
        f"1/{n + 1}"
    )


def cross_fit_flags(
    values: np.ndarray, alpha: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, dict]:
    """Flags of calibration cells, each tested against a threshold it did not set.

    A calibration cell set the threshold it would be tested against, so it is tested
    against a threshold from other calibration cells instead, and the flagged share is an
    honest estimate of the rule's false-positive rate. Without ``groups`` (or with one),
    each half of the cells against the other half's threshold (the rate for new cells like
    them); with two or more ``groups`` (samples), each group's cells against the threshold
    :func:`rule_threshold` sets on the other groups (the rate for a new sample).

    Parameters
    ----------
    values
        The calibration cells' scores.
    alpha
        Target false-positive rate.
    seed
        Seed of the split into halves.
    groups
        Sample of each calibration cell, or ``None``.
    """
    values = np.asarray(values, dtype=np.float64)
    flags = np.zeros(len(values), dtype=bool)
    if groups is not None and len(names := pd.unique(np.asarray(groups))) >= 2:
        groups = np.asarray(groups)
        for g in names:
            this = groups == g
            threshold, _ = rule_threshold(values[~this], alpha, groups[~this])
            flags[this] = values[this] > threshold
        return flags, {
            "fpr_measured_on": f"each of {len(names)} held-out samples against "
            "a threshold from the others (leave-one-sample-out)"
        }
    perm = np.random.default_rng(seed).permutation(len(values))
    halves = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    for this, other in (halves, halves[::-1]):
        threshold, _ = conformal_threshold(values[other], alpha)
        flags[this] = values[this] > threshold
    on = "halves of the calibration cells, each against the other's threshold" + (
        " (one held-out sample: not across samples)" if groups is not None else ""
    )
    return flags, {"halves": [len(h) for h in halves], "fpr_measured_on": on}
