"""DE with biological replicates (issue 34): the estimator against independent references,
the sample-aware path of ``differential_expression`` and its honesty without samples."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import ensemblevi as ev
from ensemblevi.model.base import _de_moderated as M
from ensemblevi.model.base import _de_samples as S

# -- the estimator's core numbers -------------------------------------------------------


def test_without_prior_the_test_is_scipys_t_test():
    rng = np.random.default_rng(0)
    y1, y2 = rng.normal(0, 1, (4, 30)), rng.normal(0.3, 1, (5, 30))
    lfc, s2, df, v = M.design_stats(y1, y2, "between")
    res = M.moderated_test(lfc, s2, df, v, prior=False)
    ref = stats.ttest_ind(y1, y2, axis=0, equal_var=True)
    np.testing.assert_allclose(res["t"], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(res["pval"], ref.pvalue, rtol=1e-8)
    d1, d2 = rng.normal(0, 1, (6, 30)), rng.normal(0, 1, (6, 30))
    lfc, s2, df, v = M.design_stats(d1, d2, "paired")
    res = M.moderated_test(lfc, s2, df, v, prior=False)
    ref = stats.ttest_rel(d1, d2, axis=0)
    np.testing.assert_allclose(res["t"], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(res["pval"], ref.pvalue, rtol=1e-8)


def test_prior_recovered_from_scaled_f_variances():
    """s2 / s0^2 ~ F(df, d0): Smyth's moments give d0 and s0^2 back."""
    rng = np.random.default_rng(1)
    g, df, d0, s0sq = 40000, 6.0, 5.0, 0.2
    sigma2 = s0sq * d0 / rng.chisquare(d0, g)
    s2 = sigma2 * rng.chisquare(df, g) / df
    d0_hat, s0_hat = M.fit_f_dist(s2, df)
    assert d0_hat == pytest.approx(d0, rel=0.15)
    np.testing.assert_allclose(s0_hat, s0sq, rtol=0.05)
    # no spread beyond sampling: infinite prior df, s0^2 the common variance
    d0_inf, s0_inf = M.fit_f_dist(0.3 * rng.chisquare(df, g) / df, df)
    assert d0_inf > 200 and s0_inf.mean() == pytest.approx(0.3, rel=0.05)


def test_trigamma_inverse_inverts():
    x = np.array([1e-3, 0.1, 1.0, 5.0, 100.0])
    np.testing.assert_allclose(special.polygamma(1, M.trigamma_inverse(x)), x, rtol=1e-6)


def test_moderated_t_and_treat_match_a_float64_loop():
    rng = np.random.default_rng(2)
    g, df, v = 300, 4.0, 0.5
    lfc = rng.normal(0, 1, g)
    s2 = 0.3 * rng.chisquare(df, g) / df * np.exp(rng.normal(0, 0.5, g))
    extra = rng.uniform(0, 0.05, g)
    for delta in (0.0, 0.4):
        res = M.moderated_test(lfc, s2, df, v, extra_var=extra, delta=delta)
        d0, s0 = res["d0"], M.fit_f_dist(s2, df)[1]
        for i in range(g):  # limma's formulas, one gene at a time
            post = (d0 * s0[i] + df * s2[i]) / (d0 + df)
            se = (post * v + extra[i]) ** 0.5
            if delta == 0:
                p = 2 * stats.t.sf(abs(lfc[i] / se), df + d0)
            else:
                p = stats.t.sf((abs(lfc[i]) - delta) / se, df + d0) + stats.t.sf(
                    (abs(lfc[i]) + delta) / se, df + d0
                )
            assert res["se"][i] == pytest.approx(se, rel=1e-12)
            assert res["pval"][i] == pytest.approx(min(p, 1.0), rel=1e-9)


def test_bh_matches_scipy():
    p = np.random.default_rng(3).uniform(size=200) ** 3
    np.testing.assert_allclose(M.bh(p), stats.false_discovery_control(p), rtol=1e-12)


def test_pseudobulk_and_effective_library():
    rng = np.random.default_rng(4)
    x = rng.poisson(3.0, (40, 50)).astype(float)
    groups = [np.arange(0, 10), np.arange(10, 25), np.arange(25, 40)]
    sums, libs = S.pseudobulk(x, groups)
    for u, c in enumerate(groups):  # a loop
        np.testing.assert_allclose(sums[u], x[c].sum(0))
        assert libs[u] == x[c].sum()
    # a composition shift: 20% of genes 8x up in unit 0 leaves the others' log-CPM equal
    base = np.tile(rng.uniform(50, 500, 100), (3, 1))
    up = base.copy()
    up[0, :20] *= 8
    eff = S.effective_library(up, up.sum(1))
    y = S.log_cpm(up, eff, prior_count=0.0)
    np.testing.assert_allclose(y[0, 20:], y[1, 20:], atol=1e-9)


def test_units_and_designs():
    samples = np.repeat(["a", "b", "c", "d"], 20)
    cells1, cells2 = np.arange(0, 40), np.arange(40, 80)  # a, b vs c, d
    u = S.make_units(samples, cells1, cells2)
    assert u.design == "between" and u.samples1 == ["a", "b"] and u.samples2 == ["c", "d"]
    side = np.tile([0, 1], 40)  # both sides in every sample
    u = S.make_units(samples, np.flatnonzero(side == 0), np.flatnonzero(side == 1))
    assert u.design == "paired" and u.samples1 == u.samples2 == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="design='paired'"):
        S.make_units(
            samples, np.flatnonzero(side == 0), np.flatnonzero(side == 1), design="between"
        )
    u = S.make_units(samples, cells1[: 45 - 40 + 20], cells2, min_cells=10)  # b has 5 cells
    assert u.samples1 == ["a"] and u.dropped == {"b": 5}


def test_counts_method_calibrated_on_simulated_donors():
    """Null between conditions: few calls; true changes: FDR near the target."""
    calls, fdrs = [], []
    for seed in range(3):
        a = ev.data.synthetic_replicates(
            n_cells=800, n_genes=300, n_samples=8, seed=seed, de_frac=0.0
        )
        samples = a.obs["sample"].astype(str).to_numpy()
        c1 = np.flatnonzero(a.obs["condition"] == "stim")
        c2 = np.flatnonzero(a.obs["condition"] == "ctrl")
        t = S.sample_de(None, a, a.X, c1, c2, samples, a.var_names, method="counts")
        calls.append(t["is_de_fdr_0.05"].sum())
        b = ev.data.synthetic_replicates(n_cells=800, n_genes=300, n_samples=8, seed=seed)
        truth = b.var["is_de_stim_vs_ctrl"]
        t = S.sample_de(None, b, b.X, c1, c2, samples, b.var_names, method="counts")
        called = t.index[t["is_de_fdr_0.05"]]
        fdrs.append((~truth[called]).mean() if len(called) else 0.0)
        assert set(t.columns) >= {"lfc", "lfc_se", "pval", "padj", "n_samples1", "design"}
    assert np.mean(calls) / 300 <= 0.01
    assert np.mean(fdrs) <= 0.12


def test_pseudobulk_method_is_pydeseq2():
    pytest.importorskip("pydeseq2")
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.ds import DeseqStats

    a = ev.data.synthetic_replicates(n_cells=400, n_genes=40, n_samples=4, seed=5)
    samples = a.obs["sample"].astype(str).to_numpy()
    c1 = np.flatnonzero(a.obs["condition"] == "stim")
    c2 = np.flatnonzero(a.obs["condition"] == "ctrl")
    t = S.sample_de(None, a, a.X, c1, c2, samples, a.var_names, method="pseudobulk")
    # the reference: PyDESeq2 on pseudobulks summed by pandas
    x = pd.DataFrame(a.X.toarray(), columns=a.var_names).groupby(samples).sum()
    cond = a.obs.groupby("sample", observed=True)["condition"].first().astype(str)
    meta = pd.DataFrame({"condition": cond.loc[x.index].to_numpy()}, index=x.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=x.astype(int), metadata=meta, design="~condition", quiet=True)
        dds.deseq2()
        ds = DeseqStats(dds, contrast=["condition", "stim", "ctrl"], quiet=True)
        ds.summary()
    ref = ds.results_df
    # the same fit up to the optimiser's tolerance (the samples come in another order)
    np.testing.assert_allclose(t.loc[ref.index, "lfc"], ref["log2FoldChange"], atol=1e-4)
    np.testing.assert_allclose(
        t.loc[ref.index, "pval"], ref["pvalue"].fillna(1.0), rtol=1e-3, atol=1e-6
    )


# -- the simulators ---------------------------------------------------------------------


def test_simulated_sample_effects_have_the_stated_sd():
    sd = 0.4
    a = ev.data.synthetic_replicates(
        n_cells=3200,
        n_genes=200,
        n_samples=16,
        sample_sd=sd,
        base_mean_low=20,
        base_mean_high=40,
        theta=50,
        seed=6,
        de_frac=0.0,
        n_types=1 + 1,
        type_de_frac=0.0,
    )
    u = a.varm["sample_effect"].astype(np.float64)  # genes x samples
    # sum of squares / sd^2 ~ chi^2(n): within 4 of its standard deviations
    n = u.size
    assert abs((u**2).sum() / sd**2 - n) < 4 * np.sqrt(2 * n)
    # the counts carry them: per-sample log pseudobulk, centred, regresses on u with slope 1
    samples = a.obs["sample"].cat.codes.to_numpy()
    x = a.X.toarray()
    pb = np.stack([x[samples == s].sum(0) / x[samples == s].sum() for s in range(16)])
    y = np.log(pb).T
    y -= y.mean(1, keepdims=True)
    uc = u - u.mean(1, keepdims=True)
    slope = (y * uc).sum() / (uc**2).sum()
    assert slope == pytest.approx(1.0, abs=0.05)
    assert set(a.obs["condition"]) == {"ctrl", "stim"}
    per = a.obs.groupby("sample", observed=True)["condition"].nunique()
    assert (per == 1).all()  # between: one condition per sample


def test_simulator_paired_design_and_truth():
    a = ev.data.synthetic_replicates(
        n_cells=800,
        n_genes=100,
        n_samples=4,
        design="paired",
        de_frac=0.3,
        lfc_range=(1.0, 1.5),
        seed=7,
    )
    per = a.obs.groupby("sample", observed=True)["condition"].nunique()
    assert (per == 2).all()
    lfc = a.var["lfc_stim_vs_ctrl"]
    assert a.var["is_de_stim_vs_ctrl"].sum() == 30
    assert ((lfc.abs() >= 1.0) == a.var["is_de_stim_vs_ctrl"]).all() and lfc.abs().max() <= 1.5


def test_pbmc_pseudo_samples_thinning():
    from ensemblevi.benchmark._thinning import pseudo_samples, thin_by_group

    rng = np.random.default_rng(8)
    x = rng.poisson(20.0, (200, 30))
    keep = np.vstack([np.ones(30), np.full(30, 0.25)])
    group = np.repeat([0, 1], 100)
    out = thin_by_group(x, group, keep, rng).toarray()
    np.testing.assert_array_equal(out[:100], x[:100])  # keep 1: untouched
    assert (out <= x).all()
    # E[x'] = 0.25 x; the sum of 100 x 30 binomials within 4 sds of its mean
    mean, var = 0.25 * x[100:].sum(), 0.25 * 0.75 * x[100:].sum()
    assert abs(out[100:].sum() - mean) < 4 * np.sqrt(var)

    from anndata import AnnData

    n = 800
    counts = rng.poisson(rng.gamma(2.0, 5.0, (1, 60)), (n, 60)).astype(np.float32)
    raw = AnnData(
        counts, obs=pd.DataFrame({"cell_type": ["T"] * n}, index=[f"c{i}" for i in range(n)])
    )
    raw.var_names = [f"g{j}" for j in range(60)]
    a = pseudo_samples(
        raw,
        group="T",
        n_samples=4,
        sample_sd=0.5,
        de_fraction=0.0,
        n_top_genes=None,
        min_counts=1,
        seed=1,
    )
    assert a.var["is_de_stim_vs_ctrl"].sum() == 0 and a.obs["sample"].nunique() == 4
    u = a.varm["sample_effect"].astype(np.float64)  # genes x samples
    s = a.obs["sample"].cat.codes.to_numpy()
    pb = np.stack([np.asarray(a.X[s == k].sum(0)).ravel() for k in range(4)]).astype(float)
    # the log ratio of two samples' counts follows u[s] - u[s'] (cell counts per sample equal)
    r = np.log(pb[1] / pb[0]) - (u[:, 1] - u[:, 0])
    assert abs(np.median(r)) < 0.1 and np.std(r) < 0.15  # u's own sd is 0.5
    b = pseudo_samples(
        raw,
        group="T",
        n_samples=4,
        design="paired",
        de_fraction=0.2,
        n_top_genes=None,
        min_counts=1,
        seed=1,
    )
    assert (b.obs.groupby("sample", observed=True)["condition"].nunique() == 2).all()
    assert b.var["is_de_stim_vs_ctrl"].sum() == 12


# -- the model's entry points -----------------------------------------------------------


@pytest.fixture(scope="session")
def rep_model():
    adata = ev.data.synthetic_replicates(n_cells=480, n_genes=60, n_samples=6, seed=9, n_types=2)
    ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = ev.model.EnsembleSCVI(
        adata, n_members=2, ensemble="deep", n_hidden=16, n_latent=4, seed=0
    )
    model.train(max_epochs=3, seed=0, enable_progress_bar=False)
    return adata, model


def test_sample_aware_de_between_and_stored(rep_model):
    adata, model = rep_model
    t = model.differential_expression(
        groupby="condition", group1="stim", group2="ctrl", sample_key="sample", key_added="rep"
    )
    assert (t["inference_unit"] == "samples").all() and t.attrs["inference_unit"] == "samples"
    assert "population" in t.attrs["statement"]
    assert t.attrs["replicates"][0]["n_samples1"] == 3 and t["design"].iloc[0] == "between"
    params = adata.uns["rep"]["params"]
    assert params["inference_unit"] == "samples" and params["sample_key"] == "sample"
    assert params["replicates"]["stim"]["n_samples2"] == 3
    import scanpy as sc

    df = sc.get.rank_genes_groups_df(adata, "stim", key="rep")
    np.testing.assert_allclose(df["pvals"], t["pval"].to_numpy())


def test_sample_aware_ensemble_method_and_paired(rep_model):
    adata, model = rep_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = ev.tl.differential_expression(
            model,
            adata,
            groupby="cell_type",
            group1="B",
            group2="A",
            sample_key="sample",
            method="ensemble",
            key_added=None,
        )
    assert t["design"].iloc[0] == "paired" and t["n_samples1"].iloc[0] == 6
    assert "lfc_member_std" in t and np.isfinite(t["pval"]).all()


def test_two_samples_per_side_warn_about_calibration(rep_model):
    adata, model = rep_model
    stim = adata.uns["synthetic_replicates"]["stim_samples"]
    ctrl = [s for s in adata.obs["sample"].cat.categories if s not in stim]
    s = adata.obs["sample"].astype(str).to_numpy()
    with pytest.warns(UserWarning, match="not shown to hold"):
        t = model.differential_expression(
            idx1=np.isin(s, stim[:2]),
            idx2=np.isin(s, ctrl[:2]),
            sample_key="sample",
            key_added=None,
        )
    assert not t.attrs["replicates"][0]["calibrated"]


def test_one_sample_per_side_falls_back_to_cells_and_says_so(rep_model):
    adata, model = rep_model
    s = adata.obs["sample"].astype(str)
    idx1 = np.flatnonzero(s == "s0")
    idx2 = np.flatnonzero(s == "s1")
    with pytest.warns(UserWarning, match="fewer than 2 per side"):
        t = model.differential_expression(
            idx1=idx1, idx2=idx2, sample_key="sample", n_samples=5, progress=False, key_added=None
        )
    assert t.attrs["inference_unit"] == "cells" and "not the population" in t.attrs["statement"]
    assert (t["inference_unit"] == "cells").all()


def test_without_sample_key_a_sample_column_is_named(rep_model):
    adata, model = rep_model
    with pytest.warns(UserWarning, match="sample_key='sample'"):
        t = model.differential_expression(
            groupby="condition",
            group1="stim",
            group2="ctrl",
            n_samples=5,
            progress=False,
            key_added="cells",
        )
    assert t.attrs["inference_unit"] == "cells"
    assert t.attrs["unused_sample_columns"] == ["sample"]
    assert adata.uns["cells"]["params"]["inference_unit"] == "cells"
    with pytest.raises(ValueError, match="pass sample_key="):
        model.differential_expression(groupby="condition", group1="stim", method="counts")
    with pytest.raises(KeyError, match="donor"):
        model.differential_expression(groupby="condition", group1="stim", sample_key="donor")


def test_sample_like_columns():
    obs = pd.DataFrame(
        {
            "donor_id": list("aabb"),
            "batch": list("xyxy"),
            "ct": list("ABAB"),
            "n_genes": [1.0, 2.0, 3.0, 4.0],
        }
    )
    assert S.sample_like_columns(obs, np.array([0, 2]), np.array([1, 3]), ("ct",)) == [
        "donor_id"
    ]  # batch has one value per side here
    assert "batch" in S.sample_like_columns(obs, np.array([0, 1]), np.array([2, 3]))


def test_cli_run_and_de_with_sample_key(tmp_path):
    """``run --sample-key`` is recorded; ``de`` then compares samples and says so."""
    import json

    from typer.testing import CliRunner

    from ensemblevi.cli import app

    adata = ev.data.synthetic_replicates(n_cells=480, n_genes=60, n_samples=6, seed=11)
    path = tmp_path / "reps.h5ad"
    adata.write_h5ad(path)
    markers = tmp_path / "markers.json"
    markers.write_text(json.dumps({"stim": ["gene_00000"], "ctrl": ["gene_00001"]}))
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "run",
            "--data",
            str(path),
            "--labels-key",
            "condition",
            "--sample-key",
            "sample",
            "--markers",
            str(markers),
            "--epochs",
            "2",
            "--members",
            "2",
            "--n-samples",
            "2",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["config"]["sample_key"] == "sample"
    res = runner.invoke(
        app, ["de", str(out), "--groupby", "condition", "--group1", "stim", "--group2", "ctrl"]
    )
    assert res.exit_code == 0, res.output
    assert "comparing samples (3 vs 3, between)" in res.output
    settings = json.loads((out / "tables" / "de_stim_vs_ctrl.json").read_text())
    assert settings["inference_unit"] == "samples" and settings["replicates"]["n_samples1"] == 3
    report = (out / "report.html").read_text()
    assert "Replicates: the samples of obs" in report and "3 vs 3" in report
    # without samples: the output says what the calls describe
    res = runner.invoke(
        app,
        [
            "de",
            str(out),
            "--groupby",
            "condition",
            "--group1",
            "stim",
            "--group2",
            "ctrl",
            "--sample-key",
            "sample",
            "--design",
            "paired",
        ],
    )
    assert res.exit_code == 2 and "design='paired'" in res.output


def test_storey_adjustment_against_a_slow_loop():
    """``adjust(p, "storey")``: BH's step-up (a loop over ranks) times Storey's null share."""
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(size=160), rng.beta(0.1, 4, 40)])
    m = p.size
    pi0 = min(1.0, sum(x > 0.5 for x in p) / (0.5 * m))
    order = sorted(range(m), key=lambda i: p[i])
    expect = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):  # step-up: the smallest p * m / rank at or above this rank
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        expect[i] = min(1.0, pi0 * running)
    np.testing.assert_allclose(M.adjust(p, "storey"), expect, rtol=1e-12)
    assert M.null_fraction(rng.uniform(size=4000)) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="'bh' or 'storey'"):
        M.adjust(p, "holm")


def test_ensemble_variance_is_floored_by_the_raw_counts():
    rng = np.random.default_rng(6)
    raw = rng.poisson(30, (6, 50)).astype(float)
    libs = raw.sum(1)
    # denoised pseudobulks: the samples' deviations shrunk towards their mean
    den = np.stack([0.2 * raw + 0.8 * raw.mean(0) + rng.normal(0, 0.1, raw.shape)] * 3)
    plain = S.sample_test(den, libs, 3, "between", prior=False)
    floored = S.sample_test(den, libs, 3, "between", prior=False, raw=raw)
    counts = S.sample_test(raw, libs, 3, "between", prior=False)
    np.testing.assert_allclose(floored["s2_post"], np.maximum(plain["s2_post"], counts["s2_post"]))
    assert (floored["se"] >= plain["se"] - 1e-12).all()


def _rng_state():
    import torch

    return torch.get_rng_state().clone(), np.random.get_state()  # noqa: NPY002 (the caller's)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"groupby": "cell_type", "group1": "A", "n_samples": 3},
        {"groupby": "cell_type", "group1": "A", "mode": "change", "n_samples_overall": 200},
        {"groupby": "condition", "group1": "stim", "sample_key": "sample"},
        {"groupby": "condition", "group1": "stim", "sample_key": "sample", "method": "ensemble"},
    ],
    ids=["cells", "change", "samples", "samples-ensemble"],
)
def test_de_leaves_the_callers_torch_and_numpy_rng(rep_model, kwargs):
    import torch

    adata, model = rep_model
    torch.manual_seed(123)
    np.random.seed(321)  # noqa: NPY002 (the global state is what is checked)
    before = _rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.differential_expression(adata, progress=False, **kwargs)
    after = _rng_state()
    assert torch.equal(before[0], after[0])
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1])
    assert before[1][2:] == after[1][2:]


def test_importance_weighted_population_de_against_a_slow_loop(rep_model):
    """``weights="importance"``: each member's draws are scvi-tools' importance-weighted
    resamples of the group (``n_samples_overall``), drawn under the call's seed; the LFC of
    each draw is the groups' median log2 expression, and ``proba_de`` the share of all
    members' draws with ``|LFC| >= delta``: here recomputed one member, draw and gene at a
    time from the members' own scvi-tools calls."""
    from ensemblevi._seeding import forked_rng

    adata, model = rep_model
    n, seed, delta, cap = 3, 7, 0.3, 30
    kw = {"groupby": "cell_type", "group1": "A", "group2": "B", "delta": delta, "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = model.differential_expression(
            adata,
            estimand="population",
            weights="importance",
            n_samples=n,
            max_cells=cap,
            progress=False,
            **kw,
        )
    ct = adata.obs["cell_type"].to_numpy()
    rng = np.random.default_rng(seed)  # the call's subsample of each side, as documented
    sides = [np.sort(rng.choice(np.flatnonzero(ct == g), cap, replace=False)) for g in "AB"]
    hits = np.zeros(adata.n_vars)
    with forked_rng(seed):  # the call's one block of draws (block 0)
        for k in range(model.n_members):
            expr = []
            for cells in sides:
                x = model.members[k].get_normalized_expression(
                    adata,
                    indices=cells,
                    library_size=1e4,
                    n_samples_overall=n * len(cells),
                    weights="importance",
                    return_numpy=True,
                )
                expr.append(np.asarray(x, dtype=np.float64).reshape(n, len(cells), -1))
            for d in range(n):
                for g in range(adata.n_vars):
                    lfc = np.median(np.log2(expr[0][d, :, g] + 0.1)) - np.median(
                        np.log2(expr[1][d, :, g] + 0.1)
                    )
                    hits[g] += abs(lfc) >= delta
    expected = hits / (model.n_members * n)
    np.testing.assert_allclose(t.loc[adata.var_names, "proba_de"], expected, rtol=0, atol=1e-12)
    assert 0 < expected.mean() < 1


def test_registered_sample_key_is_used_and_saved(tmp_path):
    adata = ev.data.synthetic_replicates(n_cells=240, n_genes=40, n_samples=6, seed=4)
    ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts", sample_key="sample")
    model = ev.model.EnsembleSCVI(adata, n_members=2, n_hidden=8, n_latent=2, seed=0)
    assert model.summary_stats.n_extra_categorical_covs == 0  # not a model covariate
    model.train(max_epochs=1, seed=0, enable_progress_bar=False)
    kw = {"groupby": "condition", "group1": "stim", "group2": "ctrl", "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = model.differential_expression(adata, key_added="reg", **kw)
    assert t.attrs["inference_unit"] == "samples" and t.attrs["sample_key"] == "sample"
    assert adata.uns["reg"]["params"]["sample_key_source"] == "registered"
    adata.obs["donor2"] = adata.obs["sample"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = model.differential_expression(adata, sample_key="donor2", **kw)
    assert own.attrs["sample_key"] == "donor2" and own.attrs["sample_key_source"] == "argument"
    with pytest.warns(UserWarning, match="cell-level test"):
        cells = model.differential_expression(adata, estimand="population", n_samples=2, **kw)
    assert cells.attrs["inference_unit"] == "cells"
    model.save(tmp_path / "m", overwrite=True)
    back = ev.model.EnsembleSCVI.load(tmp_path / "m", adata=adata)
    from ensemblevi.model.base._de_core import registered_sample_key

    assert registered_sample_key(back.adata_manager) == "sample"
    assert (
        ev.model.EnsembleSCVI.load_registry(tmp_path / "m")["setup_args"]["sample_key"] == "sample"
    )
