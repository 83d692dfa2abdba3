"""The default DE estimand ``counts``: count means, Gamma posteriors, the scale-mixture
prior and its posterior, strata, and the table, each against an independent reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import optimize, stats
from scipy.special import digamma, polygamma

import ensemblevi as ev
from ensemblevi.model.base import _de_counts as dc
from ensemblevi.model.base._de_core import fdr_calls
from ensemblevi.model.base._de_lfc import lfc_posterior


def _counts(rng, n=80, g=7):
    x = rng.negative_binomial(2, 0.3, size=(n, g)).astype(float)
    x[:, 0] = 0  # a gene without counts
    x[: n // 2, 1] = 0  # a gene without counts on one side
    return x


@pytest.mark.parametrize("with_batch", [False, True])
def test_count_means_match_a_loop(with_batch):
    rng = np.random.default_rng(0)
    x = _counts(rng)
    y = dc.normalised_counts(sp.csr_matrix(x))
    c1, c2 = np.arange(0, 40), np.arange(40, 80)
    batch = rng.integers(0, 3, 80) if with_batch else None
    got = dc.count_means(y, c1, c2, batch)
    ref = x / x.sum(1, keepdims=True) * 1e4
    groups = (
        [(c1, c2)]
        if batch is None
        else [(c1[batch[c1] == b], c2[batch[c2] == b]) for b in range(3)]
    )
    w = np.array([len(a) + len(b) for a, b in groups], float)
    w /= w.sum()
    for j in range(x.shape[1]):
        m = [
            sum(wb * ref[cells, j].mean() for wb, cells in zip(w, side, strict=True))
            for side in zip(*groups, strict=True)
        ]
        assert got.mean1[j] == pytest.approx(m[0]) and got.mean2[j] == pytest.approx(m[1])
        parts = [ref[c, j] for pair in groups for c in pair]
        ss = sum(((p - p.mean()) ** 2).sum() for p in parts)
        dof = sum(len(p) - 1 for p in parts)
        pooled = np.concatenate(parts).mean()
        unit = ss / dof / pooled if pooled > 0 and ss > 0 else 1.0
        assert got.unit[j] == pytest.approx(unit)
    n_eff = [
        1 / sum(wb**2 / len(cells) for wb, cells in zip(w, side, strict=True))
        for side in zip(*groups, strict=True)
    ]
    assert got.n1 == pytest.approx(n_eff[0]) and got.n2 == pytest.approx(n_eff[1])


def test_count_means_refuse_sides_without_a_shared_batch():
    y = dc.normalised_counts(sp.csr_matrix(np.ones((6, 3))))
    with pytest.raises(ValueError, match="share no batch"):
        dc.count_means(y, np.arange(3), np.arange(3, 6), np.array([0, 0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match=">= 2 cells"):
        dc.count_means(y, np.arange(1), np.arange(3, 6))


def test_gamma_lfc_has_the_closed_form_log_gamma_moments():
    means = dc.CountMeans(
        np.array([0.8, 0.0, 5.0]), np.array([0.3, 0.2, 5.0]), 40.0, 60.0, np.array([0.05, 0.1, 0.5])
    )
    lfc = dc.gamma_lfc(means, 200_000, np.random.default_rng(1), pseudocount=0.0)
    pooled = means.pooled
    k1 = means.n1 * means.mean1 / means.unit + 0.5
    k2 = means.n2 * means.mean2 / means.unit + 0.5
    b1 = means.n1 / means.unit + 0.5 / pooled
    b2 = means.n2 / means.unit + 0.5 / pooled
    ln2 = np.log(2)
    mean = (digamma(k1) - np.log(b1) - digamma(k2) + np.log(b2)) / ln2
    var = (polygamma(1, k1) + polygamma(1, k2)) / ln2**2
    np.testing.assert_allclose(lfc.mean(0), mean, atol=0.02 * np.sqrt(var).max())
    np.testing.assert_allclose(lfc.var(0), var, rtol=0.03)
    r, v = dc.gamma_lfc_moments(means, 200_000, np.random.default_rng(1), 0.0, chunk=2)
    np.testing.assert_allclose(v, var, rtol=0.03)
    # chunked over genes, the median is the unchunked draws' (up to Monte Carlo error)
    np.testing.assert_allclose(r, np.median(lfc, 0), atol=0.02 * np.sqrt(var).max())


def _penalised(pi, r, v, grid, null_weight):
    dens = stats.norm.pdf(r[:, None], 0, np.sqrt(v[:, None] + grid[None] ** 2)) @ pi
    return np.log(dens).sum() + (null_weight - 1) * np.log(pi[0])


def test_em_weights_maximise_the_penalised_marginal_likelihood():
    rng = np.random.default_rng(2)
    theta = np.where(rng.random(300) < 0.7, 0.0, rng.normal(0, 1.0, 300))
    v = rng.uniform(0.01, 0.2, 300)
    r = theta + rng.normal(0, np.sqrt(v))
    grid = np.array([0.0, 0.1, 0.3, 1.0, 3.0])
    pi = dc.fit_scale_mixture(r, v, grid, null_weight=10.0)
    assert pi.sum() == pytest.approx(1.0) and (pi >= 0).all()

    def neg(z):  # softmax parameters: an optimiser that knows nothing of EM
        p = np.exp(z - z.max())
        return -_penalised(p / p.sum(), r, v, grid, 10.0)

    best = optimize.minimize(
        neg,
        np.zeros(grid.size),
        method="Nelder-Mead",
        options={"maxiter": 20000, "xatol": 1e-9, "fatol": 1e-10},
    )
    assert _penalised(pi, r, v, grid, 10.0) >= -best.fun - 1e-3


def test_mixture_posterior_matches_quadrature_and_its_draws():
    grid = np.array([0.0, 0.2, 0.8, 2.0])
    pi = np.array([0.5, 0.2, 0.2, 0.1])
    r, v = np.array([0.05, 0.45, 1.3, -2.2]), np.array([0.04, 0.09, 0.01, 0.25])
    w, mu, sd = dc.mixture_posterior(r, v, pi, grid)
    delta = 0.5
    analytic = dc.tail_probability(w, mu, sd, delta)
    t = np.linspace(-12, 12, 400_001)
    for g in range(r.size):
        like = stats.norm.pdf(r[g], t, np.sqrt(v[g]))
        slab = sum(p * stats.norm.pdf(t, 0, s) for p, s in zip(pi[1:], grid[1:], strict=True))
        atom = pi[0] * stats.norm.pdf(r[g], 0, np.sqrt(v[g]))  # the point mass at 0
        z = np.trapezoid(slab * like, t) + atom
        tail = np.trapezoid(np.where(np.abs(t) >= delta, slab * like, 0.0), t)
        assert analytic[g] == pytest.approx(tail / z, abs=1e-4)
        assert w[g, 0] == pytest.approx(atom / z, abs=1e-6)
    draws = dc.posterior_draws(w, mu, sd, 100_000, np.random.default_rng(3))
    np.testing.assert_allclose(np.mean(np.abs(draws) >= delta, 0), analytic, atol=0.01)
    three = dc.tail_probability(w, mu, sd, delta, "three")
    ref = np.maximum(np.mean(draws >= delta, 0), np.mean(draws < -delta, 0))
    np.testing.assert_allclose(three, ref, atol=0.01)


def test_strata_merge_small_ones_into_a_neighbour():
    p = np.r_[np.full(60, 0.1), np.full(10, 0.7), np.full(55, 0.99)]
    np.testing.assert_array_equal(dc.strata_of(p), np.r_[np.zeros(70), np.ones(55)])
    p = np.r_[np.full(5, 0.1), np.full(60, 0.7), np.full(60, 0.99)]
    np.testing.assert_array_equal(dc.strata_of(p), np.r_[np.zeros(65), np.ones(60)])
    assert set(dc.strata_of(np.full(30, 0.99))) == {0}
    p = np.r_[np.full(50, 0.1), np.full(50, 0.6), np.full(50, 0.96)]
    np.testing.assert_array_equal(dc.strata_of(p), np.repeat([0, 1, 2], 50))


def test_empirical_bayes_calls_hold_their_fdr_when_the_prior_is_right():
    """Data drawn from a scale mixture: the EB posterior's expected-FDR rule keeps the true
    FDR near the target (a property of a calibrated posterior, not of this code)."""
    rng = np.random.default_rng(4)
    g = 6000
    theta = np.where(rng.random(g) < 0.8, rng.normal(0, 0.1, g), rng.normal(0, 1.2, g))
    v = rng.uniform(0.01, 0.15, g)
    r = theta + rng.normal(0, np.sqrt(v))
    draws = dc.eb_draws(r, v, np.zeros(g, int), 400, rng)
    p = np.mean(np.abs(draws) >= 0.5, 0)
    for target in (0.05, 0.1, 0.2):
        calls = fdr_calls(p, target)
        fdr = np.mean(np.abs(theta[calls]) < 0.5)
        assert target - 0.04 <= fdr <= target + 0.02, (target, fdr)
    # the flat (no-shrinkage) posterior N(r, v) over-calls on the same data
    flat = stats.norm.sf(0.5, r, np.sqrt(v)) + stats.norm.cdf(-0.5, r, np.sqrt(v))
    assert np.mean(np.abs(theta[fdr_calls(flat, 0.05)]) < 0.5) > 0.08


@pytest.fixture(scope="module")
def counts_model():
    adata = ev.data.synthetic("hard", seed=0, n_cells=300, n_genes=120)
    ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ev.model.EnsembleSCVI(
        adata, n_members=2, ensemble="deep", n_hidden=32, n_latent=4, seed=0
    )
    model.train(max_epochs=20, seed=0, enable_progress_bar=False, plan_kwargs={"lr": 1e-2})
    return adata, model


KW = {
    "groupby": "cell_type",
    "group1": "B",
    "group2": "A",
    "n_samples": 8,
    "progress": False,
    "key_added": None,
}


def test_default_table_is_the_counts_posterior_stratified_by_the_model(counts_model):
    adata, model = counts_model
    t = model.differential_expression(**KW).loc[adata.var_names]
    pop = model.differential_expression(estimand="population", **KW).loc[adata.var_names]
    # the model's columns are the population estimand's own answer on the same draws
    np.testing.assert_allclose(t["model_proba_de"], pop["proba_de"])
    np.testing.assert_allclose(t["model_lfc_median"], pop["lfc_median"])
    np.testing.assert_allclose(t["scale1"], pop["scale1"])
    # the counts' LFC before shrinkage: the side means by hand, with the pseudocount
    x = np.asarray(
        adata.layers["counts"].toarray()
        if sp.issparse(adata.layers["counts"])
        else adata.layers["counts"],
        float,
    )
    y = x / x.sum(1, keepdims=True) * 1e4
    ct = adata.obs["cell_type"].to_numpy()
    naive = np.log2(y[ct == "B"].mean(0) + 0.1) - np.log2(y[ct == "A"].mean(0) + 0.1)
    big = (y[ct == "B"].mean(0) > 5) & (y[ct == "A"].mean(0) > 5)
    np.testing.assert_allclose(t["lfc_counts"][big], naive[big], atol=0.1)
    strata = dc.strata_of(t["model_proba_de"].to_numpy())
    np.testing.assert_array_equal(t["stratum"], strata)
    assert t["proba_de"].between(0, 1).all() and t["member_calls"].between(0, 2).all()
    calls = fdr_calls(t["proba_de"].to_numpy(), 0.05)
    np.testing.assert_array_equal(t["is_de_fdr_0.05"], calls)
    # the same seed gives the same table; another seed changes only the Monte Carlo
    again = model.differential_expression(**KW).loc[adata.var_names]
    np.testing.assert_array_equal(t["proba_de"], again["proba_de"])


def test_counts_estimand_batches_and_options(counts_model):
    adata, model = counts_model
    bc = model.differential_expression(batch_correction=True, **KW)
    assert bc["proba_de"].between(0, 1).all()
    skewed = adata.copy()
    b = skewed.obs["cell_type"].to_numpy() == "B"
    skewed.obs.loc[b, "batch"] = skewed.obs["batch"].cat.categories[0]
    ev.model.EnsembleSCVI.setup_anndata(skewed, layer="counts", batch_key="batch")
    with pytest.warns(UserWarning, match="batch mixes differ"):
        model.differential_expression(skewed, **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        # the batches look like samples (several per group): that advice is not the point here
        warnings.filterwarnings("ignore", message="DE without samples")
        model.differential_expression(adata, **KW)  # balanced batches: no warning
    three = model.differential_expression(test_mode="three", **KW)
    assert three["proba_de"].between(0, 1).all()
    with pytest.raises(ValueError, match="'counts' is built on them"):
        lfc_posterior(model, adata, "cell_type", "B", "A", estimand="counts", progress=False)
