"""Analysis tools: streamed reductions against the full per-cell frames, markers, novelty."""

import json

import numpy as np
import pandas as pd
import pytest

import ensemblevi as ev
from ensemblevi.model import EnsembleSCVI


@pytest.fixture(scope="module")
def heart():
    adata = ev.data.synthetic("heartlike", seed=0, n_cells=400, n_genes=120)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = EnsembleSCVI(adata, n_members=3, n_hidden=32, n_latent=5, seed=0)
    model.train(max_epochs=3, enable_progress_bar=False, seed=0)
    return adata, model


def test_markers_are_checked_with_close_matches(tmp_path):
    names = ["DCN", "GSN", "Acta2", "CD14"]
    found, missing = ev.tl.check_markers(
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
    assert ev.tl.load_markers(path) == {"B": ["MS4A1"]}
    assert ev.tl.parse_marker_options(["B=MS4A1,CD79A"]) == {"B": ["MS4A1", "CD79A"]}
    with pytest.raises(ValueError, match="Unknown marker set"):
        ev.tl.load_markers("nope")
    assert ev.tl.load_markers("heart")["Myeloid"] == ["CD14", "C1QA", "CD68"]


def test_expression_spread_matches_the_full_decomposition(heart):
    adata, model = heart
    markers = ev.tl.load_markers("heart")
    out = ev.tl.expression_spread(
        model, adata, markers, groupby="cell_type", n_samples=4, progress=False
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
    assert len(out["members"]) == 3 * 9 and out["summary"]["frac_between"].between(0, 1).all()
    assert "expression_spread" in adata.uns["ensemblevi"]
    with pytest.raises(ValueError, match="not in the data"):
        ev.tl.expression_spread(model, adata, ["NOT_A_GENE"], groupby="cell_type")


def test_gene_uncertainty_streams_the_same_numbers(heart):
    adata, model = heart
    table = ev.tl.gene_uncertainty(model, adata, groupby="cell_type", n_samples=3, progress=False)
    full = model.get_uncertainty(adata, n_samples=3, progress=False)
    cv = np.sqrt(full["var_between"]) / full["mean"]
    np.testing.assert_allclose(
        table.loc[adata.var_names, "uncertainty"], cv.mean(0).to_numpy(), rtol=1e-4
    )
    by_group = cv.groupby(adata.obs["cell_type"].astype(str).to_numpy()).mean().T
    for group in by_group.columns:
        np.testing.assert_allclose(
            adata.varm["ensemblevi_uncertainty_by_group"][group], by_group[group], rtol=1e-4
        )
    assert table["uncertainty"].is_monotonic_decreasing and table["rank"].iloc[0] == 1
    assert adata.var["ensemblevi_uncertainty_rank"].min() == 1


def test_cell_novelty_scores_and_rule(heart):
    adata, model = heart
    scores = ev.tl.cell_novelty(model, adata, alpha=0.05, n_samples=2, progress=False)
    assert (scores["novelty_cv"] > 0).all() and (scores["novelty_llgap"] >= -1e-9).all()
    info = adata.uns["ensemblevi"]["cell_novelty"]
    assert info["n_flagged"] == int(adata.obs["ensemblevi_is_novel"].sum())
    # the flag is exactly "score above its threshold"
    expected = scores["novelty_cv"] > info["novelty_cv_threshold"]
    assert (adata.obs["ensemblevi_is_novel"].to_numpy() == expected.to_numpy()).all()
    assert 0 <= info["novelty_cv_fpr_heldout"] <= 1 and "validation" in info["calibrated_on"]
    single = EnsembleSCVI(adata, ensemble="single", n_hidden=8, n_latent=2)
    with pytest.raises(ValueError, match="at least 2 members"):
        ev.tl.cell_novelty(single, adata)


def test_seed_ensemble_resumes_from_saved_models(tmp_path):
    adata = ev.data.synthetic("lopez2020", seed=2, n_cells=100, n_genes=20)
    kwargs = {"setup_kwargs": {"layer": "counts"}, "max_epochs": 1, "progress": False}
    ens = ev.tl.seed_ensemble(adata, n_seeds=2, save_dir=tmp_path, n_hidden=8, n_latent=2, **kwargs)
    assert ens.n_members == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["seed_0", "seed_1"]
    again = ev.tl.seed_ensemble(
        adata, n_seeds=2, save_dir=tmp_path, n_hidden=8, n_latent=2, **kwargs
    )
    for key, value in ens.module.state_dict().items():  # loaded, not retrained
        np.testing.assert_array_equal(again.module.state_dict()[key].numpy(), value.numpy())
    z0, z1 = (ens.get_latent_representation(member=k) for k in (0, 1))
    assert not np.allclose(z0, z1)  # different seeds, different models
    assert isinstance(ens.get_marginal_ll(n_mc_samples=3, return_table=True), pd.Series)
