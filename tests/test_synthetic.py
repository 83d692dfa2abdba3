import anndata
import numpy as np
import pandas as pd
import pytest

from ensemblevi.data import synthetic, validate_counts
from ensemblevi.data._synthetic import PRESETS, params_from_uns


def _type_log2_means(adata, t):
    h = adata.layers["true_rate"][(adata.obs["cell_type"] == t).to_numpy()]
    return np.log2(h.astype(np.float64)).mean(axis=0), np.log2(h).var(axis=0), h.shape[0]


def test_recovered_means_and_lfcs_match_parameters():
    ad = synthetic("draft", seed=3, n_cells=3000, n_genes=200, n_types=3)
    names = ad.uns["synthetic"]["cell_types"]
    ref_mean, ref_var, n_ref = _type_log2_means(ad, names[0])
    # Median of the log-normal is the base mean in the reference type.
    se = np.sqrt(ref_var / n_ref)
    z = (ref_mean - np.log2(ad.var["base_mean"].to_numpy())) / se
    assert np.abs(z).max() < 5
    for t in names[1:]:
        m, v, n = _type_log2_means(ad, t)
        est = m - ref_mean
        se = np.sqrt(v / n + ref_var / n_ref)
        z = (est - ad.var[f"lfc_{t}_vs_{names[0]}"].to_numpy()) / se
        assert np.abs(z).max() < 5, f"type {t}: worst z {np.abs(z).max():.1f}"
    # Pairs between non-reference types are differences of their LFCs.
    np.testing.assert_allclose(
        ad.var["lfc_C_vs_B"], ad.var["lfc_C_vs_A"] - ad.var["lfc_B_vs_A"], atol=1e-5
    )


def test_de_fraction_and_effect_sizes():
    ad = synthetic("draft", seed=0, n_genes=2000, de_frac=0.3, effect_scale=4.0)
    lfc = ad.var["lfc_B_vs_A"].to_numpy()
    big = np.abs(lfc) > 1.0
    assert abs(big.mean() - 0.3) < 0.01  # DE genes sit at +-2, null genes at exactly 0
    assert abs(np.abs(lfc[big]).mean() - 2.0) < 0.02
    assert abs(lfc[big].std() - 2.0) < 0.05 and np.all(lfc[~big] == 0)


def test_zero_inflation_fraction_matches_closed_form():
    ad = synthetic("lopez2020", seed=1, n_cells=2000)
    x = ad.layers["counts"].toarray()
    rate = ad.layers["true_rate"].astype(np.float64)
    pi = ad.uns["synthetic"]["params"]["zero_inflation"]
    expected = pi + (1 - pi) * np.exp(-rate).mean()
    observed = (x == 0).mean()
    assert abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / x.size)
    assert 0.29 < observed < 0.4


def test_de_truth_consistent_with_lfc():
    ad = synthetic("lopez2020", seed=2)
    delta = ad.uns["synthetic"]["delta"]
    lfc = ad.var["lfc_B_vs_A"].to_numpy()
    is_de = ad.var["is_de_B_vs_A"].to_numpy()
    clear = np.abs(np.abs(lfc) - delta) > 0.15
    assert clear.sum() > 80
    np.testing.assert_array_equal(is_de[clear], np.abs(lfc[clear]) >= delta)
    # The population median tracks the generating LFC closely in this low-noise setting.
    assert np.abs(ad.var["median_lfc_B_vs_A"] - lfc).max() < 0.15


def test_deterministic_and_reproducible_from_uns(tmp_path):
    a = synthetic("hard", seed=7, n_cells=150, n_genes=120)
    b = synthetic("hard", seed=7, n_cells=150, n_genes=120)
    c = synthetic("hard", seed=8, n_cells=150, n_genes=120)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.layers["true_rate"], b.layers["true_rate"])
    assert (a.X != c.X).nnz > 0
    path = tmp_path / "sim.h5ad"
    a.write_h5ad(path)
    back = anndata.read_h5ad(path)
    params = params_from_uns(back)
    again = synthetic(preset=None, seed=back.uns["synthetic"]["seed"], **params)
    assert (again.X != a.X).nnz == 0
    assert list(again.var_names) == list(a.var_names)
    np.testing.assert_array_equal(again.obs["batch"], a.obs["batch"])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_validate(preset):
    small = {"n_cells": 400} if preset == "heartlike" else {}
    ad = synthetic(preset, seed=0, **small)
    rep = validate_counts(ad, layer="counts", warn_zeros=False)
    assert rep.n_cells == ad.n_obs and rep.total_counts > 0
    p = ad.uns["synthetic"]["params"]
    assert ad.n_vars == p["n_genes"] and ad.obs["cell_type"].nunique() == p["n_types"]
    for pair in ad.uns["synthetic"]["pairs"]:
        assert {f"lfc_{pair}", f"is_de_{pair}", f"median_lfc_{pair}"} <= set(ad.var.columns)


def test_markers_batches_and_library_size():
    ad = synthetic("heartlike", seed=0, n_cells=3000, batch_effect_std=0.5, library_sd=0.5)
    markers = ad.uns["synthetic"]["markers"]
    assert markers["Fibroblast"][:3] == ["DCN", "GSN", "PDGFRA"]
    assert {"MYH11", "CD68"} <= set(ad.var_names)
    # A marker is strongly up in its own type against the reference.
    ref = ad.uns["synthetic"]["reference"]
    for t in ("Fibroblast", "Myeloid"):
        assert ad.var.loc[markers[t], f"lfc_{t}_vs_{ref}"].min() > 1.5
        assert (ad.var.loc[markers[t], "marker_of"] == t).all()
    # Library size factors show in the totals, batch effects in per-gene batch ratios.
    totals = np.asarray(ad.X.sum(axis=1)).ravel()
    assert np.corrcoef(np.log(totals), np.log(ad.obs["size_factor"]))[0, 1] > 0.5
    x = ad.X.toarray() / ad.obs["size_factor"].to_numpy()[:, None]
    b = ad.obs["batch"].to_numpy()
    expressed = ad.var["base_mean"].to_numpy() > 2
    obs_ratio = np.log(x[b == "batch1"].mean(0) / x[b == "batch0"].mean(0))[expressed]
    eff = ad.varm["batch_effect"]
    true_ratio = np.log(eff[:, 1] / eff[:, 0])[expressed]
    assert np.corrcoef(obs_ratio, true_ratio)[0, 1] > 0.8


@pytest.mark.parametrize(
    "override",
    [
        {"n_types": 1},
        {"de_frac": 1.5},
        {"n_typo": 3},
        {"type_names": ["a", "b", "c"]},
        {"n_markers": 300, "n_genes": 100},
        {"base_mean_dist": "normal"},
    ],
)
def test_bad_parameters_raise(override):
    with pytest.raises(ValueError, match="parameter"):
        synthetic("draft", **override)


def test_lean_mode_has_the_same_counts_without_the_dense_truth():
    full = synthetic("lopez2020", seed=4, n_cells=150)
    lean = synthetic("lopez2020", seed=4, n_cells=150, lean=True)
    assert (full.layers["counts"] != lean.X).nnz == 0
    assert set(lean.layers) == set() and lean.uns["synthetic"]["lean"]
    assert not any(c.startswith(("median_lfc_", "is_de_")) for c in lean.var)
    pd.testing.assert_frame_equal(full.obs, lean.obs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset"):
        synthetic("nope")
