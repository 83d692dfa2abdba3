"""Neighbourhood, cluster and marker stability: against loops, identical members, planted
partitions."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scvi
from sklearn.metrics import adjusted_rand_score

import ensemblevi as ev
from ensemblevi.model import EnsembleSCVI
from ensemblevi.tl._stability_core import (
    best_match,
    cluster_table,
    coassignment_graph,
    leiden,
    member_knn,
    neighbourhood_jaccard,
)


def test_member_knn_is_the_brute_force_neighbours_with_the_cell_first():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 60, 3))
    z[1, 7] = z[1, 8]  # a duplicate point: the cell itself still comes first
    idx, dist = member_knn(z, 6)
    for m in range(2):
        d = np.linalg.norm(z[m][:, None] - z[m][None], axis=2)
        for i in range(60):
            assert idx[m, i, 0] == i and dist[m, i, 0] == 0
            expected = np.sort(d[i])[:6]
            np.testing.assert_allclose(np.sort(d[i, idx[m, i]]), expected, atol=1e-5)
            assert len(set(idx[m, i])) == 6


def test_neighbourhood_jaccard_matches_a_loop_over_pairs_and_sets():
    rng = np.random.default_rng(1)
    n, k, n_members = 40, 8, 4
    idx = np.stack(
        [
            np.stack(
                [
                    np.r_[i, rng.choice(np.delete(np.arange(n), i), k - 1, replace=False)]
                    for i in range(n)
                ]
            )
            for _ in range(n_members)
        ]
    )
    got = neighbourhood_jaccard(idx)
    for i in range(n):
        vals = []
        for a in range(n_members):
            for b in range(a + 1, n_members):
                sa, sb = set(idx[a, i, 1:]), set(idx[b, i, 1:])
                vals.append(len(sa & sb) / len(sa | sb))
        assert got[i] == pytest.approx(np.mean(vals))
    assert np.all(neighbourhood_jaccard(np.stack([idx[0]] * 3)) == 1)
    with pytest.raises(ValueError, match="at least 2"):
        neighbourhood_jaccard(idx[:1])


def test_best_match_and_cluster_table_match_loops():
    rng = np.random.default_rng(2)
    consensus = rng.integers(0, 4, 200)
    parts = rng.integers(0, 5, (3, 200))
    table, agreement = cluster_table(consensus, parts, threshold=0.3)
    jac_all = np.zeros((3, 4))
    agree = np.zeros(200)
    for m in range(3):
        jac, match = best_match(consensus, parts[m])
        for c in range(4):
            cells = set(np.flatnonzero(consensus == c))
            scores = {
                p: len(cells & set(np.flatnonzero(parts[m] == p)))
                / len(cells | set(np.flatnonzero(parts[m] == p)))
                for p in range(5)
            }
            best = max(scores, key=scores.get)
            assert jac[c] == pytest.approx(scores[best]) and match[c] == best
            jac_all[m, c] = scores[best]
            agree[list(cells)] += parts[m][list(cells)] == best
    np.testing.assert_allclose(table["stability"], jac_all.mean(0))
    np.testing.assert_allclose(table["min_jaccard"], jac_all.min(0))
    np.testing.assert_array_equal(table["reproducible"], jac_all.mean(0) >= 0.3)
    np.testing.assert_allclose(agreement, agree / 3)
    assert list(table["n_cells"]) == [int((consensus == c).sum()) for c in range(4)]


def test_coassignment_graph_matches_a_loop_over_edges():
    rng = np.random.default_rng(3)
    n = 30
    idx, _ = member_knn(rng.normal(size=(3, n, 2)), 4)
    parts = rng.integers(0, 3, (3, n))
    w = coassignment_graph(parts, idx).toarray()
    expected = np.zeros((n, n))
    for m in range(3):
        for i in range(n):
            for j in idx[m, i, 1:]:
                expected[i, j] = expected[j, i] = np.mean(parts[:, i] == parts[:, j])
    np.testing.assert_allclose(w, expected)
    assert np.allclose(w, w.T)


def _planted(n_members=4, n_per=60, seed=0):
    """Four well-separated blobs, each member's space a different rotation and shift."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(4), n_per)
    centres = rng.normal(0, 10, (4, 5))
    base = centres[truth] + rng.normal(0, 0.5, (len(truth), 5))
    spaces = []
    for _ in range(n_members):
        q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
        spaces.append(base @ q + rng.normal(0, 3, 5) + rng.normal(0, 0.05, base.shape))
    return np.stack(spaces), truth


def test_consensus_recovers_planted_partitions_and_marks_an_unstable_cluster():
    from ensemblevi.tl._stability_core import member_partitions

    z, truth = _planted()
    idx, dist = member_knn(z, 15)
    parts = member_partitions(idx, dist, resolution=0.3, seed=0)
    for p in parts:
        assert adjusted_rand_score(truth, p) == 1
    consensus = leiden(coassignment_graph(parts, idx), 0.3, 0)
    assert adjusted_rand_score(truth, consensus) == 1
    table, agreement = cluster_table(consensus, parts)
    assert np.allclose(table["stability"], 1) and np.allclose(agreement, 1)
    # members that split one blob in three at random: that cluster, and only it, loses
    # stability (best-match Jaccard about 1/3)
    rng = np.random.default_rng(1)
    split = parts.copy()
    blob = consensus == consensus[0]
    for m in range(4):
        split[m, blob] = 97 + rng.integers(0, 3, blob.sum())
    table, agreement = cluster_table(consensus, split)
    c0 = str(consensus[0])
    assert table.loc[c0, "stability"] < 0.6 and not table.loc[c0, "reproducible"]
    assert table.drop(index=c0)["stability"].eq(1).all()
    assert agreement[blob].mean() < 0.75 and np.all(agreement[~blob] == 1)


@pytest.fixture(scope="module")
def identical():
    warnings.simplefilter("ignore")
    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=300, n_genes=40)
    scvi.model.SCVI.setup_anndata(adata, layer="counts")
    scvi.settings.seed = 0
    one = scvi.model.SCVI(adata, n_hidden=16, n_latent=3)
    one.train(max_epochs=3, enable_progress_bar=False)
    return adata, EnsembleSCVI.from_scvi([one, one, one]), one


def test_identical_members_are_perfectly_stable(identical):
    adata, model, _ = identical
    table = ev.tl.cluster_stability(model, adata, resolution=1.0, n_top_markers=5, seed=0)
    assert (adata.obs["ensemblevi_neighbourhood_stability"] == 1).all()
    stored = adata.uns["ensemblevi"]["cluster_stability"]
    assert stored["mean_ari"] == 1 and stored["mean_nmi"] == pytest.approx(1)
    assert np.allclose(table["stability"], 1) and table["reproducible"].all()
    assert (adata.obs["ensemblevi_cluster_agreement"] == 1).all()
    assert np.allclose(table["marker_jaccard"], 1)
    assert (table["n_stable_markers"] == 5).all()
    parts = adata.obsm["ensemblevi_member_leiden"]
    assert parts.shape == (adata.n_obs, 3) and (parts == parts[:, :1]).all()
    # the consensus of identical partitions is that partition
    assert adjusted_rand_score(parts[:, 0], adata.obs["ensemblevi_consensus_leiden"]) == 1
    series = ev.tl.neighbourhood_stability(model, adata, groupby="cell_type")
    assert (series == 1).all()
    by = pd.DataFrame(adata.uns["ensemblevi"]["neighbourhood_stability"]["by_group"])
    assert set(by["cell_type"]) == set(adata.obs["cell_type"].astype(str))


def test_stability_refuses_one_member_and_bad_options(identical):
    adata, model, one = identical
    with pytest.raises(ValueError, match="at least 2"):
        ev.tl.neighbourhood_stability(EnsembleSCVI.from_scvi([one]), adata)
    with pytest.raises(ValueError, match="threshold"):
        ev.tl.cluster_stability(model, adata, threshold=0)
    with pytest.raises(ValueError, match="obs\\['nope'\\]"):
        ev.tl.neighbourhood_stability(model, adata, groupby="nope")
