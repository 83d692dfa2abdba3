"""Ensemble differential expression: the FDR rule, the estimands, and ground truth."""

import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import ensemblevi as ev
from ensemblevi.model.base._de_core import expected_fdr, fdr_calls, summarise_lfc
from ensemblevi.model.base._de_lfc import cell_pair_lfc, lfc_posterior, population_lfc


def test_expected_fdr_and_calls_match_a_slow_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.beta(0.5, 0.5, 40)
        p[rng.integers(0, 40, 5)] = p[0]  # ties
        target = rng.uniform(0.01, 0.4)
        efdr, order = expected_fdr(p)
        ranked = sorted(range(40), key=lambda g: -p[g])  # stable: ties keep input order
        assert list(order) == ranked
        best = 0
        for k in range(1, 41):
            top = ranked[:k]
            value = sum(1 - p[g] for g in top) / k
            assert efdr[ranked[k - 1]] == pytest.approx(value)
            if value <= target:
                best = k
        expect = np.zeros(40, bool)
        expect[ranked[:best]] = True
        np.testing.assert_array_equal(fdr_calls(p, target), expect)
    assert not fdr_calls(np.array([0.1, 0.2]), 0.05).any()
    with pytest.raises(ValueError, match="target"):
        fdr_calls(np.array([0.5]), 1.0)


def test_population_and_pair_lfc_match_loops():
    rng = np.random.default_rng(1)
    e1, e2 = rng.gamma(1.0, 5.0, (2, 3, 7, 4)), rng.gamma(1.0, 5.0, (2, 3, 5, 4))
    got = population_lfc(e1, e2, pseudocount=0.1)
    for k in range(2):
        for s in range(3):
            for g in range(4):
                ref = np.median(np.log2(e1[k, s, :, g] + 0.1)) - np.median(
                    np.log2(e2[k, s, :, g] + 0.1)
                )
                assert got[k, s, g] == pytest.approx(ref)
    pairs = cell_pair_lfc(e1, e2, np.random.default_rng(3))
    assert pairs.shape == (2, 3, 7, 4)
    r = np.random.default_rng(3)
    i, j = r.integers(0, 7, 7), r.integers(0, 5, 7)
    np.testing.assert_allclose(pairs, np.log2(e1[..., i, :] + 0.1) - np.log2(e2[..., j, :] + 0.1))


def test_summary_pools_members_and_flags_disagreement():
    rng = np.random.default_rng(2)
    n = 400
    # gene 0: every member sees +2; gene 1: none sees a change; gene 2: members disagree
    draws = np.stack(
        [
            np.c_[
                rng.normal(2, 0.1, n), rng.normal(0, 0.1, n), rng.normal(2 if k < 2 else 0, 0.1, n)
            ]
            for k in range(4)
        ]
    )
    t = summarise_lfc(draws, delta=0.5, fdr_target=0.05, gene_names=["a", "b", "c"])
    assert t.loc["a", "proba_de"] == 1.0 and t.loc["b", "proba_de"] == 0.0
    assert t.loc["c", "proba_de"] == pytest.approx(0.5)
    assert t.loc["a", "member_calls"] == 4 and t.loc["c", "member_calls"] == 2
    assert list(t["call_flips"]) == [False, False, True]
    assert t.loc["c", "lfc_member_std"] == pytest.approx(1.0, abs=0.05)
    assert list(t["is_de_fdr_0.05"]) == [True, False, False]
    pooled = draws.reshape(-1, 3)
    np.testing.assert_allclose(t["lfc_std"], pooled.std(0))
    np.testing.assert_allclose(t["lfc_q97.5"], np.quantile(pooled, 0.975, axis=0))


@pytest.fixture(scope="module")
def de_model():
    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=400, n_genes=60)
    ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = ev.model.EnsembleSCVI(
        adata, n_members=3, ensemble="deep", n_hidden=32, n_latent=4, seed=0
    )
    # lr 1e-2: the default 1e-3 needs ~200 epochs here to stop shrinking the LFCs
    model.train(max_epochs=60, seed=0, enable_progress_bar=False, plan_kwargs={"lr": 1e-2})
    return adata, model


def test_de_against_ground_truth_and_written_for_scanpy(de_model):
    from sklearn.metrics import roc_auc_score

    adata, model = de_model
    delta = adata.uns["synthetic"]["delta"]
    truth = adata.var["is_de_B_vs_A"]
    t = model.differential_expression(
        groupby="cell_type",
        group1="B",
        group2="A",
        delta=delta,
        fdr_target=0.1,
        n_samples=20,
        progress=False,
    )
    assert roc_auc_score(truth[t.index], t["proba_de"]) > 0.9
    called = t.index[t["is_de_fdr_0.1"]]
    assert len(called) > 0
    assert 1 - truth[called].mean() <= 0.25  # achieved FDR, loose for 60 genes, one small model
    assert t["proba_de"].is_monotonic_decreasing
    # the sign: B vs A estimates the truth's B vs A log-fold change
    corr = np.corrcoef(t["lfc_median"], adata.var.loc[t.index, "median_lfc_B_vs_A"])[0, 1]
    assert corr > 0.9
    frame = sc.get.rank_genes_groups_df(adata, "B", key="ensemblevi_de")
    assert list(frame["names"]) == list(t.index)
    np.testing.assert_allclose(frame["pvals_adj"], t["expected_fdr"])
    assert isinstance(adata.uns["ensemblevi_de"]["table"], pd.DataFrame)
    # the same seed gives the same answer; one-vs-rest runs
    again = ev.tl.differential_expression(
        model,
        groupby="cell_type",
        group1="B",
        group2="A",
        delta=delta,
        fdr_target=0.1,
        n_samples=20,
        key_added=None,
        progress=False,
    )
    pd.testing.assert_frame_equal(t, again)


def test_cell_pairs_one_vs_rest_against_a_brute_force_computation(de_model):
    """``cell_pairs`` against ``group2=None``: every other cell is the reference, cells are
    subsampled and paired at random, and every member's every draw of every pair counts."""
    adata, model = de_model
    seed, n_samples, max_cells, delta = 4, 3, 50, 0.5
    rest = model.differential_expression(
        group1="A",
        n_samples=n_samples,
        max_cells=max_cells,
        key_added=None,
        progress=False,
        estimand="cell_pairs",
        seed=seed,
        delta=delta,
    )
    # the same random stream, spent as documented: subsample, then draws, then the pairs
    rng = np.random.default_rng(seed)
    is_a = (adata.obs["cell_type"] == "A").to_numpy()
    groups = [
        np.sort(rng.choice(np.flatnonzero(m), max_cells, replace=False)) for m in (is_a, ~is_a)
    ]
    draw = {"n_samples": n_samples, "return_mean": False, "return_members": True}
    expr = [
        model.get_normalized_expression(
            adata, indices=c, library_size=1e4, seed=seed + 1 + i, **draw
        )
        for i, c in enumerate(groups)
    ]
    i, j = rng.integers(0, max_cells, max_cells), rng.integers(0, max_cells, max_cells)
    hits = np.zeros(adata.n_vars)
    for k in range(model.n_members):
        for s in range(n_samples):
            for a, b in zip(i, j, strict=True):
                lfc = np.log2(expr[0][k, s, a] + 0.1) - np.log2(expr[1][k, s, b] + 0.1)
                hits += np.abs(lfc) >= delta
    expected = hits / (model.n_members * n_samples * max_cells)
    np.testing.assert_allclose(rest.loc[adata.var_names, "proba_de"], expected, rtol=1e-6)
    assert 0.05 < expected.mean() < 0.95  # neither all nor no pairs clear delta


def test_de_errors_name_the_problem(de_model):
    _, model = de_model
    with pytest.raises(KeyError, match="no column 'tissue'"):
        model.differential_expression(groupby="tissue", group1="B", progress=False)
    with pytest.raises(ValueError, match="'Z' is not in"):
        model.differential_expression(group1="Z", progress=False)
    with pytest.raises(ValueError, match="estimand"):
        model.differential_expression(group1="B", estimand="wilcoxon", progress=False)
    with pytest.raises(ValueError, match="fdr_target"):
        model.differential_expression(group1="B", fdr_target=0, progress=False)
    with pytest.raises(ValueError, match="groupby would go unused"):
        model.differential_expression(idx1=[0, 1], groupby="cell_type", progress=False)
    with pytest.raises(ValueError, match="same group"):
        model.differential_expression(group1="B", group2="B", progress=False)


def test_member_draws_pool_into_the_table_and_plot(de_model):
    adata, model = de_model
    kw = {"groupby": "cell_type", "group1": "B", "group2": "A", "n_samples": 6, "seed": 3}
    draws, info = lfc_posterior(model, adata, progress=False, **kw)
    assert draws.shape == (3, 6, adata.n_vars)
    assert len(info["cells1"]) == (adata.obs["cell_type"] == "B").sum()
    table = model.differential_expression(
        delta=0.5, fdr_target=0.1, progress=False, key_added="de_b", estimand="population", **kw
    )
    again = summarise_lfc(draws, 0.5, 0.1, adata.var_names).loc[table.index]
    pd.testing.assert_series_equal(table["proba_de"], again["proba_de"])
    # a sub-ensemble is the first members' draws: member 0 alone has no member spread
    one = summarise_lfc(draws[:1], 0.5, 0.1, adata.var_names)
    assert (one["lfc_member_std"] == 0).all() and not one["call_flips"].any()
    np.testing.assert_allclose(
        one["proba_de"], np.mean(np.abs(draws[0]) >= 0.5, axis=0), rtol=0, atol=0
    )
    fig = ev.pl.de_volcano(adata, key="de_b", return_fig=True)
    assert len(fig.axes) == 2 and len(fig.axes[0].collections) >= 3
    with pytest.raises(ValueError, match="No DE result"):
        ev.pl.de_volcano(adata, key="nope")


def test_the_three_entry_points_share_one_signature():
    """``tl.differential_expression`` and the model method forward every argument of the
    core with its default, so the three cannot drift apart."""
    import inspect

    from ensemblevi.model.base import ensemble_de

    def params(fn):
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()][1:]

    core = params(ensemble_de)
    assert params(ev.tl.differential_expression) == core
    assert params(ev.model.EnsembleSCVI.differential_expression) == core


def test_vanilla_store_lfc_is_finite_when_a_side_has_no_expression():
    from anndata import AnnData

    from ensemblevi.model.base._de_groups import Comparison
    from ensemblevi.model.base._de_store import store_de

    adata = AnnData(np.zeros((4, 2), dtype=np.float32))
    table = pd.DataFrame(
        {
            "bayes_factor": [1.0, -1.0],
            "proba_m2": [0.1, 0.9],
            "scale1": [1e-3, 0.0],
            "scale2": [0.0, 2e-3],
        },
        index=["g0", "g1"],
    )
    comp = Comparison(np.array([0, 1]), np.array([2, 3]), "A", "B")
    store_de(adata, [(comp, table)], "v", "cell_type", {"estimand": "scvi_vanilla"})
    lfc = adata.uns["v"]["logfoldchanges"]["A"]
    assert np.isfinite(lfc).all() and lfc[0] > 0 > lfc[1]
