"""The expression-space novelty score and its combination with the latent one (issue 35),
checked against a float64 SVD and a brute-force kNN written here."""

from __future__ import annotations

import numpy as np
import pytest

from ensemblevi.tl._novelty_expression import (
    N_PCS,
    combine,
    expression_knn,
    expression_space,
    log_normalise,
)
from ensemblevi.tl._novelty_rule import novelty_reference


def _brute_lognorm(x):
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
    out = np.empty_like(x)
    for i, row in enumerate(x):  # a slow loop, cell by cell
        total = max(row.sum(), 1.0)
        out[i] = np.log(1.0 + row / total * 1e4)
    return out


def _brute_mean_knn(ref, x, k, self_rows=None):
    d = np.sqrt(((x[:, None, :] - ref[None, :, :]) ** 2).sum(-1))
    if self_rows is not None:
        for i, r in enumerate(self_rows):
            if r >= 0:
                d[i, r] = np.inf
    return np.sort(d, axis=1)[:, :k].mean(1)


def _counts(model):
    return model.adata.layers["counts"]


def test_log_normalise_matches_a_loop():
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (30, 12)).astype(np.float32)
    x[3] = 0  # an empty cell stays 0, not NaN
    np.testing.assert_allclose(log_normalise(x), _brute_lognorm(x), rtol=1e-12)
    assert np.all(log_normalise(x)[3] == 0)


def test_expression_knn_matches_svd_and_brute_knn(heart_model):
    model = heart_model
    ref = novelty_reference(model)
    x = _brute_lognorm(_counts(model))
    train = x[ref.train]
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:N_PCS].T

    def pcs(rows):
        return (x[rows] - mean) @ basis

    self_rows = np.full(model.adata.n_obs, -1)
    self_rows[ref.train] = np.arange(len(ref.train))
    d_cal = _brute_mean_knn(pcs(ref.train), pcs(ref.calibration), 15)
    d_all = _brute_mean_knn(pcs(ref.train), pcs(np.arange(model.adata.n_obs)), 15, self_rows)
    got, got_cal = expression_knn(model, model.adata, ref, 15, self_rows)
    np.testing.assert_allclose(got_cal, d_cal / np.median(d_cal), rtol=1e-6)
    np.testing.assert_allclose(got, d_all / np.median(d_cal), rtol=1e-6)
    assert np.median(got_cal) == pytest.approx(1.0)


def test_expression_space_is_fitted_on_training_cells_only(heart_model):
    model = heart_model
    ref = novelty_reference(model)
    project, train_pcs = expression_space(model, ref)
    # the training cells are centred: their PCs average to 0; the calibration cells' do not
    np.testing.assert_allclose(train_pcs.mean(0), 0, atol=1e-8)
    np.testing.assert_allclose(project(ref.adata, ref.train), train_pcs, atol=1e-10)
    assert train_pcs.shape == (len(ref.train), N_PCS)


def test_combine_is_the_larger_part_over_its_95th_percentile():
    rng = np.random.default_rng(1)
    knn, expr, fit = rng.gamma(2.0, size=(3, 50))
    cal = rng.gamma(2.0, size=(3, 40))
    got, got_cal = combine(knn, expr, fit, tuple(cal))
    # by loop, with the quantile written out (linear interpolation between order statistics)
    dist_cal = sorted((a + b) / 2 for a, b in zip(cal[0], cal[1], strict=True))
    fit_cal = sorted(cal[2])

    def q95(v):
        pos = 0.95 * (len(v) - 1)
        lo = int(pos)
        return v[lo] + (pos - lo) * (v[lo + 1] - v[lo])

    qd, qf = q95(dist_cal), q95(fit_cal)
    for i in range(50):
        assert got[i] == pytest.approx(max((knn[i] + expr[i]) / 2 / qd, fit[i] / qf), rel=1e-12)
    for i in range(40):
        want = max((cal[0][i] + cal[1][i]) / 2 / qd, cal[2][i] / qf)
        assert got_cal[i] == pytest.approx(want, rel=1e-12)
    # a NaN part (a cell not scored) leaves the other part, as np.fmax does
    nan_fit = fit.copy()
    nan_fit[0] = np.nan
    assert combine(knn, expr, nan_fit, tuple(cal))[0][0] == pytest.approx(
        (knn[0] + expr[0]) / 2 / qd
    )


def test_count_terms_match_scipy_dense_and_sparse():
    from scipy import sparse
    from scipy.stats import poisson

    from ensemblevi.tl._novelty_expression import count_terms, fit_score

    rng = np.random.default_rng(3)
    x = rng.negative_binomial(2, 0.3, (25, 40)).astype(np.float32)
    x[4] = 0  # an empty cell: 0 and 0, and its fit divides by 1
    want = np.array([poisson.logpmf(row, row).sum() for row in x.astype(np.float64)])
    import ensemblevi.tl._novelty_expression as module

    for chunk in (module.CHUNK, 7):  # one block, and blocks that split the cells
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(module, "CHUNK", chunk)
            for given in (x, sparse.csr_matrix(x), sparse.csc_matrix(x)):
                saturated, total = count_terms(given)
                np.testing.assert_allclose(saturated, want, rtol=1e-12)
                np.testing.assert_allclose(total, x.sum(1), rtol=1e-12)
    elbo = rng.normal(-300, 20, (3, 25))
    got = fit_score(elbo, want, x.sum(1))
    for i in range(25):
        expected = (-elbo[:, i].mean() + want[i]) / np.sqrt(max(x[i].sum(), 1.0))
        assert got[i] == pytest.approx(expected, rel=1e-12)
