"""The default DE estimand, ``counts``: the groups' mean normalised counts, calibrated by
empirical Bayes within strata of the ensemble's answer.

Why (``docs/de_diagnosis.md``): on every simulator preset and on PBMC binomial thinning
the ensemble's own LFC of a gene is off the true normalised LFC by a per-gene error with a
standard deviation of 0.17-0.39 log2 units, 2-5 times its posterior's, and the members
share that error (correlation 0.7-0.97 between members' errors), so the members' spread
cannot reveal it and a 5% rule on the model's posterior alone called 12-80% false genes.
The counts' own group means carry an error their sampling variance describes. So this
estimand takes each gene's LFC from the counts and uses the ensemble to *rank*, which it
does well: genes are split into strata by the ensemble's posterior probability of a
change, and within each stratum the distribution of true LFCs is estimated from all the
stratum's genes (an adaptive-shrinkage prior, Stephens 2017, *Biostatistics* 18:275).
Noise that would pass for a change in one gene is shrunk by what the other genes of its
stratum show; genes the ensemble finds changed get a prior that admits large changes.

Per comparison (``group1`` against ``group2``; every cell of each side, no subsample):

1. Counts per 10,000 of each cell's total, ``y``; per gene and side the mean ``m_i`` and
   the quasi-Poisson unit ``u = s_w^2 / m_pool`` (``s_w^2`` the pooled within-side
   variance, ``m_pool`` the pooled mean: the normalised amount one effective count is
   worth; ``1e4 / library`` for Poisson counts, more for overdispersed ones).
2. Each side's mean has the posterior ``Gamma(n_i m_i / u + a0, n_i / u + a0 / m_pool)``
   (``a0 = 0.5`` effective counts at the pooled mean, so a side without counts keeps the
   uncertainty of half a count instead of none); the LFC ``log2(rate_1 + c) -
   log2(rate_2 + c)`` of its draws has median ``r`` and variance ``v``, the gene's
   likelihood ``r ~ N(theta, v)``.
3. Strata of the ensemble's ``P(|LFC| >= delta)`` on the ``population`` estimand:
   ``[0, 0.5)``, ``[0.5, 0.95)``, ``[0.95, 1]`` (:data:`STRATA`); a stratum of fewer than
   :data:`MIN_STRATUM` genes joins its neighbour.
4. Per stratum the prior ``theta ~ sum_k pi_k N(0, s_k^2)`` on the grid :data:`GRID`,
   ``pi`` maximising the marginal likelihood by EM with ash's null-biased penalty
   (:data:`NULL_WEIGHT` on ``s = 0``).
5. Posterior draws of ``theta`` (a mixture of normals per gene); ``proba_de`` is
   ``P(|theta| >= delta)``.

The estimand is the log2 ratio of the groups' mean normalised expression (with the
pseudocount): what counts identify. It is not batch-corrected: the groups' means mix
batch into group when the groups' batch compositions differ, which
:func:`batch_imbalance` measures (``ensemble_de`` warns above :data:`MAX_BATCH_TVD`).

Written by hand: ashr (the reference implementation) is R only and no maintained Python
package fits its scale-mixture prior; the EM is a few lines of numpy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats
from scvi import REGISTRY_KEYS

from ensemblevi.model.base._de_prior import (
    GRID,
    fit_scale_mixture,
    mixture_posterior,
    posterior_draws,
)

from ._de_calls import de_table, lfc_summary

#: upper edges of the strata of the ensemble's P(|LFC| >= delta)
STRATA = (0.5, 0.95)
#: fewest genes a stratum fits its prior on (smaller ones join a neighbour)
MIN_STRATUM = 50
#: effective counts of the Gamma prior at the pooled mean
PRIOR_COUNTS = 0.5
#: warn when the total variation distance of the two sides' batch mixes exceeds this
MAX_BATCH_TVD = 0.2
LIBRARY_SIZE = 1e4
#: Gamma draws per gene behind the counts' LFC median and variance
GAMMA_DRAWS = 1000
#: posterior draws per gene behind the table's LFC summaries (quantiles, min, max)
POSTERIOR_DRAWS = 400


@dataclass
class CountMeans:
    """Per gene: each side's mean normalised counts and the quasi-Poisson unit.

    Attributes
    ----------
    mean1, mean2
        Each side's mean over its cells of counts per ``LIBRARY_SIZE`` of each cell's
        total (batch-standardised: a weighted mean of its per-batch means).
    n1, n2
        Effective cells per side: ``n`` unweighted, ``1 / sum_b w_b^2 / n_b`` with batch
        weights ``w_b``.
    unit
        Normalised amount one effective count is worth (pooled within-side variance over
        the pooled mean; 1 where a gene has no counts).
    """

    mean1: np.ndarray
    mean2: np.ndarray
    n1: float
    n2: float
    unit: np.ndarray

    @property
    def pooled(self) -> np.ndarray:
        """Mean of both sides, weighted by their effective cells."""
        return (self.n1 * self.mean1 + self.n2 * self.mean2) / (self.n1 + self.n2)


def normalised_counts(counts: Any) -> sparse.csr_matrix:
    """Counts per ``LIBRARY_SIZE`` of each cell's total (CSR; cells without counts stay 0).

    Parameters
    ----------
    counts
        Cells x genes counts (dense or sparse).
    """
    x = sparse.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(LIBRARY_SIZE, totals, out=np.zeros_like(totals), where=totals > 0)
    return sparse.csr_matrix(sparse.diags(scale) @ x)


def count_means(
    normalised: sparse.csr_matrix,
    cells1: np.ndarray,
    cells2: np.ndarray,
    batch: np.ndarray | None = None,
) -> CountMeans:
    """Step 1 of the module docstring.

    With ``batch``, each side's mean is standardised to one batch mix: the mean over the
    batches that both sides have of the side's per-batch means, weighted by the batch's
    share of both sides' cells (direct standardisation; batches that one side lacks are
    left out, so those cells do not count).

    Parameters
    ----------
    normalised
        :func:`normalised_counts` of every cell.
    cells1, cells2
        Cell positions of the two sides (at least 2 cells each).
    batch
        Per cell (of ``normalised``), its batch; ``None``: no standardisation.
    """
    if len(cells1) < 2 or len(cells2) < 2:
        raise ValueError(
            f"The counts estimand needs >= 2 cells per side, got {len(cells1)} and {len(cells2)}."
        )
    if batch is None:
        groups = [(np.asarray(cells1), np.asarray(cells2))]
    else:
        b1, b2 = batch[cells1], batch[cells2]
        groups = [(cells1[b1 == b], cells2[b2 == b]) for b in np.intersect1d(b1, b2)]
        groups = [(c1, c2) for c1, c2 in groups if len(c1) and len(c2)]
        if not groups:
            raise ValueError(
                "The two sides share no batch, so batch_correction cannot "
                "standardise the counts' means; compare within batches or "
                "use estimand='population'."
            )
    sizes = np.array([len(c1) + len(c2) for c1, c2 in groups], dtype=float)
    weights = sizes / sizes.sum()
    g = normalised.shape[1]
    mean = [np.zeros(g), np.zeros(g)]
    inv_n = [0.0, 0.0]
    ss, dof, total, count = np.zeros(g), 0, np.zeros(g), 0
    for w, pair in zip(weights, groups, strict=True):
        for i, cells in enumerate(pair):
            part = normalised[cells]
            m = np.asarray(part.mean(axis=0)).ravel()
            sq = np.asarray(part.multiply(part).mean(axis=0)).ravel()
            mean[i] += w * m
            inv_n[i] += w**2 / len(cells)
            ss += np.maximum(sq - m**2, 0.0) * len(cells)
            dof += len(cells) - 1
            total += m * len(cells)
            count += len(cells)
    pooled = total / count
    within = ss / max(dof, 1)
    unit = np.ones(g)
    np.divide(within, pooled, out=unit, where=(pooled > 0) & (within > 0))
    return CountMeans(mean[0], mean[1], 1.0 / inv_n[0], 1.0 / inv_n[1], unit)


def gamma_lfc(
    means: CountMeans,
    n_draws: int,
    rng: np.random.Generator,
    pseudocount: float = 0.1,
    prior_counts: float = PRIOR_COUNTS,
) -> np.ndarray:
    """Step 2: ``(n_draws, G)`` LFC draws of the sides' Gamma posteriors.

    Parameters
    ----------
    means
        :func:`count_means` of the comparison.
    n_draws
        Draws per gene.
    rng
        Random generator.
    pseudocount
        ``c`` per ``LIBRARY_SIZE``, added before the log2.
    prior_counts
        ``a0``, the Gamma prior's effective counts at the pooled mean.
    """
    pooled = means.pooled
    prior_rate = prior_counts / np.maximum(pooled, np.finfo(float).tiny)
    sides = []
    for m, n in ((means.mean1, means.n1), (means.mean2, means.n2)):
        shape = n * m / means.unit + prior_counts
        rate = n / means.unit + prior_rate
        sides.append(rng.standard_gamma(shape, size=(n_draws, m.size)) / rate)
    return np.log2(sides[0] + pseudocount) - np.log2(sides[1] + pseudocount)


def strata_of(
    proba: np.ndarray, edges: tuple[float, ...] = STRATA, min_size: int = MIN_STRATUM
) -> np.ndarray:
    """Step 3: stratum index per gene; strata of fewer than ``min_size`` genes join the
    neighbour below (the lowest one joins the one above), renumbered from 0.

    Parameters
    ----------
    proba
        The ensemble's ``P(|LFC| >= delta)`` per gene.
    edges
        Upper edges of all but the last stratum.
    min_size
        Fewest genes a stratum keeps.
    """
    s = np.searchsorted(np.asarray(edges), proba, side="right")
    labels = list(range(len(edges) + 1))
    while len(labels) > 1:
        sizes = [(s == k).sum() for k in labels]
        small = [i for i, n in enumerate(sizes) if n < min_size]
        if not small:
            break
        i = small[0]
        j = i - 1 if i > 0 else 1
        s[s == labels[i]] = labels[j]
        labels.pop(i)
    return np.searchsorted(np.array(labels), s)


def gamma_lfc_moments(
    means: CountMeans,
    n_draws: int,
    rng: np.random.Generator,
    pseudocount: float = 0.1,
    chunk: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Median and variance per gene of :func:`gamma_lfc`'s draws, ``chunk`` genes at a time
    (so that atlas-sized gene sets stay small in memory).

    Parameters
    ----------
    means
        :func:`count_means` of the comparison.
    n_draws
        Draws per gene.
    rng
        Random generator.
    pseudocount
        ``c`` per ``LIBRARY_SIZE``.
    chunk
        Genes per block.
    """
    g = means.mean1.size
    r, v = np.empty(g), np.empty(g)
    for start in range(0, g, chunk):
        sl = slice(start, min(start + chunk, g))
        part = CountMeans(means.mean1[sl], means.mean2[sl], means.n1, means.n2, means.unit[sl])
        lfc = gamma_lfc(part, n_draws, rng, pseudocount)
        r[sl], v[sl] = np.median(lfc, axis=0), lfc.var(axis=0)
    return r, np.maximum(v, 1e-12)


def eb_draws(
    r: np.ndarray,
    v: np.ndarray,
    strata: np.ndarray,
    n_draws: int,
    rng: np.random.Generator,
    grid: np.ndarray = GRID,
) -> np.ndarray:
    """Steps 4-5: posterior draws ``(n_draws, G)`` of ``theta``, stratum by stratum.

    Parameters
    ----------
    r, v
        The counts' LFC and its variance per gene (:func:`gamma_lfc_moments`).
    strata
        :func:`strata_of` per gene.
    n_draws
        Posterior draws per gene.
    rng
        Random generator.
    grid
        Prior standard deviations.
    """
    out = np.empty((n_draws, r.size))
    for k in np.unique(strata):
        sel = strata == k
        pi = fit_scale_mixture(r[sel], v[sel], grid)
        out[:, sel] = posterior_draws(*mixture_posterior(r[sel], v[sel], pi, grid), n_draws, rng)
    return out


def batch_imbalance(adata_manager: Any, cells1: np.ndarray, cells2: np.ndarray) -> float:
    """Total variation distance between the two sides' batch mixes (0: the same mix).

    Parameters
    ----------
    adata_manager
        The AnnData's manager (its batch registry).
    cells1, cells2
        Cell positions of the two sides.
    """
    batch = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
    cats = np.unique(batch)
    if cats.size < 2:
        return 0.0
    f1 = np.array([np.mean(batch[cells1] == c) for c in cats])
    f2 = np.array([np.mean(batch[cells2] == c) for c in cats])
    return float(0.5 * np.abs(f1 - f2).sum())


def warn_batch_imbalance(adata_manager: Any, cells1: np.ndarray, cells2: np.ndarray) -> None:
    """Warn when the sides' batch mixes differ by more than :data:`MAX_BATCH_TVD`.

    Parameters
    ----------
    adata_manager, cells1, cells2
        As in :func:`batch_imbalance`.
    """
    tvd = batch_imbalance(adata_manager, cells1, cells2)
    if tvd > MAX_BATCH_TVD:
        warnings.warn(
            f"The two sides' batch mixes differ (total variation distance {tvd:.2f} > "
            f"{MAX_BATCH_TVD}), so the counts' group means mix batch into group; pass "
            "batch_correction=True to standardise them to one batch mix.",
            UserWarning,
            stacklevel=4,
        )


def tail_probability(
    w: np.ndarray, mu: np.ndarray, sd: np.ndarray, delta: float, test_mode: str = "two"
) -> np.ndarray:
    """Per gene, the mixture posterior's ``P(|theta| >= delta)`` (``test_mode="two"``) or
    the larger of ``P(theta >= delta)`` and ``P(theta < -delta)`` (``"three"``), in closed
    form (no Monte Carlo error).

    Parameters
    ----------
    w, mu, sd
        ``(G, K)`` component weights, means and standard deviations
        (:func:`mixture_posterior`; ``sd = 0`` is a point mass).
    delta
        Smallest |LFC| that counts as a change.
    test_mode
        ``"two"`` or ``"three"``.
    """
    safe = np.where(sd > 0, sd, 1.0)
    up = np.where(sd > 0, stats.norm.sf((delta - mu) / safe), (mu >= delta).astype(float))
    down = np.where(sd > 0, stats.norm.cdf((-delta - mu) / safe), (mu < -delta).astype(float))
    up, down = (w * up).sum(1), (w * down).sum(1)
    return np.clip(up + down if test_mode == "two" else np.maximum(up, down), 0.0, 1.0)


def counts_posterior(
    adata_manager: Any,
    cells1: np.ndarray,
    cells2: np.ndarray,
    member_proba: np.ndarray,
    delta: float,
    n_draws: int,
    seed: int,
    pseudocount: float = 0.1,
    batch_correction: bool = False,
    test_mode: str = "two",
    normalised: Any = None,
) -> dict:
    """The ``counts`` estimand's posterior for one comparison.

    Returns a dict: ``draws`` ``(n_draws, G)`` of ``theta`` with strata from the pooled
    ensemble's ``P(|LFC| >= delta)`` (the mean of ``member_proba``), ``proba`` its
    closed-form :func:`tail_probability`; ``member_proba`` and ``member_mean`` ``(K, G)``
    the same probability and the posterior mean with each member's own strata (closed
    form: no member draws are kept, so K x genes stays small at atlas scale); the
    counts' ``lfc_counts``, ``lfc_counts_se`` and the ensemble's ``stratum`` per gene.

    Parameters
    ----------
    adata_manager
        The AnnData's manager (its ``X`` registry holds the counts).
    cells1, cells2
        Cell positions of the two sides.
    member_proba
        ``(K, G)``: each member's ``P(|LFC| >= delta)`` on the population estimand.
    delta
        Smallest |LFC| that counts as a change.
    n_draws
        Posterior draws per gene (for the LFC quantiles).
    seed
        Seed of the Gamma and posterior draws.
    pseudocount
        Per ``LIBRARY_SIZE``, added before the log2.
    batch_correction
        Standardise both sides' means to one batch mix (:func:`count_means`).
    test_mode
        As in :func:`tail_probability`.
    normalised
        :func:`normalised_counts` of the registered counts, when the caller already has
        them (one-vs-rest calls share one); ``None``: computed here.
    """
    rng = np.random.default_rng(seed)
    y = (
        normalised_counts(adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY))
        if normalised is None
        else normalised
    )
    batch = (
        np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        if batch_correction
        else None
    )
    means = count_means(y, np.asarray(cells1), np.asarray(cells2), batch)
    r, v = gamma_lfc_moments(means, GAMMA_DRAWS, rng, pseudocount)

    def posterior(strata):
        parts = (
            np.zeros((r.size, GRID.size)),
            np.zeros((r.size, GRID.size)),
            np.zeros((r.size, GRID.size)),
        )
        for k in np.unique(strata):
            sel = strata == k
            pi = fit_scale_mixture(r[sel], v[sel])
            for out, part in zip(parts, mixture_posterior(r[sel], v[sel], pi), strict=True):
                out[sel] = part
        return parts

    strata = strata_of(member_proba.mean(axis=0))
    w, mu, sd = posterior(strata)
    own = [posterior(strata_of(p)) for p in member_proba]
    return {
        "draws": posterior_draws(w, mu, sd, n_draws, rng),
        "proba": tail_probability(w, mu, sd, delta, test_mode),
        "member_proba": np.stack([tail_probability(*m, delta, test_mode) for m in own]),
        "member_mean": np.stack([(m[0] * m[1]).sum(1) for m in own]),
        "lfc_counts": r,
        "lfc_counts_se": np.sqrt(v),
        "stratum": strata,
    }


def counts_table(
    model_draws: np.ndarray,
    adata_manager: Any,
    cells1: np.ndarray,
    cells2: np.ndarray,
    delta: float,
    fdr_target: float,
    gene_names: Any,
    seed: int,
    pseudocount: float = 0.1,
    test_mode: str = "two",
    batch_correction: bool = False,
    normalised: Any = None,
    *,
    extra: dict[str, Any] | None = None,
    sort: bool = False,
) -> pd.DataFrame:
    """The DE table of the ``counts`` estimand for one comparison.

    Built by :func:`._de_calls.de_table` from the posterior of ``theta`` (strata from the
    pooled ensemble; ``proba_de`` and the columns made from it in closed form, the LFC
    summaries from :data:`POSTERIOR_DRAWS` draws), with the member columns from
    each member's own strata (``member_calls``: members whose strata call the gene at the
    target; ``lfc_member_std``: spread of their posterior means), plus ``model_proba_de``
    and ``model_lfc_median`` (the ensemble's population estimand), ``lfc_counts`` and
    ``lfc_counts_se`` (the counts' LFC before shrinkage) and ``stratum``.

    Parameters
    ----------
    model_draws
        ``(K, N, G)`` population-estimand LFC draws of the members.
    adata_manager, cells1, cells2
        As in :func:`counts_posterior`.
    delta, fdr_target, gene_names, test_mode
        As in :func:`._de_calls.summarise_lfc`.
    seed
        Seed of the counts' draws.
    pseudocount
        Per ``LIBRARY_SIZE``, added before the log2.
    batch_correction
        Standardise the counts' means to one batch mix (:func:`count_means`).
    normalised
        As in :func:`counts_posterior`.
    extra
        Columns added after the calls (the call's scales, pseudocount, delta).
    sort
        Rows by ``proba_de`` then ``|lfc_median|`` (``False``: in ``gene_names`` order).
    """
    k, _, g = model_draws.shape
    model_proba = np.mean(np.abs(model_draws) >= delta, axis=1)
    post = counts_posterior(
        adata_manager,
        cells1,
        cells2,
        model_proba,
        delta,
        POSTERIOR_DRAWS,
        seed,
        pseudocount,
        batch_correction,
        test_mode,
        normalised,
    )
    columns = {
        **lfc_summary(post["draws"]),
        "lfc_member_std": post["member_mean"].std(0) if k > 1 else np.zeros(g),
        "model_proba_de": model_proba.mean(0),
        "model_lfc_median": np.median(model_draws.reshape(-1, g), axis=0),
        **{name: post[name] for name in ("lfc_counts", "lfc_counts_se", "stratum")},
    }
    # proba_de and the calls made from it in closed form (no Monte Carlo error)
    return de_table(
        columns,
        gene_names,
        fdr_target,
        proba_de=post["proba"],
        member_proba=post["member_proba"],
        trailing=extra,
        sort="proba" if sort else None,
    )
