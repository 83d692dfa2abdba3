"""The moderated test on per-sample log expression (limma's empirical Bayes, by hand).

Written by hand: limma (R) has no Python port in a well-kept library; scipy gives the
t and F distributions these use. Checked against scipy's t-tests (prior off) and a
float64 per-gene loop in ``tests/test_de_replicates.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats


def trigamma_inverse(x: np.ndarray) -> np.ndarray:
    """Solve ``trigamma(y) = x`` for ``y`` (Newton, as limma's ``trigammaInverse``).

    Parameters
    ----------
    x
        Positive values.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.where(x > 1e7, 1.0 / np.sqrt(np.maximum(x, 1e-300)), 0.5 + 1.0 / x)
    big = x < 1e-6
    for _ in range(50):
        tri = special.polygamma(1, y)
        dif = tri * (1.0 - tri / x) / special.polygamma(2, y)
        y = y + dif
        if np.all(-dif / y < 1e-8):
            break
    return np.where(big, 1.0 / x, y)


def _smooth(x: np.ndarray, e: np.ndarray, n_bins: int) -> np.ndarray:
    """A running-mean trend of ``e`` on ``x``: quantile-bin means, linearly interpolated."""
    if n_bins <= 1:
        return np.full_like(e, e.mean())
    edges = np.quantile(x, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    centres = np.array([x[which == b].mean() for b in range(n_bins) if np.any(which == b)])
    means = np.array([e[which == b].mean() for b in range(n_bins) if np.any(which == b)])
    return np.interp(x, centres, means)


def fit_f_dist(
    s2: np.ndarray, df: float, covariate: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """Prior df ``d0`` and prior variance ``s0^2`` of the genes' variances (Smyth 2004).

    ``s2 / s0^2 ~ F(df, d0)``: moments of ``log s2`` give both. With ``covariate`` (the
    mean log expression), the prior variance follows it (limma-trend), fitted as a
    quantile-bin trend of ``log s2``.

    Parameters
    ----------
    s2
        Per gene residual variance (``> 0``).
    df
        Their residual degrees of freedom.
    covariate
        Per gene covariate of the prior variance, or ``None`` (one prior).

    Returns
    -------
    ``d0`` (``inf`` when the variances are no more spread than sampling allows) and
    ``s0^2`` per gene.
    """
    s2 = np.maximum(np.asarray(s2, dtype=np.float64), 1e-12)
    g = s2.size
    e = np.log(s2) - special.digamma(df / 2) + np.log(df / 2)
    n_bins = 0 if covariate is None else int(min(10, g // 50))
    emean = np.full(g, e.mean()) if n_bins <= 1 else _smooth(np.asarray(covariate), e, n_bins)
    n_par = 1 if n_bins <= 1 else n_bins
    evar = np.sum((e - emean) ** 2) / max(g - n_par, 1) - special.polygamma(1, df / 2)
    if evar <= 0:
        return float("inf"), np.exp(emean)
    d0 = float(2 * trigamma_inverse(np.array(evar)))
    return d0, np.exp(emean + special.digamma(d0 / 2) - np.log(d0 / 2))


def moderated_test(
    lfc: np.ndarray,
    s2: np.ndarray,
    df: float,
    v: float,
    *,
    extra_var: np.ndarray | float = 0.0,
    prior: bool = True,
    covariate: np.ndarray | None = None,
    delta: float = 0.0,
) -> dict:
    """The moderated t-test of ``lfc`` (module docstring, step 4).

    Parameters
    ----------
    lfc
        Per gene estimate.
    s2
        Per gene residual variance, ``df`` degrees of freedom.
    df
        Residual degrees of freedom.
    v
        Unscaled variance of ``lfc`` (``1/n1 + 1/n2`` or ``1/n``).
    extra_var
        Added to ``lfc``'s variance after moderation (the members' disagreement).
    prior
        Shrink ``s2`` by empirical Bayes; ``False``: the ordinary t-test.
    covariate
        Per gene covariate of the prior (mean log expression), or ``None``.
    delta
        Test ``|lfc| > delta`` (TREAT) instead of ``lfc != 0``.

    Returns
    -------
    ``lfc``, ``se``, ``t``, ``df`` (per gene), ``pval``, ``s2_post``, ``d0``.
    """
    lfc = np.asarray(lfc, dtype=np.float64)
    s2 = np.asarray(s2, dtype=np.float64)
    if prior:
        d0, s0sq = fit_f_dist(s2, df, covariate)
        # limma caps the total df at the pooled residual df of all genes
        d0 = min(d0, df * (s2.size - 1))
        s2_post = (d0 * s0sq + df * s2) / (d0 + df)
    else:
        d0, s2_post = 0.0, s2
    se = np.sqrt(s2_post * v + extra_var)
    df_total = np.full(lfc.shape, df + d0)
    t = lfc / se
    if delta > 0:
        a = np.abs(lfc)
        pval = stats.t.sf((a - delta) / se, df_total) + stats.t.sf((a + delta) / se, df_total)
    else:
        pval = 2 * stats.t.sf(np.abs(t), df_total)
    return {
        "lfc": lfc,
        "se": se,
        "t": t,
        "df": df_total,
        "pval": np.minimum(pval, 1.0),
        "s2_post": s2_post,
        "d0": d0,
    }


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values.

    Parameters
    ----------
    p
        P-values.
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    order = np.argsort(p)
    adj = p[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adj, 1.0)
    return out


def design_stats(
    y1: np.ndarray, y2: np.ndarray, design: str
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """LFC, residual variance, df and unscaled variance of ``(..., units, genes)`` log values.

    Parameters
    ----------
    y1, y2
        Log expression of the units of each side (``paired``: row ``i`` of both is sample
        ``i``); leading axes (members) are kept.
    design
        ``"between"`` or ``"paired"``.
    """
    if design == "paired":
        d = y1 - y2
        n = d.shape[-2]
        return d.mean(-2), d.var(-2, ddof=1), float(n - 1), 1.0 / n
    n1, n2 = y1.shape[-2], y2.shape[-2]
    ss = ((y1 - y1.mean(-2, keepdims=True)) ** 2).sum(-2)
    ss = ss + ((y2 - y2.mean(-2, keepdims=True)) ** 2).sum(-2)
    df = float(n1 + n2 - 2)
    return y1.mean(-2) - y2.mean(-2), ss / df, df, 1.0 / n1 + 1.0 / n2


#: the p-value threshold above which Storey's estimator counts null genes
STOREY_LAMBDA = 0.5


def null_fraction(p: np.ndarray, lam: float = STOREY_LAMBDA) -> float:
    """Storey's (2002) estimate of the fraction of true nulls, ``#{p > lam} / ((1 - lam) m)``.

    Null p-values are uniform, so the share above ``lam`` over ``1 - lam`` estimates the
    null share (biased upwards by the changed genes' few large p-values: conservative).
    Capped at 1.

    Parameters
    ----------
    p
        P-values.
    lam
        The threshold.
    """
    p = np.asarray(p, dtype=np.float64)
    return float(min(1.0, np.mean(p > lam) / (1.0 - lam))) if p.size else 1.0


def adjust(p: np.ndarray, rule: str = "bh", *, n_min: int | None = None) -> np.ndarray:
    """Adjusted p-values: ``"bh"`` (Benjamini-Hochberg) or ``"storey"`` (BH times the
    estimated null fraction, :func:`null_fraction`).

    BH controls the FDR at ``pi0 * target``, so with 20% changed genes its true FDR sits
    near 0.8 of the target; Storey's adaptive rule targets the FDR itself.

    Parameters
    ----------
    p
        P-values.
    rule
        ``"bh"`` or ``"storey"``.
    n_min
        Replicates per side (unused by the rules; kept for the measurement scripts).
    """
    if rule == "bh":
        return bh(p)
    if rule == "storey":
        return np.minimum(bh(p) * null_fraction(p), 1.0)
    raise ValueError(f"rule must be 'bh' or 'storey', got {rule!r}.")
