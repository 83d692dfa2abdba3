"""``ensemblevi map``: a query mapped onto a finished run, its novelty, and file safety."""

import hashlib
import json
import warnings

import anndata
import numpy as np
import pytest
from typer.testing import CliRunner

import ensemblevi as ev
from ensemblevi.cli import app
from ensemblevi.pipeline._map import prepare_query

runner = CliRunner()


def _digest(path):
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("map")
    out = root / "run"
    res = runner.invoke(
        app,
        [
            "run",
            "--n-cells",
            "400",
            "--epochs",
            "2",
            "--n-samples",
            "2",
            "--members",
            "2",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    query = ev.data.synthetic(preset="heartlike", n_cells=300, seed=5)
    query = query[:, query.var_names[40:]].copy()  # 40 reference genes missing: padded
    del query.obs["cell_type"]  # no labels: the map clusters the query
    del query.obs["batch"]  # no batch column: the query is mapped as one new batch
    qpath = root / "query.h5ad"
    query.write_h5ad(qpath)
    return out, qpath


def test_map_writes_its_result_and_only_reads_the_run(run_dir, tmp_path):
    run, qpath = run_dir
    before = _digest(run)
    query_before = qpath.read_bytes()
    out = tmp_path / "map"
    res = runner.invoke(
        app, ["map", "--model", str(run), "--query", str(qpath), "--out", str(out), "--epochs", "2"]
    )
    assert res.exit_code == 0, res.output
    assert _digest(run) == before and qpath.read_bytes() == query_before
    for rel in (
        "results.h5ad",
        "tables/cell_novelty.csv",
        "tables/group_novelty.csv",
        "figures/novelty_umap.png",
        "figures/group_novelty.png",
        "model/model.pt",
        "map.json",
        "report.html",
    ):
        assert (out / rel).exists(), rel
    q = anndata.read_h5ad(out / "results.h5ad")
    ref = anndata.read_h5ad(run / "results.h5ad")
    assert list(q.var_names) == list(ref.var_names)  # the reference's genes, in its order
    assert q.obs["batch"].eq("query").all()  # one new batch where the query names none
    info = q.uns["ensemblevi"]["cell_novelty"]
    assert "reference model" in info["calibrated_on"]
    # issue 35: one alpha for cell flags and group calls; the calibration's kind is said
    assert info["alpha"] == q.uns["ensemblevi"]["group_novelty"]["cell_alpha"] == 0.05
    assert info["calibration_kind"] == "cells of the training samples"
    assert q.obs["ensemblevi_novelty_tested"].all()  # no query cell was trained on
    groups = q.uns["ensemblevi"]["group_novelty"]
    assert groups["groupby"] == "ensemblevi_leiden" and q.obs["ensemblevi_leiden"].nunique() > 1
    record = json.loads((out / "map.json").read_text())
    assert record["n_query_cells"] == 300 and record["reading"][0].startswith(
        f"{int(q.obs['ensemblevi_is_novel'].sum())} of 300 query cells"
    )
    html = (out / "report.html").read_text()
    assert "Novel populations" in html and "data:image/png;base64" in html
    assert "Calibration: cells of the training samples" in html
    # an earlier map is replaced only with --force, and stays whole until then
    kept = _digest(out)
    res = runner.invoke(
        app, ["map", "--model", str(run), "--query", str(qpath), "--out", str(out), "--epochs", "1"]
    )
    assert res.exit_code == 1 and "--force" in res.output and _digest(out) == kept
    res = runner.invoke(
        app,
        [
            "map",
            "--model",
            str(run),
            "--query",
            str(qpath),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--force",
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "map.json").read_text())["seed"] == 3


def test_map_refuses_bad_input_before_training(run_dir, tmp_path):
    run, qpath = run_dir
    base = ["map", "--model", str(run), "--query", str(qpath)]
    cases = [
        (["--out", str(tmp_path / "a"), "--batch-key", "nope"], "--batch-key 'nope'"),
        (["--out", str(tmp_path / "b"), "--groupby", "nope"], "--groupby 'nope'"),
        (["--out", str(run)], "is the run directory"),
        (["--out", str(tmp_path / "d"), "--sample-key", "nope"], "--sample-key 'nope'"),
    ]
    for extra, message in cases:
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not (tmp_path / "d").exists()
    res = runner.invoke(
        app, ["map", "--model", str(tmp_path), "--query", str(qpath), "--out", str(tmp_path / "c")]
    )
    assert res.exit_code == 2 and "not a finished `ensemblevi run`" in res.output


def test_mapping_onto_known_batches_keeps_the_reference_latent_knn(run_dir):
    # with the encoder frozen and every query batch known to the reference, scArches
    # changes nothing the distances read: the mapped distances equal the reference's own
    run, _ = run_dir
    ref = anndata.read_h5ad(run / "results.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ev.model.EnsembleSCVI.load(run / "model", adata=ref)
    query = ev.data.synthetic(preset="heartlike", n_cells=200, seed=6)
    q = prepare_query(query, reference, log=lambda _: None)
    direct = q.copy()
    mapped = ev.model.EnsembleSCVI.load_query_data(q, reference)
    mapped.train(max_epochs=2, seed=0, enable_progress_bar=False)
    ev.model.EnsembleSCVI.setup_anndata(direct, batch_key="batch")
    a = ev.tl.cell_novelty(reference, direct, progress=False)
    b = ev.tl.cell_novelty(mapped, q, progress=False, reference_model=reference)
    np.testing.assert_allclose(b["novelty_knn"], a["novelty_knn"], rtol=1e-5)
    np.testing.assert_array_equal(b["novelty_knn_flag"], a["novelty_knn_flag"])
    np.testing.assert_allclose(b["novelty_expr"], a["novelty_expr"], rtol=1e-6)
    # is_novel also reads the decoders' fit (novelty_fit), which the mapping does move:
    # training adapts the decoders' batch norms to the query
