"""CDFs of the count models and the calibration summaries computed from them.

For a count ``x`` and a predictive CDF ``F`` (of one distribution, or of an equal-weight
mixture: the average of its components' CDFs), the randomised PIT
``u = F(x - 1) + v (F(x) - F(x - 1))``, ``v ~ U(0, 1)``, is exactly uniform on [0, 1] when
``x`` is drawn from ``F`` (Czado, Gneiting & Held 2009). The central ``c`` predictive
interval covers ``x`` (randomised) when ``(1 - c)/2 <= u <= (1 + c)/2``, which happens
with probability exactly ``c`` under calibration. The non-randomised check, whether ``x``
lies in the smallest integer interval ``[q_(1-c)/2, q_(1+c)/2]``, is conservative for
counts (it covers at least ``c``; much more when most counts are 0) and is reported next to
it as ``interval``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import special

COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)


def count_cdf(
    x: np.ndarray,
    mu: np.ndarray,
    theta: np.ndarray | None = None,
    zi_logits: np.ndarray | None = None,
) -> np.ndarray:
    """``P(X <= x)`` of a Poisson (``theta=None``), negative binomial or ZINB count model.

    The parameterisation is scvi-tools': mean ``mu``, inverse dispersion ``theta``
    (variance ``mu + mu^2 / theta``), zero-inflation probability ``sigmoid(zi_logits)``.
    Arrays broadcast; ``x`` may be negative (CDF 0). Computed in float64 with the
    regularised incomplete beta / gamma functions.

    Parameters
    ----------
    x
        Counts (floored; negative values give 0).
    mu
        Means.
    theta
        Inverse dispersions (``None``: Poisson).
    zi_logits
        Logits of the zero-inflation probability (``None``: no zero inflation).
    """
    x = np.asarray(x, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    k = np.floor(x)
    safe_k = np.maximum(k, 0.0)
    if theta is None:
        cdf = special.gammaincc(safe_k + 1.0, mu)  # Poisson: Q(k + 1, mu)
    else:
        theta = np.asarray(theta, dtype=np.float64)
        cdf = special.betainc(theta, safe_k + 1.0, theta / (theta + mu))
    if zi_logits is not None:
        pi = special.expit(np.asarray(zi_logits, dtype=np.float64))
        cdf = pi + (1.0 - pi) * cdf
    return np.where(k < 0, 0.0, cdf)


def randomized_pit(
    x: np.ndarray,
    mu: np.ndarray,
    theta: np.ndarray | None = None,
    zi_logits: np.ndarray | None = None,
    *,
    mixture_axes: int = 0,
    rng: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """Randomised PIT of counts ``x`` under a (mixture) count predictive distribution.

    ``mu``, ``theta``, ``zi_logits`` have ``mixture_axes`` leading axes of equally weighted
    components (e.g. 2 for latent samples x members) followed by ``x``'s shape; the mixture
    CDF is the mean of the components' CDFs. Returns float64 values in [0, 1], shaped like
    ``x``.

    Parameters
    ----------
    x
        Non-negative integer counts.
    mu, theta, zi_logits
        The components' parameters, as in :func:`count_cdf`.
    mixture_axes
        Number of leading component axes of the parameters.
    rng
        Generator or seed of the uniform randomisation.

    Returns
    -------
    The randomised PIT of each count, shaped as ``x`` (uniform on (0, 1) when ``x`` comes
    from the predictive).
    """
    x = np.asarray(x)
    if not np.all(np.isfinite(x)) or np.any(x < 0) or np.any(x != np.round(x)):
        raise ValueError("randomized_pit needs non-negative integer counts x.")
    axes = tuple(range(mixture_axes))
    upper = count_cdf(x, mu, theta, zi_logits).mean(axis=axes)
    lower = count_cdf(x - 1, mu, theta, zi_logits).mean(axis=axes)
    return randomize(lower, upper, np.random.default_rng(rng).random(np.shape(upper)))


def randomize(lower: np.ndarray, upper: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The randomised PIT ``F(x - 1) + v (F(x) - F(x - 1))`` from the two CDF values.

    Parameters
    ----------
    lower, upper
        ``F(x - 1)`` and ``F(x)``.
    v
        Uniform draws on [0, 1], shaped like ``lower``.
    """
    return np.clip(lower + v * (upper - lower), 0.0, 1.0)


def interval_coverage(
    pit: np.ndarray,
    *,
    levels: Sequence[float] = COVERAGE_LEVELS,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> pd.DataFrame:
    """Coverage of central predictive intervals, one row per nominal level.

    ``randomized``: the share of randomised PIT values in ``[(1 - c)/2, (1 + c)/2]``
    (exactly ``c`` under calibration). With ``lower = F(x - 1)`` and ``upper = F(x)``, also
    ``interval``: the share of counts inside the integer interval between the
    ``(1 - c)/2`` and ``(1 + c)/2`` quantiles, i.e. ``F(x) >= (1 - c)/2`` and
    ``F(x - 1) < (1 + c)/2`` (at least ``c`` under calibration, for discrete data).

    Parameters
    ----------
    pit
        Randomised PIT values.
    levels
        Nominal levels ``c`` in (0, 1).
    lower, upper
        Optional ``F(x - 1)`` and ``F(x)`` of the same counts, for ``interval``.

    Returns
    -------
    Indexed by ``level``: ``randomized`` and, with ``lower``/``upper``, ``interval``,
    each also minus the level (``randomized - nominal``, ``interval - nominal``).
    """
    pit = np.asarray(pit, dtype=np.float64).ravel()
    if pit.size == 0:
        raise ValueError("interval_coverage needs at least one PIT value.")
    rows = []
    for c in levels:
        if not 0 < c < 1:
            raise ValueError(f"Coverage levels must be in (0, 1), got {c}.")
        lo, hi = (1 - c) / 2, (1 + c) / 2
        row = {"level": float(c), "randomized": float(np.mean((pit >= lo) & (pit <= hi)))}
        if lower is not None and upper is not None:
            lower_, upper_ = (np.asarray(a, dtype=np.float64).ravel() for a in (lower, upper))
            row["interval"] = float(np.mean((upper_ >= lo) & (lower_ < hi)))
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("level")
    for col in ("randomized", "interval"):
        if col in frame:
            frame[f"{col} - nominal"] = frame[col] - frame.index.to_numpy()
    return frame


def pit_uniformity(pit: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """How far PIT values are from uniform: histogram and Kolmogorov-Smirnov distances.

    ``hist_l1``: half the l1 distance between the ``n_bins`` bin frequencies and ``1/n_bins``
    (0: uniform, 1: all in one bin); ``ks``: sup-distance of the empirical CDF from the
    identity; ``mean`` (0.5 when unbiased; above: the model predicts too low) and ``var``
    (1/12 when the spread is right; above: over-confident, below: under-confident).

    Parameters
    ----------
    pit
        PIT values.
    n_bins
        Bins of the histogram distance.
    """
    pit = np.asarray(pit, dtype=np.float64).ravel()
    if pit.size == 0:
        raise ValueError("pit_uniformity needs at least one PIT value.")
    freq = np.histogram(pit, bins=n_bins, range=(0.0, 1.0))[0] / pit.size
    s = np.sort(pit)
    n = s.size
    ks = max(np.max(np.arange(1, n + 1) / n - s), np.max(s - np.arange(n) / n))
    return {
        "hist_l1": float(0.5 * np.abs(freq - 1.0 / n_bins).sum()),
        "ks": float(ks),
        "mean": float(pit.mean()),
        "var": float(pit.var()),
    }
