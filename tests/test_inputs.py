"""Odd but realistic inputs get a named error before any training, or run as documented."""

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import ensemblevi as ev
from ensemblevi.cli import app
from ensemblevi.data._io import write_h5ad_atomic
from ensemblevi.model import EnsembleSCVI
from ensemblevi.pipeline import RunConfig, run_annotate, run_pipeline
from ensemblevi.pipeline._data import prepare_data
from ensemblevi.pipeline._map import prepare_query

runner = CliRunner()
QUIET = {"log": lambda *_: None}


def _file(tmp_path, adata, name="data.h5ad"):
    path = tmp_path / name
    write_h5ad_atomic(adata, path, overwrite=True)
    return path


def _flat(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------ marker files
@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad.json", b'{"A": ["X"', "not valid JSON"),
        ("bad.yaml", b"A: [X\n", "not valid YAML"),
        ("u16.json", '{"A": ["DCN"]}'.encode("utf-16"), "not UTF-8"),
        ("evil.yaml", b"!!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
        ("list.json", b'["DCN"]', "must map each group to a list"),
    ],
)
def test_malformed_marker_files_are_named(tmp_path, monkeypatch, name, content, match):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        prepare_data(RunConfig(markers=str(path), n_cells=50), **QUIET)
    assert str(path) in str(err.value) and "--markers" in str(err.value)
    assert not (tmp_path / "PWNED").exists()  # the YAML tag never ran


def test_marker_file_error_through_the_cli(tmp_path):
    path = tmp_path / "m [bold].json"
    path.write_text("{nope")
    res = runner.invoke(app, ["run", "--markers", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and str(path) in _flat(res.output) and "--markers" in res.output
    assert not (tmp_path / "o" / "results.h5ad").exists()  # refused before anything ran
    assert not (tmp_path / "o" / "model").exists()


# ------------------------------------------------------------------ too few genes
def test_one_gene_is_refused_before_training(tmp_path):
    adata = ev.data.synthetic("heartlike", seed=0, n_cells=100)[:, :1].copy()
    path = _file(tmp_path, adata)
    res = runner.invoke(
        app, ["run", "--data", str(path), "--layer", "counts", "--out", str(tmp_path / "out")]
    )
    text = _flat(res.output)
    assert res.exit_code == 2, res.output
    assert "1 genes (needs at least 10)" in text and "Nothing was trained" in text
    assert "previous" not in text
    assert not (tmp_path / "out" / "model").exists()


# ------------------------------------------------------------------ labels and markers
def _foreign(n_cells=300, labels=True):
    """Data of another tissue: no heart gene, and maybe no labels column."""
    adata = ev.data.synthetic("heartlike", seed=1, n_cells=n_cells)
    adata.var_names = [f"G{i}" for i in range(adata.n_vars)]
    if not labels:
        del adata.obs["cell_type"]
    return adata


def test_markers_from_the_data_when_none_are_given(tmp_path):
    path = _file(tmp_path, _foreign())
    prepared = prepare_data(RunConfig(data=str(path), layer="counts", n_top_genes=100), **QUIET)
    groups = set(prepared.adata.obs["cell_type"].astype(str))
    assert set(prepared.markers) == groups  # every group got markers, from the data
    assert all(
        len(g) == 3 and set(g) <= set(prepared.adata.var_names) for g in prepared.markers.values()
    )
    assert any("top genes in the data" in n for n in prepared.notes)


def test_markers_none_skips_the_section(tmp_path):
    path = _file(tmp_path, _foreign())
    prepared = prepare_data(
        RunConfig(data=str(path), layer="counts", n_top_genes=100, markers="none"), **QUIET
    )
    assert prepared.markers == {} and any("--markers none" in n for n in prepared.notes)


def test_explicit_markers_not_in_the_data_are_still_an_error(tmp_path):
    path = _file(tmp_path, _foreign())
    with pytest.raises(ValueError, match=r"None of the marker genes.*--markers none"):
        prepare_data(
            RunConfig(data=str(path), layer="counts", n_top_genes=100, markers="heart"), **QUIET
        )


def test_a_named_labels_column_that_is_absent_is_still_an_error(tmp_path):
    path = _file(tmp_path, _foreign(labels=False))
    with pytest.raises(ValueError, match="--labels-key 'type'"):
        prepare_data(RunConfig(data=str(path), labels_key="type", n_top_genes=100), **QUIET)


def test_run_without_a_labels_column(tmp_path):
    path = _file(tmp_path, _foreign(labels=False))
    config = RunConfig(
        data=str(path), layer="counts", n_top_genes=60, epochs=1, members=2, n_samples=2
    )
    reading = run_pipeline(config, tmp_path / "out", **QUIET)
    out = tmp_path / "out"
    assert "no cell groups" in reading[0]
    assert not (out / "tables" / "marker_summary.csv").exists()
    assert not (out / "figures" / "model_spread.png").exists()
    assert (out / "tables" / "gene_uncertainty.csv").exists()
    html = (out / "report.html").read_text()
    assert "no cell groups" in html and "Marker genes: summary" not in html
    assert anndata.read_h5ad(out / "results.h5ad").n_obs == 300


# ------------------------------------------------------------------ cells without counts
def test_cells_without_counts_are_never_called_familiar():
    adata = ev.data.synthetic("draft", seed=0, n_cells=450, n_genes=40)
    counts = adata.layers["counts"].tolil()
    empty = np.arange(0, 450, 45)  # 10 cells, spread over training and validation
    counts[empty] = 0
    adata.layers["counts"] = sp.csr_matrix(counts)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = EnsembleSCVI(adata, n_members=2, n_hidden=16, n_latent=4, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    with pytest.warns(UserWarning, match="10 of 450 cells have no counts"):
        scores = ev.tl.cell_novelty(model, adata, n_samples=2, progress=False)
    knn = adata.obs["ensemblevi_novelty_knn"].to_numpy()
    assert np.isnan(knn[empty]).all() and np.isfinite(np.delete(knn, empty)).all()
    assert not adata.obs["ensemblevi_novelty_tested"].to_numpy()[empty].any()
    assert not scores["is_novel"].to_numpy()[empty].any()
    stored = adata.uns["ensemblevi"]["cell_novelty"]
    assert stored["n_tested"] == int(adata.obs["ensemblevi_novelty_tested"].sum())


# ------------------------------------------------------------------ map
@pytest.fixture(scope="module")
def reference():
    adata = ev.data.synthetic("draft", seed=0, n_cells=200, n_genes=40)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = EnsembleSCVI(adata, n_members=2, n_hidden=16, n_latent=4, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    return adata, model


def test_query_sharing_too_few_genes_is_refused(reference):
    adata, model = reference
    query = anndata.AnnData(
        adata.layers["counts"][:50].copy(),
        obs=adata.obs[:50].copy(),
        var=pd.DataFrame(index=adata.var_names),
    )
    query.var_names = [*adata.var_names[:19], *[f"other{i}" for i in range(21)]]
    with pytest.raises(ValueError, match=r"19 of the reference's 40 genes \(48%\).*50%"):
        prepare_query(query, model, **QUIET)
    query.var_names = [*adata.var_names[:20], *[f"other{i}" for i in range(20)]]
    assert prepare_query(query, model, **QUIET).n_vars == 40  # half is enough


def test_one_cell_query_gets_a_named_error(tmp_path):
    run = tmp_path / "run"  # what check_run_dir looks for: the query is refused before it
    (run / "model").mkdir(parents=True)
    for name in ("run.json", "results.h5ad", "model/model.pt"):
        (run / name).write_text("")
    query = ev.data.synthetic("draft", seed=0, n_cells=20, n_genes=40)[:1].copy()
    path = _file(tmp_path, query, "q.h5ad")
    res = runner.invoke(
        app,
        [
            "map",
            "--model",
            str(run),
            "--query",
            str(path),
            "--layer",
            "counts",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert res.exit_code == 2 and "The query has 1 cells (needs at least 10)" in _flat(res.output)
    assert "num_samples" not in res.output


# ------------------------------------------------------------------ annotate
def test_continuous_labels_are_refused(tmp_path):
    adata = ev.data.synthetic("draft", seed=0, n_cells=300, n_genes=40)
    adata.obs["score"] = np.random.default_rng(0).normal(size=adata.n_obs)
    path = _file(tmp_path, adata)
    with pytest.raises(ValueError, match=r"300 distinct non-integer numbers.*not cell types"):
        run_annotate(path, tmp_path / "out", "score", layer="counts", **QUIET)
    assert not (tmp_path / "out").exists()


def test_a_type_named_unknown_is_refused(tmp_path):
    adata = ev.data.synthetic("draft", seed=0, n_cells=100, n_genes=40)
    adata.obs["t"] = np.where(np.arange(100) < 50, "unknown", "B")
    path = _file(tmp_path, adata)
    with pytest.raises(ValueError, match="named 'unknown'"):
        run_annotate(path, tmp_path / "out", "t", layer="counts", **QUIET)


# ------------------------------------------------------------------ de
@pytest.mark.parametrize(("option", "value"), [("--fdr", "1.5"), ("--fdr", "0"), ("--delta", "-1")])
def test_de_ranges_are_checked_before_the_model_loads(tmp_path, option, value):
    # no run directory at all: the range error comes first, before anything is read
    res = runner.invoke(app, ["de", str(tmp_path / "absent"), "--group1", "A", option, value])
    assert res.exit_code == 2 and option in res.output
    assert "not a finished" not in res.output
