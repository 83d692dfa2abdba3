"""Names from the data, read back after every writer; genes in another order (issue 32)."""

import warnings

import anndata
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

import ensemblevi as ev
from ensemblevi._names import (
    console_text,
    file_stem,
    from_h5_columns,
    from_h5_key,
    h5_columns,
    h5_key,
    read_table,
)
from ensemblevi.cli import app
from ensemblevi.data._io import write_h5ad_atomic
from ensemblevi.model import EnsembleSCVI
from ensemblevi.pipeline import RunConfig, run_de, run_pipeline
from ensemblevi.pipeline._de import de_name
from ensemblevi.pl._utils import save_figure

#: group names a user's data may hold, each a different trap
HOSTILE = [
    "/A",
    "CD4.Naive",
    "CD4.Memory",
    "NA",
    "[bold]",
    "T cells [activated]",
    "line\nbreak",
    "Zellé €",
    "a/b",
    "..",
    "%2F",
]


def _hostile(adata, key="cell_type"):
    cats = list(adata.obs[key].cat.categories)
    mapping = {c: HOSTILE[i % len(HOSTILE)] for i, c in enumerate(cats)}
    adata.obs[key] = adata.obs[key].map(mapping).astype("category")
    return adata


# ------------------------------------------------------------------ the encodings
@pytest.mark.parametrize("name", [*HOSTILE, "", ".", "%", "%25", "a\x00b", "%empty"])
def test_h5_keys_round_trip_and_hold_no_path(name):
    key = h5_key(name)
    assert "/" not in key and "\x00" not in key and key not in ("", ".", "..")
    assert from_h5_key(key) == name


def test_h5_keys_are_distinct():
    names = [*HOSTILE, "", ".", "%", "%25", "%empty", "A"]
    assert len({h5_key(n) for n in names}) == len(names)


def test_file_stems_are_readable_distinct_and_bounded():
    assert file_stem("CD4.Naive") == "CD4.Naive"  # dots are kept: no shared figure
    assert file_stem("CD4.Naive") != file_stem("CD4.Memory")
    stems = {file_stem(n) for n in HOSTILE}
    assert len(stems) == len(HOSTILE)
    assert all("/" not in s and "\n" not in s and not s.startswith(".") for s in stems)
    assert file_stem("CD4 T") != file_stem("CD4+ T")  # both slug to CD4_T: a hash tells them
    long = file_stem("x" * 500)
    assert len(long) < 100 and long != file_stem("x" * 499)
    assert de_name("CD4.Naive", None) == "de_CD4.Naive_vs_rest"


def test_figure_paths_keep_dots_in_names(tmp_path):
    fig, _ = plt.subplots()
    a = save_figure(fig, tmp_path / "de_CD4.Naive_vs_rest")
    b = save_figure(fig, tmp_path / "de_CD4.Memory_vs_rest")
    c = save_figure(fig, tmp_path / "plain.png", formats=("png", "svg"))
    plt.close(fig)
    assert [p.name for p in a + b] == ["de_CD4.Naive_vs_rest.png", "de_CD4.Memory_vs_rest.png"]
    assert [p.name for p in c] == ["plain.png", "plain.svg"]
    assert all(p.exists() for p in a + b + c)


def test_tables_read_back_with_na_names(tmp_path):
    frame = pd.DataFrame(
        {"group": ["NA", "nan", "null", "N/A", ""], "value": [1.0, np.nan, 3.0, 4.0, 5.0]}
    )
    ev._files.write_csv(frame, tmp_path / "t.csv", index=False)
    back = read_table(tmp_path / "t.csv")
    assert list(back["group"][:4]) == ["NA", "nan", "null", "N/A"]
    assert np.isnan(back["value"][1]) and back["value"].dtype == float


@pytest.mark.parametrize("name", ["[bold]", "T cells [activated]", "[/red]", "a\\[b]"])
def test_console_text_prints_literally(name):
    console = Console(record=True, width=200)
    console.print(f"[red]error:[/red] group {console_text(name)} not found")
    assert f"group {name} not found" in console.export_text()


def test_h5_columns_round_trip_through_h5ad(tmp_path):
    frame = pd.DataFrame(np.ones((3, len(HOSTILE))), columns=HOSTILE, index=list("abc"))
    adata = anndata.AnnData(np.ones((3, 2), np.float32), obs=pd.DataFrame(index=list("abc")))
    adata.obsm["p"] = h5_columns(frame)
    adata.uns["t"] = h5_columns(frame).reset_index()
    adata.write_h5ad(tmp_path / "x.h5ad")
    back = anndata.read_h5ad(tmp_path / "x.h5ad")
    assert list(from_h5_columns(back.obsm["p"]).columns) == HOSTILE
    assert list(from_h5_columns(back.uns["t"]).columns[1:]) == HOSTILE


# ------------------------------------------------------------------ tl, read back
@pytest.fixture(scope="module")
def hostile_model():
    adata = _hostile(ev.data.synthetic("heartlike", seed=0, n_cells=300, n_genes=60))
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = EnsembleSCVI(adata, n_members=2, n_hidden=16, n_latent=4, seed=0)
    model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    return adata, model


def test_tl_results_with_hostile_groups_read_back(hostile_model, tmp_path):
    adata, model = hostile_model
    groups = sorted(adata.obs["cell_type"].unique())
    markers = {g: [adata.var_names[i]] for i, g in enumerate(groups)}
    ev.tl.uncertainty_analysis(
        model,
        adata,
        markers=markers,
        groupby="cell_type",
        n_samples=2,
        novelty=False,
        progress=False,
    )
    # label probabilities and calibration as tl.label_uncertainty writes them
    probs = pd.DataFrame(
        np.full((adata.n_obs, len(groups)), 1 / len(groups)),
        index=adata.obs_names,
        columns=[h5_key(g) for g in groups],
    )
    adata.obsm["ensemblevi_label_probabilities"] = probs
    calib = ev.tl.label_calibration(adata, "cell_type")
    assert list(calib["confusion"].columns[1:-1]) == groups  # the user's names, exact
    path = tmp_path / "r.h5ad"
    adata.write_h5ad(path)
    back = anndata.read_h5ad(path)
    assert sorted(back.obs["cell_type"].unique()) == groups
    by_group = from_h5_columns(back.varm["ensemblevi_cv_between_by_group"])
    assert sorted(by_group.columns) == groups
    summary = back.uns["ensemblevi"]["expression_spread"]["summary"]
    assert sorted(summary["group"].unique()) == groups
    confusion = from_h5_columns(back.uns["ensemblevi"]["label_calibration"]["confusion"])
    assert list(confusion.columns[1:-1]) == groups
    fig = ev.pl.label_confusion(back, return_fig=True)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    plt.close(fig)
    assert labels[:-1] == groups


# ------------------------------------------------------------------ run, de, report, CLI
@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    adata = _hostile(ev.data.synthetic("heartlike", seed=0, n_cells=300))
    data = root / "hostile.h5ad"
    write_h5ad_atomic(adata, data)
    config = RunConfig(
        data=str(data),
        layer="counts",
        n_top_genes=100,
        epochs=1,
        members=2,
        n_samples=2,
        markers=None,
        marker=("/A=DCN,GSN", "NA=CD14", "[bold]=MYH11", "CD4.Naive=C1QA"),
    )
    out = root / "run"
    reading = run_pipeline(config, out, log=lambda *_: None)
    return out, reading


def test_run_with_hostile_groups_reads_back(hostile_run):
    out, reading = hostile_run
    assert any(
        " in /A:" in line or " in NA:" in line or " in [bold]:" in line for line in reading
    )  # the reading names the right group
    back = anndata.read_h5ad(out / "results.h5ad")  # "/A" once became an HDF5 path here
    assert set(back.obs["cell_type"].unique()) <= set(HOSTILE)
    summary = read_table(out / "tables" / "marker_summary.csv")
    assert {"/A", "NA", "[bold]"} <= set(summary["group"])  # NA is a name, not NaN
    html = (out / "report.html").read_text()
    assert "<td>NA</td>" in html and "[bold]" in html and "<td>/A</td>" in html


def test_de_on_groups_differing_after_a_dot(hostile_run):
    out, _ = hostile_run
    res = [run_de(out, g, n_samples=2, max_cells=40) for g in ("CD4.Naive", "CD4.Memory")]
    figures = [next(p for p in r.files if p.suffix == ".png") for r in res]
    assert figures[0] != figures[1] and all(p.exists() for p in figures)
    assert {p.name for p in figures} <= {p.name for p in (out / "figures").iterdir()}
    html = (out / "report.html").read_text()
    assert html.count("Differential expression: CD4.") == 2
    assert all(f"figures/{p.name}" in html for p in figures)  # the report names the file
    back = anndata.read_h5ad(out / "results.h5ad")
    assert {r.key for r in res} <= set(back.uns)


def test_cli_prints_hostile_names_literally(hostile_run):
    out, _ = hostile_run
    runner = CliRunner()
    res = runner.invoke(
        app, ["de", str(out), "--group1", "[bold]", "--n-samples", "2", "--max-cells", "40"]
    )
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "Differential expression [bold] vs" in flat
    written = [w for w in flat.split() if w.endswith(".png,")]
    assert written and all(
        (out / "figures" / w.rstrip(",").split("/")[-1]).exists() for w in written
    )
    res = runner.invoke(app, ["de", str(out), "--group1", "T cells [/activated]"])
    assert res.exit_code == 2 and "T cells [/activated]" in " ".join(res.output.split())


# ------------------------------------------------------------------ gene order (kind 4)
@pytest.fixture(scope="module")
def small_model():
    adata = ev.data.synthetic("draft", seed=0, n_cells=200, n_genes=50)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = EnsembleSCVI(adata, n_members=2, n_hidden=16, n_latent=4, seed=0)
    model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    return adata, model


def test_genes_in_another_order_are_reordered_with_a_warning(small_model):
    adata, model = small_model
    perm = np.random.default_rng(0).permutation(adata.n_vars)
    other = adata[:, perm].copy()
    z = model.get_latent_representation(adata)
    rho = model.get_normalized_expression(adata, seed=0)
    with pytest.warns(UserWarning, match="another order"):
        z_other = model.get_latent_representation(other)
    with pytest.warns(UserWarning, match="another order"):
        rho_other = model.get_normalized_expression(other, seed=0)
    np.testing.assert_allclose(z_other, z, rtol=1e-5, atol=1e-6)
    assert list(rho_other.columns) == list(rho.columns)  # labelled in the model's order
    np.testing.assert_allclose(rho_other[adata.var_names[7]], rho[adata.var_names[7]], rtol=1e-5)
    assert list(other.var_names) == list(adata.var_names[perm])  # the user's data untouched


def test_same_order_passes_without_a_warning(small_model):
    adata, model = small_model
    same = adata.copy()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*another order")
        model.get_latent_representation(same)


@pytest.mark.parametrize("edit", ["missing", "extra"])
def test_missing_or_extra_genes_are_refused_with_the_fix(small_model, edit):
    adata, model = small_model
    if edit == "missing":
        other = adata[:, 2:].copy()
    else:
        other = anndata.concat([adata, adata[:, :1]], axis=1, merge="first")
        other.var_names = [*adata.var_names, "NEWGENE"]
    with pytest.raises(
        ValueError,
        match=r"(2 of the model's 50 genes are missing|1 genes are "
        r"not the model's).*adata\[:, model.adata.var_names\]",
    ):
        model.get_latent_representation(other)


def test_a_result_an_older_version_could_not_read_back_gets_a_named_error(hostile_run, tmp_path):
    import shutil

    import h5py

    run = tmp_path / "run"
    shutil.copytree(hostile_run[0], run)
    with h5py.File(run / "results.h5ad", "a") as f:  # what uns[...]["/A"] used to write
        f["A"] = np.zeros(2)
        f["A"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    res = CliRunner().invoke(app, ["de", str(run), "--group1", "NA"])
    assert res.exit_code == 2 and "cannot be read" in res.output, res.output
    assert "Traceback" not in res.output
