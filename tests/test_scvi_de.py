"""scvi-tools' differential_expression call forms on the ensemble, against references:
scvi.model.SCVI itself holding the same weights, hand-computed statistics and slow loops."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
import torch

import ensemblevi as ev
from ensemblevi.model import EnsembleSCVI

QUIET = {"progress": False, "key_added": None}


def _scvi_model(adata, seed):
    scvi.settings.seed = seed
    model = scvi.model.SCVI(adata, n_hidden=16, n_latent=4)
    model.train(2, enable_progress_bar=False, batch_size=64)
    return model


@pytest.fixture(scope="module")
def models():
    """Two scVI models, a one-member ensemble of the first and a deep ensemble of both."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the data drawn from the global generators: seeded, so no test's numbers depend on
        # which tests ran before in the same worker (a Monte Carlo check below came 0.001
        # over its tolerance on one unseeded draw)
        scvi.settings.seed = 0
        adata = scvi.data.synthetic_iid(batch_size=40, n_genes=15, n_batches=2)
        scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
        refs = [_scvi_model(adata, s) for s in (0, 1)]
        one = EnsembleSCVI.from_scvi(refs[:1], adata=_registered(adata))
        two = EnsembleSCVI.from_scvi(refs, adata=_registered(adata))
    return refs, one, two


def _registered(adata):
    copy = adata.copy()
    EnsembleSCVI.setup_anndata(copy, batch_key="batch", labels_key="labels")
    return copy


def _scvi_de(ref, **kw):
    # ensemblevi seeds torch's and numpy's global generators with seed=0 for scvi's modes
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  (scvi-tools draws from the legacy generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ref.differential_expression(silent=True, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "change", "delta": 0.3},
        {"mode": "change", "delta": 0.3, "pseudocounts": 1e-4, "batch_correction": True},
        {"mode": "vanilla"},
        {"mode": "change", "delta": 0.3, "weights": "importance", "n_samples_overall": 400},
    ],
    ids=["change", "change-batch-corrected", "vanilla", "change-importance"],
)
def test_scvi_modes_of_one_member_are_scvi_tools(models, kw):
    """One member: scvi-tools' modes give scvi.model.SCVI's numbers, columns and order
    (``delta`` is passed: ensemblevi's default is 0.5, scvi-tools' 0.25)."""
    refs, one, _ = models
    groups = {"groupby": "labels", "group1": "label_1", "group2": "label_2"}
    ref = _scvi_de(refs[0], **groups, **kw)
    got = one.differential_expression(**groups, **kw, **QUIET)
    assert set(ref.columns) <= set(got.columns)
    assert list(got.index) == list(ref.index)  # scvi-tools' sort
    for col in ref.columns:
        if ref[col].dtype.kind in "fb":
            np.testing.assert_allclose(got[col], ref[col], rtol=1e-4, atol=1e-6, err_msg=col)
        else:
            assert (got[col] == ref[col]).all(), col


def test_change_mode_of_a_deep_ensemble_is_the_member_mixture(models):
    """Two members: every member gives half the samples, paired within the member, so the
    ensemble's proba_de and scales are the average of the two scVI models' own."""
    refs, _, two = models
    kw = {
        "groupby": "labels",
        "group1": "label_0",
        "mode": "change",
        "delta": 0.3,
        "pseudocounts": 1e-4,
        "n_samples_overall": 20000,
    }
    per_model = [_scvi_de(r, **kw).loc[two.adata.var_names] for r in refs]
    got = two.differential_expression(**kw, **QUIET).loc[two.adata.var_names]
    for col, tol in (("proba_de", {"atol": 0.03}), ("scale1", {"rtol": 0.05})):
        expect = (per_model[0][col] + per_model[1][col]) / 2
        np.testing.assert_allclose(got[col], expect, **tol, err_msg=col)


def test_one_vs_rest_is_a_loop_of_single_groups_with_scvi_group_columns(models):
    _, _, two = models
    kw = {"n_samples": 4, "delta": 0.3, **QUIET}
    every = two.differential_expression(groupby="labels", **kw)
    labels = list(two.adata.obs["labels"].cat.categories)
    assert list(every["comparison"].unique()) == [f"{g} vs Rest" for g in labels]
    for g in labels:
        block = every[every["group1"] == g]
        alone = two.differential_expression(groupby="labels", group1=g, **kw)
        assert (block["group2"] == "Rest").all()
        pd.testing.assert_frame_equal(block, alone)
    listed = two.differential_expression(
        groupby="labels", group1=labels[:2], group2=labels[2], **kw
    )
    assert list(listed["comparison"].unique()) == [f"{g} vs {labels[2]}" for g in labels[:2]]


def test_idx_forms_match_the_groupby_forms(models):
    _, _, two = models
    obs = two.adata.obs
    kw = {"n_samples": 4, "delta": 0.3, **QUIET}
    pair = two.differential_expression(
        groupby="labels", group1="label_1", group2="label_2", **kw
    ).drop(columns=["comparison", "group1", "group2"])
    in1, in2 = (obs["labels"] == "label_1").to_numpy(), (obs["labels"] == "label_2").to_numpy()
    for a, b in [
        (in1, in2),
        (np.flatnonzero(in1).tolist(), np.flatnonzero(in2).tolist()),
        ("labels == 'label_1'", "labels == 'label_2'"),
    ]:
        got = two.differential_expression(idx1=a, idx2=b, **kw)
        assert "comparison" not in got.columns  # scvi-tools writes none for idx calls
        pd.testing.assert_frame_equal(got, pair)
    rest = two.differential_expression(groupby="labels", group1="label_1", **kw)
    got = two.differential_expression(idx1="labels == 'label_1'", **kw)
    pd.testing.assert_frame_equal(got, rest.drop(columns=["comparison", "group1", "group2"]))


def test_raw_count_columns_by_hand(models):
    _, _, two = models
    adata = two.adata
    t = two.differential_expression(groupby="labels", group1="label_0", n_samples=2, **QUIET)
    t = t.loc[adata.var_names]
    x = np.asarray(adata.X, dtype=float)
    in1 = (adata.obs["labels"] == "label_0").to_numpy()
    for i, cells in ((1, in1), (2, ~in1)):
        np.testing.assert_allclose(t[f"raw_mean{i}"], x[cells].mean(0))
        np.testing.assert_allclose(t[f"non_zeros_proportion{i}"], (x[cells] > 0).mean(0))
        norm = x[cells] / x[cells].sum(1, keepdims=True) * 1e4
        np.testing.assert_allclose(t[f"raw_normalized_mean{i}"], norm.mean(0))
    assert "_scvi_raw_norm_scaling" not in adata.obs  # nothing written into the data
    t = two.differential_expression(
        groupby="labels", group1="label_0", n_samples=2, all_stats=False, **QUIET
    )
    assert not any(c.startswith("raw_") for c in t.columns)


def test_population_pseudocounts_and_scales_in_scvi_units(models):
    """The population estimand's numbers by hand from the member draws; pseudocounts and
    scale1/2 are per unit library (scvi-tools' units), the old default is 1e-5."""
    refs, _, two = models
    adata, seed, s, delta = two.adata, 3, 5, 0.3
    in1 = (adata.obs["labels"] == "label_0").to_numpy()
    cells = [np.flatnonzero(in1), np.flatnonzero(~in1)]
    draw = {"n_samples": s, "return_mean": False, "return_members": True, "library_size": 1e4}
    expr = [
        two.get_normalized_expression(adata, indices=c, seed=seed + 1 + i, **draw)
        for i, c in enumerate(cells)
    ]
    for pc in (None, 1e-4):
        t = two.differential_expression(
            groupby="labels",
            group1="label_0",
            n_samples=s,
            seed=seed,
            delta=delta,
            pseudocounts=pc,
            estimand="population",
            **QUIET,
        )
        t = t.loc[adata.var_names]
        c = 0.1 if pc is None else 1.0  # per 1e4 counts
        med = [np.median(np.log2(e + c), axis=2) for e in expr]  # (K, S, G)
        lfc = (med[0] - med[1]).reshape(-1, adata.n_vars)
        np.testing.assert_allclose(t["proba_de"], np.mean(np.abs(lfc) >= delta, 0))
        np.testing.assert_allclose(t["lfc_max"], lfc.max(0), rtol=1e-6)
        assert (t["pseudocounts"] == c / 1e4).all() and (t["delta"] == delta).all()
        np.testing.assert_allclose(t["scale1"], expr[0].mean((0, 1, 2)) / 1e4, rtol=1e-5)
    # scale1 has the meaning of scvi-tools' scale1: the group's mean normalised expression
    ref = [_scvi_de(r, groupby="labels", group1="label_0", mode="change") for r in refs]
    expect = (ref[0]["scale1"] + ref[1]["scale1"]).loc[adata.var_names] / 2
    np.testing.assert_allclose(t["scale1"], expect, rtol=0.1)


def test_importance_weights_and_outlier_filter_per_member(models):
    """Member-wise draws: with one member and uniform weights the outlier filter keeps the
    cells scvi-tools' filter keeps; importance weights give a full table."""
    _, one, two = models
    kw = {"groupby": "labels", "group1": "label_0", "n_samples": 3, "delta": 0.3, **QUIET}
    t = two.differential_expression(
        weights="importance", importance_weighting_kwargs={"n_mc_samples": 50}, **kw
    )
    assert t["proba_de"].between(0, 1).all() and len(t) == two.adata.n_vars
    assert np.isfinite(t["lfc_median"]).all()
    filtered = one.differential_expression(filter_outlier_cells=True, **kw)
    assert filtered["proba_de"].between(0, 1).all()


def test_key_added_holds_every_comparison_for_scanpy(models):
    _, _, two = models
    adata = two.adata
    t = two.differential_expression(
        groupby="labels", n_samples=3, progress=False, key_added="de_all"
    )
    for g in adata.obs["labels"].cat.categories:
        frame = sc.get.rank_genes_groups_df(adata, g, key="de_all")
        block = t[t["group1"] == g]
        assert list(frame["names"]) == list(block.index)
        np.testing.assert_allclose(frame["pvals_adj"], block["expected_fdr"])
    assert adata.uns["de_all"]["params"]["reference"] == "rest"
    v = two.differential_expression(
        groupby="labels",
        group1="label_0",
        mode="vanilla",
        n_samples_overall=200,
        progress=False,
        key_added="de_v",
    )
    frame = sc.get.rank_genes_groups_df(adata, "label_0", key="de_v")
    np.testing.assert_allclose(frame["scores"], v["bayes_factor"], rtol=1e-5)


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"idx1": [0, 1], "groupby": "labels"}, ValueError, "groupby would go unused"),
        ({"idx2": [0, 1]}, ValueError, "idx2 was given without idx1"),
        ({"idx1": [0, 1], "idx2": [1, 2]}, ValueError, "share 1 cells"),
        ({"idx1": np.ones(3, bool)}, ValueError, "boolean mask of 3"),
        ({"idx1": "nope ==="}, ValueError, "query"),
        ({"group1": "label_0", "mode": "change", "n_samples": 5}, ValueError, "n_samples_overall"),
        ({"group1": "label_0", "mode": "vanilla", "pseudocounts": 0.1}, ValueError, "vanilla"),
        ({"group1": "label_0", "mode": "wilcoxon"}, ValueError, "mode must be"),
        ({"group1": "label_0", "mode": "change", "estimand": "cell_pairs"}, ValueError, "one of"),
        ({"group1": "label_0", "pseudocount": 0.1}, TypeError, "pseudocounts="),
        ({"group1": "label_0", "nonsense": 1}, TypeError, "unexpected keyword 'nonsense'"),
        ({"group1": "label_0", "use_permutation": True}, ValueError, "use_permutation= applies"),
        ({"group1": "label_0", "batchid1": ["batch_0"]}, ValueError, "batch_correction=True"),
        ({"group1": "label_0", "delta": None}, ValueError, "delta=None"),
        (
            {"group1": "label_0", "weights": "importance", "estimand": "cell_pairs"},
            ValueError,
            "cell_pairs",
        ),
        (
            {"group1": "label_0", "weights": "importance", "batch_correction": True},
            ValueError,
            "single batch",
        ),
        ({"group1": "label_0", "weights": "bayes"}, ValueError, "weights must be"),
        (
            {"group1": "label_0", "importance_weighting_kwargs": {"max_cells": 5}},
            ValueError,
            "weights='importance'",
        ),
        ({"group1": ["label_0", "label_1"], "group2": "label_1"}, ValueError, "same group"),
        (
            {"group1": "label_0", "mode": "change", "n_samples_overall": 1},
            ValueError,
            "fewer than the 2 members",
        ),
    ],
)
def test_arguments_that_cannot_apply_raise(models, kw, error, match):
    _, _, two = models
    kw = {"groupby": "labels", **kw} if "idx1" not in kw and "idx2" not in kw else kw
    with pytest.raises(error, match=match):
        two.differential_expression(**kw, **QUIET)


def test_a_single_group_cannot_be_compared(models):
    _, _, two = models
    with pytest.raises(ValueError, match="single group"):
        two.differential_expression(two.adata[:5], groupby="batch", **QUIET)
    assert (
        ev.tl.differential_expression(
            two, groupby="labels", group1="label_0", n_samples=2, **QUIET
        )["proba_de"]
        .notna()
        .all()
    )
