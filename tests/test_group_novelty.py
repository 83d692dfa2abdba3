"""Group novelty: the rank test against brute force, BH against a loop, and the wiring."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

import ensemblevi as ev
from ensemblevi.tl._group_novelty import group_rank_test


def test_group_auroc_is_the_pairwise_win_rate():
    rng = np.random.default_rng(0)
    x, ref = rng.integers(0, 5, 13).astype(float), rng.integers(0, 5, 17).astype(float)  # ties
    wins = sum((a > b) + 0.5 * (a == b) for a in x for b in ref)
    table = group_rank_test(x, np.array(["g"] * 13), ref, min_cells=5)
    assert table.loc["g", "auroc"] == pytest.approx(wins / (len(x) * len(ref)), rel=1e-12)


def test_pvalue_is_the_exact_permutation_pvalue_on_small_groups():
    rng = np.random.default_rng(1)
    x, ref = rng.normal(0.8, 1, 5), rng.normal(0, 1, 7)
    ranks = np.argsort(np.argsort(np.concatenate([x, ref]))) + 1.0  # no ties
    observed = ranks[:5].sum()
    sums = [ranks[list(c)].sum() for c in itertools.combinations(range(12), 5)]
    exact = np.mean(np.array(sums) >= observed - 1e-12)
    table = group_rank_test(x, np.array(["g"] * 5), ref, min_cells=5)
    assert table.loc["g", "pval"] == pytest.approx(exact, rel=1e-9)


def test_bh_and_calls_match_a_slow_loop_and_find_the_planted_group():
    rng = np.random.default_rng(2)
    names = [f"t{i}" for i in range(6)]
    groups = np.repeat(names, 60)
    scores = rng.normal(0, 1, groups.size)
    scores[groups == "t3"] += 1.5  # the unseen population
    ref = rng.normal(0, 1, 400)
    table = group_rank_test(scores, groups, ref, fdr=0.05)
    assert table.index[0] == "t3" and table.loc["t3", "is_novel"]
    assert not table.drop("t3")["is_novel"].any()
    assert table.loc["t3", "auroc"] > 0.8
    p = table["pval"].to_numpy()
    order = np.argsort(p)
    m = len(p)
    q = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):  # BH step-up, by hand
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = running
    np.testing.assert_allclose(table["qval"].to_numpy(), q)


def test_leave_group_out_reference_and_small_groups():
    scores = np.r_[np.full(20, 1.0), np.full(3, 5.0)]
    groups = np.r_[["a"] * 20, ["b"] * 3]
    ref = np.r_[np.full(30, 1.0), np.full(30, 9.0)]
    ref_groups = np.r_[["a"] * 30, ["c"] * 30]
    table = group_rank_test(scores, groups, ref, ref_groups)
    assert table.loc["a", "n_reference"] == 30 and table.loc["a", "auroc"] == pytest.approx(0)
    assert np.isnan(table.loc["b", "pval"]) and not table.loc["b", "is_novel"]
    with pytest.raises(ValueError, match="fdr"):
        group_rank_test(scores, groups, ref, fdr=0)
    sets = {"a": np.arange(10), "b": np.arange(30, 60)}  # an explicit reference per group
    t = group_rank_test(scores, groups, ref, ref_groups, min_cells=3, reference_sets=sets)
    assert t.loc["a", "n_reference"] == 10 and t.loc["b", "n_reference"] == 30
    assert t.loc["b", "auroc"] == pytest.approx(0.0)  # 5.0 against 9.0 everywhere


@pytest.fixture(scope="module")
def novelty_model():
    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=500, n_genes=40)
    ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = ev.model.EnsembleSCVI(
        adata, n_members=2, ensemble="deep", n_hidden=16, n_latent=3, seed=0
    )
    model.train(max_epochs=5, seed=0, enable_progress_bar=False)
    return adata, model


def test_group_novelty_on_the_model_and_a_query(novelty_model):
    adata, model = novelty_model
    table = ev.tl.group_novelty(model, groupby="cell_type", reference="all", progress=False)
    assert set(table.index) == set(adata.obs["cell_type"].astype(str))
    n_train = pd.Series(adata.obs["cell_type"].astype(str).to_numpy()[model.train_indices])
    for g, row in table.iterrows():
        assert row["n_cells"] == (adata.obs["cell_type"] == g).sum()
        assert row["n_tested"] == row["n_cells"] - (n_train == g).sum()  # no training cells
    stored = adata.uns["ensemblevi"]["group_novelty"]
    assert stored["groupby"] == "cell_type" and "leave-group-out" in stored["reference"]
    query = adata[model.validation_indices].copy()
    q = ev.tl.group_novelty(model, query, groupby="cell_type", reference="all", progress=False)
    assert (q["n_tested"] == q["n_cells"]).all()
    assert "all the model's validation" in query.uns["ensemblevi"]["group_novelty"]["reference"]
    # matched: each group's reference is its cells' nearest validation cells, never the
    # tested cells themselves (here the query is the validation cells: the rest of them)
    m = ev.tl.group_novelty(model, query, groupby="cell_type", n_neighbors=10, progress=False)
    n_val = len(model.validation_indices)
    for _, row in m.iterrows():
        assert 0 < row["n_reference"] <= n_val - row["n_tested"]
    assert "nearest" in query.uns["ensemblevi"]["group_novelty"]["reference"]
    # the default: matched on a query, leave-group-out on the model's own cells
    ev.tl.group_novelty(model, query, groupby="cell_type", progress=False)
    assert "nearest" in query.uns["ensemblevi"]["group_novelty"]["reference"]
    ev.tl.group_novelty(model, groupby="cell_type", progress=False)
    assert "leave-group-out" in adata.uns["ensemblevi"]["group_novelty"]["reference"]
    with pytest.raises(ValueError, match="reference must be"):
        ev.tl.group_novelty(model, reference="knn", progress=False)
    with pytest.raises(ValueError, match="score must be"):
        ev.tl.group_novelty(model, score="cv", progress=False)
    with pytest.raises(ValueError, match="obs\\['nope'\\]"):
        ev.tl.group_novelty(model, groupby="nope", progress=False)


def test_a_query_model_is_calibrated_on_its_reference(novelty_model, tmp_path):
    adata, model = novelty_model
    query = adata[model.validation_indices].copy()
    query.obs["batch"] = "new"  # a batch the reference never saw
    ref = adata.copy()
    ref.obs["batch"] = "ref"
    ev.model.EnsembleSCVI.setup_anndata(ref, layer="counts", batch_key="batch")
    reference = ev.model.EnsembleSCVI(ref, n_members=2, n_hidden=16, n_latent=3, seed=0)
    reference.train(max_epochs=3, seed=0, enable_progress_bar=False)
    mapped = ev.model.EnsembleSCVI.load_query_data(query, reference)
    mapped.train(max_epochs=2, seed=0, enable_progress_bar=False)
    assert mapped.is_query_model_
    with pytest.raises(ValueError, match="reference_model"):  # its own cells are the query
        ev.tl.cell_novelty(mapped, query, progress=False)
    scores = ev.tl.cell_novelty(mapped, query, reference_model=reference, progress=False)
    info = query.uns["ensemblevi"]["cell_novelty"]
    assert "reference model" in info["calibrated_on"]
    np.testing.assert_array_equal(info["calibration_cells"], np.sort(reference.validation_indices))
    assert scores["novelty_tested"].all()  # no query cell was trained on by the reference
    # the threshold is the conformal quantile of the reference's validation cells' scores
    cal = np.sort(info["calibration_scores"]["novelty_combined"])
    rank = int(np.ceil((len(cal) + 1) * (1 - info["alpha"])))  # default alpha: 5%
    assert info["novelty_combined_threshold"] == pytest.approx(cal[min(rank, len(cal)) - 1])
    np.testing.assert_array_equal(
        scores["is_novel"], scores["novelty_combined"] > cal[min(rank, len(cal)) - 1]
    )
    # the calibration cells are decoded in the query's batch, as the query's cells are: the
    # scores of those cells copied into batch "new" and scored as a plain query
    assert info["calibration_batch"] == "new"
    cal = ref[np.sort(reference.validation_indices)].copy()
    cal.obs["batch"] = "new"
    as_query = ev.tl.cell_novelty(mapped, cal, reference_model=reference, progress=False)
    np.testing.assert_allclose(
        info["calibration_scores"]["novelty_cv"], as_query["novelty_cv"], rtol=1e-5
    )
    table = ev.tl.group_novelty(
        mapped, query, groupby="cell_type", progress=False, reference_model=reference
    )
    assert table["n_reference"].max() <= len(reference.validation_indices)
    mapped.save(str(tmp_path / "q"))
    loaded = ev.model.EnsembleSCVI.load(str(tmp_path / "q"), adata=query)
    assert loaded.is_query_model_  # kept with the model: a reloaded query still refuses


def test_conformal_threshold_keeps_its_rate_on_exchangeable_scores():
    from ensemblevi.tl._thresholds import conformal_threshold, cross_fit_flags

    rng = np.random.default_rng(3)
    alpha, n, reps = 0.05, 60, 4000
    exceed = []
    for _ in range(reps):  # a new score from the same law as the n reference scores
        ref, new = rng.gamma(2.0, 1.0, n), rng.gamma(2.0, 1.0)
        threshold, exact = conformal_threshold(ref, alpha)
        exceed.append(new > threshold)
    # rank ceil(61 * 0.95) = 58 of 60: P(exceed) = (60 - 58 + 1) / 61 = 0.049 exactly
    assert exact and np.mean(exceed) == pytest.approx(3 / 61, abs=0.01)
    assert np.mean(exceed) <= alpha + 0.01
    threshold, exact = conformal_threshold(np.arange(10.0), 0.01)  # too few for 1%
    assert threshold == 9.0 and not exact
    flags, halves = cross_fit_flags(np.r_[np.zeros(50), [10.0, 10.0]], 0.05, seed=0)
    assert halves["halves"] == [26, 26] and flags.sum() <= 2


def test_knn_distance_leaves_each_training_cell_out_of_its_own_neighbours():
    from ensemblevi.tl._novelty_rule import knn_distance

    rng = np.random.default_rng(4)
    ref = rng.normal(size=(30, 3))
    ref[5] = ref[4]  # a duplicate: its twin at distance 0 is a neighbour, itself is not
    x = np.r_[ref[:10], rng.normal(size=(4, 3))]
    self_rows = np.r_[np.arange(10), np.full(4, -1)]
    got = knn_distance(ref, x, 6, self_rows)
    for i, row in enumerate(x):  # brute force
        d = np.sqrt(((ref - row) ** 2).sum(1))
        if self_rows[i] >= 0:
            d = np.delete(d, self_rows[i])
        assert got[i] == pytest.approx(np.sort(d)[:6].mean())


def test_share_test_is_the_exact_binomial_tail_with_bh():
    from math import comb

    from ensemblevi.tl._group_novelty import group_share_test

    rng = np.random.default_rng(4)
    groups = np.repeat(["a", "b", "c", "d"], [30, 12, 40, 5])
    share = {"a": 0.9, "b": 0.5, "c": 0.1, "d": 1.0}
    flags = np.array([rng.random() < share[g] for g in groups])
    table = group_share_test(flags, groups, min_share=0.5, fdr=0.05, min_cells=10)
    pvals = {}
    for g in "abc":
        n, x = int((groups == g).sum()), int(flags[groups == g].sum())
        pvals[g] = sum(comb(n, j) for j in range(x, n + 1)) / 2**n  # P(Bin(n, 1/2) >= x)
        assert table.loc[g, "pval"] == pytest.approx(pvals[g], rel=1e-9)
        assert table.loc[g, "share_flagged"] == pytest.approx(x / n)
    order = sorted(pvals, key=pvals.get)  # BH by hand
    q, running = {}, 1.0
    for rank in range(len(order), 0, -1):
        g = order[rank - 1]
        running = min(running, pvals[g] * len(order) / rank)
        q[g] = running
    for g in "abc":
        assert table.loc[g, "qval"] == pytest.approx(q[g])
    assert np.isnan(table.loc["d", "pval"]) and not table.loc["d", "is_novel"]  # 5 < 10 cells
    assert table.loc["a", "is_novel"] and not table.loc["c", "is_novel"]


def test_majority_test_counts_the_calibrated_per_cell_flags(novelty_model):
    adata, model = novelty_model
    query = adata[model.validation_indices].copy()
    table = ev.tl.group_novelty(
        model, query, groupby="cell_type", cell_alpha=0.2, min_cells=3, progress=False
    )
    info = query.uns["ensemblevi"]["cell_novelty"]
    cal = np.sort(info["calibration_scores"]["novelty_combined"])
    threshold = cal[int(np.ceil((len(cal) + 1) * 0.8)) - 1]
    flagged = query.obs["ensemblevi_novelty_combined"].to_numpy() > threshold
    labels = query.obs["cell_type"].astype(str).to_numpy()
    for g, row in table.iterrows():
        assert row["n_flagged"] == flagged[labels == g].sum()
    stored = query.uns["ensemblevi"]["group_novelty"]
    assert stored["test"] == "majority" and stored["score"] == "novelty_combined"
    with pytest.raises(ValueError, match="test must be"):
        ev.tl.group_novelty(model, query, test="binomial", progress=False)
