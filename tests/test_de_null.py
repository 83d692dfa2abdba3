"""The DE null check: the same test on random halves of group1, where nothing changes."""

import inspect
import json
import warnings

import anndata
import numpy as np
import pytest
from typer.testing import CliRunner

import ensemblevi as ev
from ensemblevi.model.base._de_null import (
    MIN_HALF,
    NULL_MAX_FRACTION,
    NULL_MEAN_FRACTION,
    null_halves,
    null_verdict,
)


def test_halves_are_disjoint_cover_the_group_and_are_seeded():
    rng = np.random.default_rng(0)
    for n in (2 * MIN_HALF, 2 * MIN_HALF + 1, 57, 300):
        cells = np.sort(rng.choice(10_000, n, replace=False))
        splits = null_halves(cells, 4, seed=7)
        assert len(splits) == 4
        for a, b in splits:
            assert len(set(a.tolist()) & set(b.tolist())) == 0
            assert sorted(a.tolist() + b.tolist()) == cells.tolist()
            assert len(a) == n // 2 and len(b) == n - n // 2
            assert list(a) == sorted(a) and list(b) == sorted(b)
        # the repetitions differ, the same seed repeats them, another seed does not
        assert len({tuple(a) for a, _ in splits}) == 4
        again = null_halves(cells, 4, seed=7)
        assert all(
            (a == c).all() and (b == d).all() for (a, b), (c, d) in zip(splits, again, strict=True)
        )
        other = null_halves(cells, 4, seed=8)
        assert any((a != c).any() for (a, _), (c, _) in zip(splits, other, strict=True))
    with pytest.raises(ValueError, match="at least 10 cells"):
        null_halves(np.arange(2 * MIN_HALF - 1), 3, 0)
    with pytest.raises(ValueError, match="n_null"):
        null_halves(np.arange(100), 0, 0)


def test_verdict_follows_the_documented_rule():
    assert not null_verdict([0.0, 0.0, 0.0])
    assert not null_verdict([NULL_MEAN_FRACTION] * 3)  # at the bound: no warning
    assert null_verdict([NULL_MEAN_FRACTION + 1e-6] * 3)  # mean above 0.5%
    # one repetition above 1% warns even when the mean stays under 0.5%
    assert null_verdict([0.0] * 10 + [NULL_MAX_FRACTION + 1e-6])
    assert np.mean([0.0] * 10 + [NULL_MAX_FRACTION + 1e-6]) < NULL_MEAN_FRACTION
    assert not null_verdict([0.0] * 10 + [NULL_MAX_FRACTION])


@pytest.fixture(scope="module")
def null_model():
    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=300, n_genes=60)
    ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = ev.model.EnsembleSCVI(
        adata, n_members=2, ensemble="deep", n_hidden=32, n_latent=4, seed=0
    )
    model.train(max_epochs=30, seed=0, enable_progress_bar=False, plan_kwargs={"lr": 1e-2})
    return adata, model


KW = {"groupby": "cell_type", "group1": "B", "group2": "A", "n_samples": 10, "progress": False}


def test_null_check_passes_a_calibrated_test_and_warns_on_a_tiny_delta(null_model, tmp_path):
    adata, model = null_model
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a passed check warns of nothing
        t = model.differential_expression(delta=0.5, null_check=True, key_added="de_ok", **KW)
    null = t.attrs["null_check"]
    assert null["comparison"] == ["B"] and null["n_null"] == 3 and null["n_genes"] == 60
    assert not null["any_warn"] and max(null["mean_fraction_called"]) <= NULL_MEAN_FRACTION
    assert "passed" in null["message"]
    # the table's scvi-tools columns are those of the call without the check
    plain = model.differential_expression(delta=0.5, key_added=None, **KW)
    assert list(plain.columns) == list(t.columns) and "null_check" not in plain.attrs
    assert plain.attrs["inference_unit"] == "cells"  # no samples: the calls describe cells
    np.testing.assert_array_equal(plain["proba_de"], t["proba_de"])
    # a tiny delta: the model's finite-sample differences between the halves clear it, and
    # the check says so (the default counts estimand shrinks them to no change: no warning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tiny = model.differential_expression(delta=0.02, null_check=True, key_added=None, **KW)
    assert not tiny.attrs["null_check"]["any_warn"]
    with pytest.warns(UserWarning, match="Null check: on random halves"):
        bad = model.differential_expression(
            delta=0.02, null_check=True, key_added="de_bad", estimand="population", **KW
        )
    null = bad.attrs["null_check"]
    assert null["any_warn"] and null["warn"] == [True]
    # each repetition's count is the number of genes the same test calls on those halves
    b = np.flatnonzero(adata.obs["cell_type"] == "B")
    for (h1, h2), n in zip(null_halves(b, 3, 0), null["n_called"][0], strict=True):
        ref = model.differential_expression(
            idx1=h1,
            idx2=h2,
            delta=0.02,
            n_samples=10,
            estimand="population",
            key_added=None,
            all_stats=False,
            progress=False,
        )
        assert int(ref["is_de_fdr_0.05"].sum()) == n
        assert n > NULL_MAX_FRACTION * adata.n_vars
    assert null["n_cells_half1"] == [len(b) // 2] and null["n_cells_half2"] == [
        len(b) - len(b) // 2
    ]
    assert null["fraction_called"][0] == pytest.approx([n / 60 for n in null["n_called"][0]])
    # it reaches uns, and survives an h5ad round trip
    assert adata.uns["de_bad"]["null_check"]["any_warn"]
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = anndata.read_h5ad(tmp_path / "a.h5ad").uns["de_bad"]["null_check"]
    np.testing.assert_array_equal(back["n_called"], null["n_called"])


def test_null_check_runs_per_comparison_and_refuses_clearly(null_model):
    adata, model = null_model
    kw = {"n_samples": 4, "progress": False, "key_added": None, "delta": 0.5, "n_null": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t = ev.tl.differential_expression(model, groupby="cell_type", null_check=True, **kw)
    null = t.attrs["null_check"]
    groups = list(adata.obs["cell_type"].cat.categories)
    assert null["comparison"] == groups and len(null["n_called"]) == len(groups)
    assert all(len(r) == 2 for r in null["n_called"])
    sizes = [(adata.obs["cell_type"] == g).sum() for g in groups]
    assert null["n_cells_half1"] == [s // 2 for s in sizes]
    few = np.flatnonzero(adata.obs["cell_type"] == "B")[: 2 * MIN_HALF - 1]
    with pytest.raises(ValueError, match="group1 has 19 cells"):
        model.differential_expression(idx1=few, null_check=True, **kw)
    with pytest.raises(ValueError, match="vanilla"):
        model.differential_expression(
            group1="B", mode="vanilla", delta=None, null_check=True, progress=False, key_added=None
        )


def test_every_entry_point_takes_the_check():
    from ensemblevi.model.base._de_settings import DESettings

    assert DESettings().null_check is False and DESettings().n_null == 3  # ensemble_de's
    for fn in (ev.tl.differential_expression, ev.model.EnsembleSCVI.differential_expression):
        params = inspect.signature(fn).parameters
        assert params["null_check"].default is False and params["n_null"].default == 3
    from ensemblevi.cli import app

    res = CliRunner().invoke(app, ["de", "--help"])
    assert "--null-check" in res.output and "--n-null" in res.output


def test_cli_null_check_writes_it_to_the_outputs(tmp_path):
    from ensemblevi.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    args = ["run", "--quick", "--n-cells", "300", "--epochs", "2", "--members", "2"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    de = ["de", str(out), "--group1", "Fibroblast", "--group2", "Myeloid", "--n-samples", "4"]
    res = runner.invoke(
        app, [*de, "--null-check", "--n-null", "2", "--delta", "0.01", "--estimand", "population"]
    )
    assert res.exit_code == 0, res.output
    assert "Null check" in res.output and "WARNING" in res.output
    name = "de_Fibroblast_vs_Myeloid"
    settings = json.loads((out / "tables" / f"{name}.json").read_text())
    null = settings["null_check"]
    assert null["n_null"] == 2 and len(null["n_called"][0]) == 2 and null["any_warn"]
    report = (out / "report.html").read_text()
    assert "Null check: the same test on 2 random halves of Fibroblast" in report
    assert "class='warn'" in report
    ad = anndata.read_h5ad(out / "results.h5ad")
    np.testing.assert_array_equal(
        ad.uns[f"ensemblevi_{name}"]["null_check"]["n_called"], null["n_called"]
    )
