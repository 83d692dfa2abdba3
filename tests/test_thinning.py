"""Binomial thinning of real counts (benchmark/_thinning.py) and its place in the FDR suite."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from ensemblevi.benchmark import _fdr
from ensemblevi.benchmark._scoring import MethodResult
from ensemblevi.benchmark._thinning import (
    THINNING_DATASETS,
    binomial_thin,
    expected_truth,
    load_thinning,
    null_split,
    thinning_dataset,
)


def _fake(n_group: int = 160, n_other: int = 40, n_genes: int = 80, seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    mu = rng.lognormal(0.0, 1.2, size=n_genes)
    lib = rng.lognormal(0.0, 0.3, size=(n_group + n_other, 1))
    x = rng.poisson(rng.gamma(2.0, mu * lib / 2.0)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": ["T"] * n_group + ["other"] * n_other},
        index=[f"c{i}" for i in range(n_group + n_other)],
    )
    a = AnnData(sp.csr_matrix(x), obs=obs)
    a.var_names = [f"g{j}" for j in range(n_genes)]
    return a


def _thin(a: AnnData, **kw) -> AnnData:
    return thinning_dataset(a, "cell_type", "T", n_top_genes=None, min_counts=1, **kw)


def test_binomial_thinning_mean_matches_closed_form():
    rng = np.random.default_rng(1)
    x = sp.csr_matrix(rng.poisson(4.0, size=(6, 5)) + np.eye(6, 5, dtype=int) * 30)
    cell_half = np.array([0, 0, 0, 1, 1, 1])
    gene_half = np.array([0, 1, -1, 0, 1])
    p = np.array([0.5, 0.25, 0.3, 0.8, 0.6])
    dense = x.toarray().astype(np.float64)
    n = 3000
    draws = np.stack([binomial_thin(x, cell_half, gene_half, p, rng).toarray() for _ in range(n)])
    thinned = gene_half[None, :] == cell_half[:, None]
    q = np.where(thinned, p[None, :], 1.0)
    sd = np.sqrt(dense * q * (1 - q) / n)
    assert np.all(np.abs(draws.mean(axis=0) - q * dense) <= 5 * sd + 1e-12)
    # counts never grow, and untouched entries are exactly the input
    assert np.all(draws <= dense)
    assert np.all(draws[:, ~thinned] == dense[~thinned])
    # the variance is the binomial one as well (loose: 30% with 3000 draws)
    big = thinned & (dense >= 4)
    ratio = draws.var(axis=0)[big] / (dense * q * (1 - q))[big]
    assert np.all(np.abs(ratio - 1) < 0.3)


def test_de_genes_balanced_and_in_range():
    a = _thin(_fake(), de_fraction=0.25, lfc_range=(0.5, 1.5), seed=3)
    v = a.var
    gen = v["generating_lfc_B_vs_A"].to_numpy()
    de = gen != 0
    assert de.sum() == 20 and (gen > 0).sum() == (gen < 0).sum() == 10
    assert np.all((np.abs(gen[de]) >= 0.5) & (np.abs(gen[de]) <= 1.5))
    # up in B: thinned in A; down in B: thinned in B; others never
    assert set(v["thinned_in"][gen > 0]) == {"A"} and set(v["thinned_in"][gen < 0]) == {"B"}
    assert set(v["thinned_in"][~de]) == {""}
    s = a.uns["thinning"]
    assert (s["n_up"], s["n_down"], s["n_generating_de"]) == (10, 10, 20)
    assert set(a.obs["cell_type"]) == {"A", "B"} and a.n_obs == 160
    assert abs((a.obs["cell_type"] == "B").sum() - 80) <= 1
    # odd numbers of DE genes: one more down than up
    odd = _thin(_fake(), de_fraction=0.2625, seed=3).var["generating_lfc_B_vs_A"]
    assert (odd > 0).sum() == 10 and (odd < 0).sum() == 11


def test_counts_thinned_only_where_documented():
    raw = _fake()
    a = _thin(raw, de_fraction=0.2, seed=5)
    pool = raw[raw.obs["cell_type"] == "T"]
    orig = pool[a.obs_names, a.var_names].X.toarray()
    got = a.layers["counts"].toarray()
    assert np.array_equal(a.X.toarray(), got)
    half = a.obs["cell_type"].to_numpy()
    where = a.var["thinned_in"].to_numpy()
    touched = where[None, :] == half[:, None]
    assert np.array_equal(got[~touched], orig[~touched])
    assert np.all(got[touched] <= orig[touched]) and got[touched].sum() < orig[touched].sum()


def _slow_truth(x: np.ndarray, gene_half: np.ndarray, p: np.ndarray) -> tuple:
    n, g = x.shape
    mean = np.zeros((2, g))
    per_cell = np.zeros((n, g))
    for h in (0, 1):
        q = [p[j] if gene_half[j] == h else 1.0 for j in range(g)]
        for c in range(n):
            lib = sum(q[j] * float(x[c, j]) for j in range(g))
            for j in range(g):
                mean[h, j] += q[j] * float(x[c, j]) / lib / n
    for c in range(n):
        lib = [
            sum((p[j] if gene_half[j] == h else 1.0) * float(x[c, j]) for j in range(g))
            for h in (0, 1)
        ]
        for j in range(g):
            qa = p[j] if gene_half[j] == 0 else 1.0
            qb = p[j] if gene_half[j] == 1 else 1.0
            per_cell[c, j] = np.log2(qb / qa) + np.log2(lib[0] / lib[1])
    return np.log2(mean[1] / mean[0]), np.median(per_cell, axis=0)


def test_truth_against_slow_per_gene_loop():
    rng = np.random.default_rng(7)
    x = rng.poisson(rng.gamma(1.0, 3.0, size=(25, 12))).astype(np.float64)
    x[:, 0] += 1  # no cell without counts
    gene_half = rng.integers(-1, 2, size=12)
    p = rng.uniform(0.2, 0.9, size=12)
    lfc, med = expected_truth(sp.csr_matrix(x), gene_half, p)
    ref_lfc, ref_med = _slow_truth(x, gene_half, p)
    np.testing.assert_allclose(lfc, ref_lfc, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(med, ref_med, rtol=1e-10, atol=1e-12)


def test_dataset_truth_is_the_closed_form_at_delta():
    raw = _fake()
    a = _thin(raw, de_fraction=0.2, seed=2, delta=0.4)
    pool = raw[raw.obs["cell_type"] == "T"][a.obs_names, a.var_names].X.toarray()
    gen = a.var["generating_lfc_B_vs_A"].to_numpy()
    gene_half = np.select([gen > 0, gen < 0], [0, 1], -1)
    ref_lfc, _ = _slow_truth(pool.astype(np.float64), gene_half, 2.0 ** -np.abs(gen))
    np.testing.assert_allclose(a.var["lfc_B_vs_A"], ref_lfc, rtol=1e-9, atol=1e-12)
    assert np.array_equal(a.var["is_de_B_vs_A"].to_numpy(), np.abs(ref_lfc) >= 0.4)
    assert a.uns["thinning"]["n_de"] == int((np.abs(ref_lfc) >= 0.4).sum())


def test_deterministic_by_seed():
    raw = _fake()
    one, two, other = _thin(raw, seed=4), _thin(raw, seed=4), _thin(raw, seed=5)
    assert np.array_equal(one.X.toarray(), two.X.toarray())
    pd.testing.assert_frame_equal(one.var, two.var)
    assert (one.obs["cell_type"] == two.obs["cell_type"]).all()
    assert not (one.obs["cell_type"] == other.obs["cell_type"]).all()


def test_null_split_same_halves_no_de():
    raw = _fake()
    thin = _thin(raw, seed=6)
    null = null_split(raw, "cell_type", "T", seed=6, n_top_genes=None, min_counts=1)
    assert (null.obs["cell_type"] == thin.obs["cell_type"]).all()
    assert not null.var["is_de_B_vs_A"].any() and (null.var["lfc_B_vs_A"] == 0).all()
    orig = raw[raw.obs["cell_type"] == "T"][null.obs_names, null.var_names].X.toarray()
    assert np.array_equal(null.layers["counts"].toarray(), orig)
    assert null.uns["thinning"]["kind"] == "null"


def test_null_scoring_is_the_fraction_called():
    truth = np.zeros(200, dtype=bool)
    p = np.linspace(0.0, 0.999, 200)
    got = _fdr.score(MethodResult("bayes", p), truth)
    for t in (0.05, 0.1, 0.2):
        called, _ = MethodResult("bayes", p).calls(t)
        assert got[f"frac@{t:g}"] == called.sum() / 200 > 0
        assert got[f"fdr@{t:g}"] == 1.0
    assert np.isnan(got["auroc"]) and np.isnan(got["tpr@0.05"])


def test_suite_lists_and_skips_the_real_count_datasets(tmp_path):
    cfg = _fdr.FDRConfig()
    assert cfg.datasets == THINNING_DATASETS == ("pbmc_thinning", "pbmc_null")
    # a preset's record keeps the settings it had before these data sets existed
    assert "lrs" not in _fdr.unit_settings(cfg, "draft")
    assert "pbmc_null" not in _fdr.unit_settings(cfg, "draft")["epochs"]
    assert _fdr.unit_settings(cfg, "pbmc_null")["lrs"]["pbmc_null"] == 1e-3
    logged = []
    quick = _fdr.FDRConfig.quick(presets=())
    assert _fdr.run(tmp_path, quick, log=logged.append, pbmc=tmp_path / "absent.h5ad") == []
    assert any("pbmc_thinning, pbmc_null: skipped (no pbmc3k.h5ad" in m for m in logged)
    assert load_thinning("pbmc_null", None, seed=0, delta=0.5) is None
    from ensemblevi.benchmark import run_suite

    with pytest.raises(ValueError, match="Unknown FDR data set"):
        run_suite("fdr", tmp_path, datasets=("pbmc",), log=logged.append)


def test_pbmc_thinning_on_the_real_file(pbmc_path):
    a = load_thinning("pbmc_thinning", pbmc_path, seed=0, delta=0.5, max_cells=200, n_top_genes=60)
    assert a.n_obs == 200 and a.n_vars == 60
    assert set(a.obs["source_cell_type"]) == {"CD4 T cells"}
    assert a.uns["thinning"]["n_up"] == a.uns["thinning"]["n_down"] == 3
    null = load_thinning(
        "pbmc_null", pbmc_path, seed=0, delta=0.5, max_cells=200, n_top_genes=60, de_fraction=0.1
    )
    assert list(null.obs_names) == list(a.obs_names) and not null.var["is_de_B_vs_A"].any()
