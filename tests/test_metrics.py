"""Count calibration metrics against a slow pmf sum and on data from known distributions."""

import numpy as np
import pytest
import torch
from scvi.distributions._negative_binomial import log_nb_positive, log_zinb_positive

import ensemblevi as ev
from ensemblevi.metrics import interval_coverage, predictive_calibration, randomized_pit
from ensemblevi.metrics._counts import count_cdf, pit_uniformity
from ensemblevi.pl._utils import save_figure


def _slow_cdf(x, mu, theta, zi):
    """Sum of scvi-tools' float64 pmfs over 0..x (an independent code path)."""
    ks = torch.arange(0, int(x) + 1, dtype=torch.float64)
    mu_, th_ = torch.full_like(ks, mu), torch.full_like(ks, theta) if theta else None
    if theta is None:
        logp = torch.distributions.Poisson(mu_).log_prob(ks)
    elif zi is None:
        logp = log_nb_positive(ks, mu_, th_)
    else:
        logp = log_zinb_positive(ks, mu_, th_, torch.full_like(ks, zi))
    return float(logp.exp().sum())


@pytest.mark.parametrize("model", ["poisson", "nb", "zinb"])
def test_count_cdf_matches_the_summed_pmf(model):
    rng = np.random.default_rng(0)
    for _ in range(25):
        mu, theta, zi = rng.gamma(1.0, 5.0), rng.gamma(2.0, 1.0), rng.normal(0, 2)
        x = int(rng.integers(0, 30))
        theta_ = None if model == "poisson" else theta
        zi_ = zi if model == "zinb" else None
        got = count_cdf(x, mu, theta_, zi_)
        # scvi-tools' pmfs add eps = 1e-8 inside their logs: agreement to ~1e-8, not 1e-15
        assert got == pytest.approx(_slow_cdf(x, mu, theta_, zi_), rel=1e-6, abs=1e-10)
    assert count_cdf(-1, 3.0, 2.0) == 0.0


def _draw(rng, mu, theta=None, pi=None):
    lam = mu if theta is None else rng.gamma(theta, mu / theta)
    x = rng.poisson(lam)
    if pi is not None:
        x = np.where(rng.random(x.shape) < pi, 0, x)
    return x


@pytest.mark.parametrize("model", ["poisson", "nb", "zinb"])
def test_pit_is_uniform_and_coverage_nominal_under_the_true_model(model):
    rng = np.random.default_rng(1)
    n = 200_000
    mu = rng.gamma(0.7, 4.0, n)  # many small means: mostly zeros, the hard case for counts
    theta = None if model == "poisson" else rng.gamma(2.0, 1.0, n)
    zi = rng.normal(-1.0, 1.0, n) if model == "zinb" else None
    pi = None if zi is None else 1 / (1 + np.exp(-zi))
    x = _draw(rng, mu, theta, pi)
    pit = randomized_pit(x, mu, theta, zi, mixture_axes=0, rng=2)
    u = pit_uniformity(pit)
    assert u["hist_l1"] < 0.01 and u["ks"] < 0.01
    assert u["mean"] == pytest.approx(0.5, abs=0.005) and u["var"] == pytest.approx(
        1 / 12, abs=0.003
    )
    cov = interval_coverage(
        pit, lower=count_cdf(x - 1, mu, theta, zi), upper=count_cdf(x, mu, theta, zi)
    )
    np.testing.assert_allclose(cov["randomized"], cov.index, atol=0.006)
    assert (cov["interval"] >= cov.index - 0.006).all()  # conservative for counts


def test_mixture_pit_is_uniform_and_a_wrong_model_is_caught():
    rng = np.random.default_rng(3)
    n = 100_000
    # counts from an equal mixture of two NBs per observation (like two members)
    mus = np.stack([rng.gamma(2.0, 2.0, n), rng.gamma(2.0, 8.0, n)])
    theta = np.full((2, n), 3.0)
    comp = rng.integers(0, 2, n)
    x = _draw(rng, mus[comp, np.arange(n)], theta[0])
    good = pit_uniformity(randomized_pit(x, mus, theta, mixture_axes=1, rng=0))
    assert good["hist_l1"] < 0.015
    # one component alone, or a Poisson of the right mean, is miscalibrated and flagged
    one = randomized_pit(x, mus[0], theta[0], rng=0)
    pois = randomized_pit(x, mus.mean(0), None, rng=0)
    assert pit_uniformity(one)["mean"] > 0.6  # predicts too low
    p = pit_uniformity(pois)
    assert p["hist_l1"] > 0.1 and p["var"] > 1 / 12 + 0.02  # over-confident: U-shaped
    assert (interval_coverage(pois)["randomized - nominal"] < -0.1).all()


def test_metrics_reject_bad_counts_and_empty_input():
    with pytest.raises(ValueError, match="integer"):
        randomized_pit(np.array([1.5]), np.array([1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        randomized_pit(np.array([-1]), np.array([1.0]))
    with pytest.raises(ValueError, match="at least one"):
        interval_coverage(np.array([]))
    with pytest.raises(ValueError, match="levels"):
        interval_coverage(np.array([0.5]), levels=[1.0])


def test_predictive_calibration_of_a_trained_model(kind_models):
    model = kind_models["deep"]  # the session's (conftest.py), K = 3 on 40 genes
    adata = model.adata.copy()  # the results are written into this copy
    held = model.validation_indices
    out = predictive_calibration(
        model, adata, indices=held, n_samples=4, key_added="ev", progress=False
    )
    assert out["pit"].shape == (len(held), 40)
    cov = out["coverage"]
    # the randomised coverage is the share of the returned PITs inside each central interval
    pit = out["pit"].astype(np.float64)
    for c in cov.index:
        inside = np.mean((pit >= (1 - c) / 2) & (pit <= (1 + c) / 2))
        assert cov.loc[c, "randomized"] == pytest.approx(inside, abs=1e-6)
    assert list(cov.index) == [0.5, 0.8, 0.9, 0.95]
    assert cov["randomized"].is_monotonic_increasing
    assert {"interval", "member randomized"} <= set(cov.columns)
    assert set(out["uniformity"].columns) == {"ensemble", "members (mean)"}
    assert adata.uns["ev"]["calibration"]["n_cells"] == len(held)
    # the same seed gives the same values
    again = predictive_calibration(model, adata, indices=held, n_samples=4, progress=False)
    np.testing.assert_array_equal(out["pit"], again["pit"])


def test_calibration_figure(tmp_path):
    rng = np.random.default_rng(0)
    mu = rng.gamma(1.0, 3.0, 5000)
    x = _draw(rng, mu, 2.0)
    pit = randomized_pit(x, mu, np.full_like(mu, 2.0))
    pois = randomized_pit(x, mu)
    res = {
        "right": {"pit": pit, "coverage": interval_coverage(pit)},
        "poisson": {"pit": pois, "coverage": interval_coverage(pois)},
    }
    fig = ev.pl.calibration(res, return_fig=True)
    assert len(fig.axes) == 2 and len(fig.axes[1].get_lines()) == 3  # 2 models + diagonal
    (path,) = save_figure(fig, tmp_path / "cal")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="at least one"):
        ev.pl.calibration({})
