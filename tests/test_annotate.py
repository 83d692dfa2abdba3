"""``ensemblevi annotate``: label transfer end to end, its outputs, refusals and file safety."""

import json

import anndata
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import ensemblevi as ev
from ensemblevi.cli import app
from ensemblevi.pipeline._annotate import HELD_OUT, annotate_reading, hide_labels

runner = CliRunner()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotate")
    adata = ev.data.synthetic("lopez2020", seed=1, n_cells=500, n_genes=60)
    adata.X = adata.layers["counts"].copy()
    del adata.layers["counts"]
    lab = adata.obs["cell_type"].astype(str).to_numpy()
    lab[:40] = "Unknown"  # cells of unknown type are predicted, not trained on
    adata.obs["cell_type"] = lab
    path = root / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def test_hide_labels_is_stratified_and_skips_unlabelled():
    labels = pd.Series(["a"] * 50 + ["b"] * 10 + ["c"] + ["Unknown"] * 20)
    mask = hide_labels(labels, "Unknown", 0.2, seed=0)
    assert mask[:50].sum() == 10 and mask[50:60].sum() == 2
    assert not mask[60] and not mask[61:].any()  # a single cell keeps its label
    assert not hide_labels(labels, "Unknown", 0.0, seed=0).any()


def test_annotate_writes_everything_and_only_reads_its_input(data_file, tmp_path):
    before = data_file.read_bytes()
    out = tmp_path / "ann"
    args = [
        "annotate",
        "--data",
        str(data_file),
        "--labels-key",
        "cell_type",
        "--out",
        str(out),
        "--epochs",
        "3",
        "--scanvi-epochs",
        "2",
        "--members",
        "2",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert data_file.read_bytes() == before
    for rel in (
        "results.h5ad",
        "tables/labels.csv",
        "tables/label_calibration.csv",
        "tables/confusion.csv",
        "figures/label_calibration.png",
        "figures/label_confusion.png",
        "figures/label_umap.png",
        "model/model.pt",
        "annotate.json",
        "report.html",
    ):
        assert (out / rel).exists(), rel
    adata = anndata.read_h5ad(out / "results.h5ad")
    record = json.loads((out / "annotate.json").read_text())
    held = adata.obs[HELD_OUT].to_numpy().astype(bool)
    assert record["n_held_out"] == held.sum() > 0
    assert not held[(adata.obs["cell_type"] == "Unknown").to_numpy()].any()
    truth = adata.obs["cell_type"].astype(str).to_numpy()[held]
    pred = adata.obs["ensemblevi_label"].astype(str).to_numpy()[held]
    assert record["held_out.accuracy"] == pytest.approx(np.mean(pred == truth))
    table = pd.read_csv(out / "tables" / "labels.csv", index_col=0)
    assert len(table) == adata.n_obs and table["label_unknown"].sum() == record["n_unknown"]
    assert "ensemblevi annotate report" in (out / "report.html").read_text()
    # an earlier annotation is replaced only with --force
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--force" in again.output
    assert (out / "results.h5ad").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--labels-key", "nope"], "not a column"),
        (["--labels-key", "cell_type", "--holdout", "1.5"], "holdout"),
        (["--labels-key", "cell_type", "--score", "bad"], "score"),
    ],
)
def test_annotate_refuses_bad_options_before_training(data_file, tmp_path, extra, message):
    res = runner.invoke(
        app, ["annotate", "--data", str(data_file), "--out", str(tmp_path / "x"), *extra]
    )
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "x").exists()


def test_annotate_with_a_distance_score_decides_by_the_scvi_ensemble(
    data_file, tmp_path, monkeypatch
):
    from ensemblevi import tl
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.pipeline._annotate import run_annotate

    seen = {}

    class Stop(Exception):
        pass

    def record(model, adata, **kwargs):  # what annotate passes; stop before the outputs
        seen.update(kwargs, source=model.source_scvi)
        raise Stop

    monkeypatch.setattr(tl, "label_uncertainty", record)
    for score in ("novelty_combined", "entropy"):
        seen.clear()
        with pytest.raises(Stop):
            run_annotate(
                data_file,
                tmp_path / score,
                "cell_type",
                epochs=1,
                scanvi_epochs=1,
                members=2,
                score=score,
                log=lambda *_: None,
            )
        assert seen["score"] == score
        # the scANVI keeps the scVI ensemble it started from, whose rule decides a distance
        # score by default (label_uncertainty's novelty_model=None)
        assert isinstance(seen["source"], EnsembleSCVI) and "novelty_model" not in seen
        assert not (tmp_path / score).exists()  # nothing half-written


def test_annotate_reading_says_who_decided_unknown():
    info = {"n_unknown": 3, "n_cells": 100, "score": "novelty_combined", "alpha": 0.05}
    own = annotate_reading({**info, "novelty_model": "scANVI"}, None, 0)
    by_vae = annotate_reading({**info, "novelty_model": "EnsembleSCVI"}, None, 0)
    assert len(by_vae) == len(own) + 1
    assert "scVI ensemble's novelty flags" in by_vae[-1]
    # a distance score never tests the cells the model trained on: the report says how many
    untested = annotate_reading({**info, "n_untested": 2375}, None, 0)
    assert len(untested) == len(annotate_reading(info, None, 0)) + 1
    assert untested[-1].startswith("2,375 of the cells were trained on")
