"""Analysis tools: streamed reductions against the full per-cell frames, markers, novelty."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import private_copy

import ensemblevi as ev
from ensemblevi._constants import FLOAT_BUDGET
from ensemblevi.model import EnsembleSCVI
from ensemblevi.tl._embedding import UMAP_KEY
from ensemblevi.tl._markers import check_markers, load_markers, parse_marker_options


@pytest.fixture(scope="module")
def heart(heart_model):
    """This file's own copy of the session's heartlike ensemble (conftest.py): the tools
    write into its AnnData."""
    model = private_copy(heart_model)
    return model.adata, model


def test_markers_are_checked_with_close_matches(tmp_path):
    names = ["DCN", "GSN", "Acta2", "CD14"]
    found, missing = check_markers(
        {"Fibroblast": ["DCN", "GSNN"], "SMC": ["ACTA2"], "Nope": ["CD14"]},
        names,
        groups=["Fibroblast", "SMC"],
    )
    assert found == {"Fibroblast": ["DCN"]}
    row = missing.set_index("gene").loc["GSNN"]
    assert row["problem"] == "gene not in the data" and "GSN" in row["close_matches"]
    assert "Acta2" in missing.set_index("gene").loc["ACTA2", "close_matches"]
    assert "group not in the data" in set(missing["problem"])
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"B": ["MS4A1"]}))
    assert load_markers(path) == {"B": ["MS4A1"]}
    assert parse_marker_options(["B=MS4A1,CD79A"]) == {"B": ["MS4A1", "CD79A"]}
    with pytest.raises(ValueError, match="Unknown marker set"):
        load_markers("nope")
    assert load_markers("heart")["Myeloid"] == ["CD14", "C1QA", "CD68"]


def test_expression_spread_matches_the_full_decomposition(heart):
    adata, model = heart
    markers = load_markers("heart")
    out = ev.tl.expression_spread(
        model, adata, genes=markers, groupby="cell_type", n_samples=4, progress=False
    )
    cells = np.flatnonzero(adata.obs["cell_type"].isin(list(markers)))
    genes = list(dict.fromkeys(g for v in markers.values() for g in v))
    full = model.get_uncertainty(adata, indices=cells, gene_list=genes, n_samples=4, progress=False)
    summary = out["summary"].set_index(["group", "gene"])
    for group, gene_list in markers.items():
        names = adata.obs_names[cells][adata.obs["cell_type"].iloc[cells] == group]
        for gene in gene_list:
            row = summary.loc[(group, gene)]
            ref_mean = full["mean"].loc[names, gene]
            assert row["n_cells"] == len(names)
            np.testing.assert_allclose(row["mean"], ref_mean.mean(), rtol=1e-5)
            np.testing.assert_allclose(row["median"], ref_mean.median(), rtol=1e-5)
            np.testing.assert_allclose(
                row["var_between"], full["var_between"].loc[names, gene].mean(), rtol=1e-4
            )
            # per-cell std across members squared is the between-member variance
            sel = out["cells"][(out["cells"]["gene"] == gene) & (out["cells"]["group"] == group)]
            np.testing.assert_allclose(
                sel["std"].to_numpy() ** 2,
                full["var_between"].loc[sel["cell"], gene].to_numpy(),
                rtol=1e-3,
                atol=1e-8,
            )
    assert len(out["members"]) == 3 * 9
    # between-member share of the model's variance, from the full cells x genes frames
    for (group, gene), row in summary.iterrows():
        names = adata.obs_names[cells][adata.obs["cell_type"].iloc[cells] == group]
        b = full["var_between"].loc[names, gene].mean()
        w = full["var_within"].loc[names, gene].mean()
        np.testing.assert_allclose(row["frac_between"], b / (b + w), rtol=1e-4)
    assert "expression_spread" in adata.uns["ensemblevi"]
    with pytest.raises(ValueError, match="not in the data"):
        ev.tl.expression_spread(model, adata, genes=["NOT_A_GENE"], groupby="cell_type")


def test_gene_uncertainty_streams_the_same_numbers(heart):
    adata, model = heart
    table = ev.tl.gene_uncertainty(model, adata, groupby="cell_type", n_samples=3, progress=False)
    full = model.get_uncertainty(adata, n_samples=3, progress=False)
    cv = np.sqrt(full["var_between"]) / full["mean"]
    np.testing.assert_allclose(
        table.loc[adata.var_names, "cv_between"], cv.mean(0).to_numpy(), rtol=1e-4
    )
    by_group = cv.groupby(adata.obs["cell_type"].astype(str).to_numpy()).mean().T
    for group in by_group.columns:
        np.testing.assert_allclose(
            adata.varm["ensemblevi_cv_between_by_group"][group], by_group[group], rtol=1e-4
        )
    assert table["cv_between"].is_monotonic_decreasing and table["rank"].iloc[0] == 1
    assert adata.var["ensemblevi_cv_between_rank"].min() == 1


def _reference(model, adata, n_samples, batch_size, library_size=1e4, seed=0):
    """Member means and variance parts from the members' samples, in float64 numpy.

    ``get_normalized_expression`` draws the same latent samples as ``iter_uncertainty``
    for the same seed and batch size; everything after the draws is computed here.
    """
    x = model.get_normalized_expression(
        adata,
        library_size=library_size,
        n_samples=n_samples,
        return_members=True,
        return_mean=False,
        batch_size=batch_size,
        seed=seed,
    ).astype(np.float64)
    assert x.shape == (model.n_members, n_samples, adata.n_obs, adata.n_vars)
    members = x.mean(1)  # (K, cells, genes)
    mean, vb, vw = members.mean(0), members.var(0), x.var(1).mean(0)
    return members, mean, vb, vw


def test_cell_novelty_scores_and_rule(heart):
    adata, model = heart
    alpha = 0.05
    scores = ev.tl.cell_novelty(model, adata, alpha=alpha, n_samples=2, progress=False)
    info = adata.uns["ensemblevi"]["cell_novelty"]
    # novelty_cv: root mean square over genes of the between-member CV, from the samples
    bs = int(np.clip(FLOAT_BUDGET // (2 * model.n_members * adata.n_vars), 1, 256))
    _, mean, vb, _ = _reference(model, adata, 2, bs)
    np.testing.assert_allclose(
        scores["novelty_cv"].to_numpy(), np.sqrt((vb / mean**2).mean(1)), rtol=1e-4
    )
    assert (scores["novelty_llgap"] >= -1e-9).all()  # Jensen: mixture ELBO >= mean ELBO
    train, val = np.sort(model.train_indices), np.sort(model.validation_indices)
    assert len(val) == 40 and np.array_equal(info["calibration_cells"], val)
    # novelty_knn by brute force: every pairwise distance, per member, in float64
    knn = np.zeros(adata.n_obs)
    for k in range(model.n_members):
        z = model.get_latent_representation(adata, member=k).astype(np.float64)
        d = np.sqrt(((z[:, None, :] - z[None, train, :]) ** 2).sum(-1))  # cells x training
        d[train, np.arange(len(train))] = np.inf  # a training cell is not its own neighbour
        mean15 = np.sort(d, 1)[:, :15].mean(1)
        knn += mean15 / np.median(mean15[val])
    knn /= model.n_members
    np.testing.assert_allclose(scores["novelty_knn"], knn, rtol=1e-5)
    # the deciding score: the mean of knn and the expression distance (itself checked
    # against a float64 SVD and a brute-force kNN in test_new_sample_expression.py)
    from ensemblevi.tl._novelty_expression import expression_knn
    from ensemblevi.tl._novelty_rule import novelty_reference

    self_rows = np.full(adata.n_obs, -1)
    self_rows[train] = np.arange(len(train))
    expr, _ = expression_knn(model, adata, novelty_reference(model), 15, self_rows)
    np.testing.assert_allclose(scores["novelty_expr"], expr, rtol=1e-6)
    # novelty_fit is checked against get_elbo and scipy in the test below
    fit = scores["novelty_fit"].to_numpy()
    assert np.median(fit[val]) == pytest.approx(1.0)
    # the larger of the mean distance and the fit, each over its 95th percentile on the
    # calibration cells (the combination is checked by loop in test_new_sample_expression.py)
    dist = (knn + expr) / 2
    combined = np.maximum(dist / np.quantile(dist[val], 0.95), fit / np.quantile(fit[val], 0.95))
    np.testing.assert_allclose(scores["novelty_combined"], combined, rtol=1e-5)
    # training cells are never tested nor flagged
    tested = adata.obs["ensemblevi_novelty_tested"].to_numpy()
    assert not tested[train].any() and tested[val].all()
    flags = adata.obs["ensemblevi_is_novel"].to_numpy()
    assert not flags[train].any()
    assert info["decides"] == "novelty_combined"
    # each validation cell against the conformal threshold of the other half: by loop,
    # for the deciding score (is_novel) and for novelty_knn (its own flag)
    perm = np.random.default_rng(0).permutation(len(val))
    halves = perm[:20], perm[20:]
    knn_flags = scores["novelty_knn_flag"].to_numpy()
    for this, other in (halves, halves[::-1]):
        rank = int(np.ceil(21 * (1 - alpha)))  # 20 cells: the 20th smallest is the max
        for score, got in ((combined, flags), (knn, knn_flags)):
            ref = np.sort(score[val[other]])
            np.testing.assert_array_equal(got[val[this]], score[val[this]] > ref[rank - 1])
    assert info["novelty_combined_fpr_heldout"] == pytest.approx(flags[val].mean())
    assert info["novelty_knn_fpr_heldout"] == pytest.approx(knn_flags[val].mean())
    assert info["novelty_combined_threshold"] == pytest.approx(np.sort(combined[val])[39 - 1])
    assert info["novelty_knn_threshold"] == pytest.approx(np.sort(knn[val])[39 - 1])
    assert info["n_flagged"] == int(flags.sum()) and info["n_tested"] == len(val)
    assert "validation" in info["calibrated_on"]
    # one member is accepted (issue 35: the rule needs no disagreement); an untrained
    # model still has no held-out cells to calibrate on
    single = EnsembleSCVI(adata, ensemble="single", n_hidden=8, n_latent=2)
    with pytest.raises(ValueError, match="training split"):
        ev.tl.cell_novelty(single, adata)


def test_one_pass_equals_the_separate_calls(heart):
    adata, model = heart
    genes = ["DCN", "GSN", "CD14"]  # summarised in every group: the same cells as the pass
    kw = {"n_samples": 3, "seed": 1, "progress": False}
    spread = ev.tl.expression_spread(model, adata, genes=genes, groupby="cell_type", **kw)
    table = ev.tl.gene_uncertainty(model, adata, groupby="cell_type", **kw)
    novelty = ev.tl.cell_novelty(model, adata, alpha=0.05, **kw)
    stored = {
        "var": adata.var.filter(like="ensemblevi_").copy(),
        "varm": adata.varm["ensemblevi_cv_between_by_group"].copy(),
        "obs": adata.obs.filter(like="ensemblevi_").copy(),
        "novelty": dict(adata.uns["ensemblevi"]["cell_novelty"]),
    }
    adata.obs.drop(columns=stored["obs"].columns, inplace=True)
    out = ev.tl.uncertainty_analysis(
        model, adata, genes, groupby="cell_type", alpha=0.05, embedding=True, **kw
    )
    for name in ("cells", "members", "summary"):
        pd.testing.assert_frame_equal(out["spread"][name], spread[name])
    pd.testing.assert_frame_equal(out["genes"], table)
    pd.testing.assert_frame_equal(out["novelty"], novelty)
    pd.testing.assert_frame_equal(adata.var.filter(like="ensemblevi_"), stored["var"])
    pd.testing.assert_frame_equal(adata.varm["ensemblevi_cv_between_by_group"], stored["varm"])
    pd.testing.assert_frame_equal(adata.obs.filter(like="ensemblevi_"), stored["obs"])
    info = adata.uns["ensemblevi"]["cell_novelty"]
    for key, value in stored["novelty"].items():
        if isinstance(value, dict):
            for name, v in value.items():
                np.testing.assert_array_equal(info[key][name], v)
        else:
            np.testing.assert_array_equal(info[key], value)
    umap = adata.obsm[UMAP_KEY]
    assert umap.shape == (adata.n_obs, 2) and np.isfinite(umap).all()


def test_novelty_fit_against_get_elbo_and_scipy(heart):
    # novelty_fit = (members' mean -ELBO + sum_g log Poisson(x_g | x_g)) / sqrt(total),
    # over its median on the calibration cells; with one latent sample and get_elbo's
    # minibatches the pass draws get_elbo's latents
    from scipy.stats import poisson

    adata, model = heart
    bs = int(np.clip(FLOAT_BUDGET // (model.n_members * adata.n_vars), 1, 256))
    scores = ev.tl.cell_novelty(model, adata, n_samples=1, seed=4, progress=False)
    table = model.get_elbo(adata, return_mean=False, return_table=True, seed=4, batch_size=bs)
    nll = -table.drop(columns="mixture").to_numpy().mean(1)
    x = adata.layers["counts"]
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
    saturated = np.array([poisson.logpmf(row, row).sum() for row in x])  # cell by cell
    raw = (nll + saturated) / np.sqrt(np.maximum(x.sum(1), 1))
    val = np.sort(model.validation_indices)
    np.testing.assert_allclose(scores["novelty_fit"], raw / np.median(raw[val]), rtol=1e-5)
    info = adata.uns["ensemblevi"]["cell_novelty"]
    np.testing.assert_allclose(
        info["calibration_scores"]["novelty_fit"], (raw / np.median(raw[val]))[val], rtol=1e-5
    )


def test_streamed_elbo_equals_get_elbo_on_the_same_draws(heart):
    # the novelty ELBO is read from the pass' first latent sample: with one sample and
    # get_elbo's minibatches (128 cells) the draws are get_elbo's, and so are the values
    from ensemblevi.model.base._uncertainty import UncertaintySummary
    from ensemblevi.tl._stream import ElboReducer, SummaryReducer, stream

    adata, model = heart
    elbo = ElboReducer(model.n_members, adata.n_obs)
    summary = SummaryReducer(UncertaintySummary(adata.n_obs, adata.n_vars))
    stream(model, adata, [summary, elbo], 1, seed=4, batch_size=128, progress=False)
    table = model.get_elbo(adata, return_mean=False, return_table=True, seed=4)
    members = table.drop(columns="mixture").to_numpy().T
    np.testing.assert_allclose(elbo.values, members, rtol=1e-6)
    # on a subset of cells (the reference's calibration cells), the same cells' values
    cells = np.arange(0, adata.n_obs, 3)
    sub = ElboReducer(model.n_members, adata.n_obs)
    sub.cells = cells
    stream(model, adata, [sub], 2, seed=4, progress=False)
    assert np.isnan(np.delete(sub.values, cells, axis=1)).all()
    assert np.isfinite(sub.values[:, cells]).all()


def test_one_pass_against_a_float64_reference(heart):
    adata, model = heart
    markers = load_markers("heart")  # 3 of the 11 cell types
    n, bs = 3, 64
    out = ev.tl.uncertainty_analysis(
        model, adata, markers, groupby="cell_type", n_samples=n, batch_size=bs, progress=False
    )
    members, mean, vb, vw = _reference(model, adata, n, bs)
    col = {g: j for j, g in enumerate(adata.var_names)}
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    cells = out["spread"]["cells"]
    summary = out["spread"]["summary"].set_index(["group", "gene"])
    for group, gene_list in markers.items():
        sel = labels == group
        for gene in gene_list:
            j = col[gene]
            rows = cells[(cells["group"] == group) & (cells["gene"] == gene)]
            np.testing.assert_array_equal(rows["cell"], adata.obs_names[sel])
            np.testing.assert_allclose(rows["mean"], mean[sel, j], rtol=1e-5)
            np.testing.assert_allclose(rows["std"], members[:, sel, j].std(0), rtol=1e-4)
            b, w = vb[sel, j].mean(), vw[sel, j].mean()
            np.testing.assert_allclose(
                summary.loc[(group, gene), "frac_between"], b / (b + w), rtol=1e-4
            )
    cv = np.sqrt(vb) / mean
    genes = out["genes"].loc[adata.var_names]
    np.testing.assert_allclose(genes["cv_between"], cv.mean(0), rtol=1e-4)
    np.testing.assert_allclose(genes["mean"], mean.mean(0), rtol=1e-5)
    by_group = adata.varm["ensemblevi_cv_between_by_group"]
    for group in np.unique(labels):
        np.testing.assert_allclose(by_group[group], cv[labels == group].mean(0), rtol=1e-4)
    np.testing.assert_allclose(
        out["novelty"]["novelty_cv"], np.sqrt((vb / mean**2).mean(1)), rtol=1e-4
    )


def test_cell_novelty_on_a_copy_tests_the_same_cells(heart_model):
    model = private_copy(heart_model)
    kw = {"alpha": 0.05, "n_samples": 2, "seed": 0, "progress": False}
    original = ev.tl.cell_novelty(model, model.adata, **kw)
    assert original["novelty_tested"].sum() == len(model.validation_indices)  # not all
    for other in (model.adata.copy(), model.adata[::-1].copy()):  # by cell names
        scores = ev.tl.cell_novelty(model, other, **kw).loc[original.index]
        np.testing.assert_array_equal(scores["novelty_tested"], original["novelty_tested"])
        np.testing.assert_array_equal(scores["is_novel"], original["is_novel"])
        np.testing.assert_allclose(scores["novelty_knn"], original["novelty_knn"], rtol=1e-5)


def test_fuzzy_graph_matches_umap_learn():
    from scipy import sparse
    from sklearn.neighbors import NearestNeighbors
    from umap.umap_ import fuzzy_simplicial_set

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(150, 5)), rng.normal(4, 0.3, size=(50, 5))])
    x[7] = x[8]  # a duplicate: a zero distance to another cell
    k = 12
    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    ours = ev.tl._embedding.fuzzy_graph(idx, dist)
    ref, _, _ = fuzzy_simplicial_set(
        sparse.coo_matrix((len(x), 1)), k, None, None, knn_indices=idx, knn_dists=dist
    )
    assert (ours != ours.T).nnz == 0  # symmetric
    np.testing.assert_allclose(ours.toarray(), ref.toarray(), rtol=1e-4, atol=1e-6)
