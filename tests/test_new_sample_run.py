"""``ensemblevi run --sample-key``: whole samples kept out of training set the novelty
thresholds, and the record, the report and the CLI say so (issue 35)."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pytest
from typer.testing import CliRunner

from ensemblevi.cli import app
from ensemblevi.data._io import write_h5ad_atomic
from ensemblevi.data._replicates import synthetic_replicates
from ensemblevi.pipeline import RunConfig, run_pipeline
from ensemblevi.tl._novelty_rule import TRAINING_SAMPLES, UNSEEN_SAMPLES, sample_split
from ensemblevi.tl._thresholds import conformal_threshold

QUIET = {"log": lambda *_: None}
TINY = {"layer": "counts", "n_top_genes": 60, "epochs": 2, "members": 2, "n_samples": 2}


def _replicates(n_samples=4, n_cells=480, seed=0):
    adata = synthetic_replicates(
        n_cells=n_cells,
        n_genes=60,
        n_samples=n_samples,
        n_types=2,
        design="paired",
        de_frac=0.0,
        seed=seed,
    )
    del adata.uns["synthetic_replicates"]
    return adata


def _file(tmp_path, adata):
    path = tmp_path / "reps.h5ad"
    write_h5ad_atomic(adata, path, overwrite=True)
    return path


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """One tiny run with --sample-key (a quarter of 4 samples: 1 kept out)."""
    tmp = tmp_path_factory.mktemp("samplerun")
    path = _file(tmp, _replicates())
    config = RunConfig(data=str(path), sample_key="sample", **TINY)
    reading = run_pipeline(config, tmp / "out", **QUIET)
    return tmp / "out", reading


def test_run_keeps_samples_out_and_calibrates_on_them(sample_run):
    out, reading = sample_run
    result = anndata.read_h5ad(out / "results.h5ad")
    uns = result.uns["ensemblevi"]
    split = uns["sample_split"]
    assert split["sample_key"] == "sample"
    assert len(split["holdout_samples"]) == 1
    held = split["holdout_samples"][0]
    samples = result.obs["sample"].astype(str).to_numpy()
    assert split["n_holdout_cells"] == int((samples == held).sum())
    # the same split sample_split draws with the run's seed: the model never saw that sample
    expected = sample_split(result, "sample", seed=0)
    assert expected["holdout_samples"] == [held]
    train, _, _ = expected["datasplitter_kwargs"]["external_indexing"]
    assert held not in set(samples[train])
    cells = uns["cell_novelty"]
    assert cells["calibration_kind"] == UNSEEN_SAMPLES == split["calibration_kind"]
    assert list(cells["calibration_sample_names"]) == [held]
    assert cells["n_calibration_cells"] == split["n_holdout_cells"]
    # one held-out sample: the rate is measured on halves of its cells, and says so
    assert "one held-out sample" in cells["fpr_measured_on"]
    # the threshold is the conformal quantile of the held-out sample's scores (recomputed)
    deciding = result.obs["ensemblevi_novelty_combined"].to_numpy()
    threshold, _ = conformal_threshold(deciding[samples == held], cells["alpha"])
    assert threshold == pytest.approx(cells["novelty_combined_threshold"])
    # one held-out sample: there is no largest of several, and the reading says nothing of it
    assert cells["threshold_rule"].startswith("the conformal")
    assert "Each threshold is" not in " ".join(reading)
    # the training cells are never tested, the held-out sample's cells all are
    tested = result.obs["ensemblevi_novelty_tested"].to_numpy().astype(bool)
    assert tested[samples == held].all()
    assert not tested[train].any()
    text = " ".join(reading)
    assert "calibrated on unseen samples" in text and repr(held) not in text
    assert f"the samples {held} of obs['sample'] were kept out of training" in text
    config = json.loads((out / "run.json").read_text())
    assert config["config"]["sample_key"] == "sample"
    assert config["model"]["config"]["sample_split"]["sample_key"] == "sample"
    assert "kept out of training" in (out / "report.html").read_text()


def test_run_without_sample_key_says_training_samples(tmp_path):
    path = _file(tmp_path, _replicates())
    config = RunConfig(data=str(path), sample_key="sample", holdout_samples=0, **TINY)
    reading = run_pipeline(config, tmp_path / "out", **QUIET)
    uns = anndata.read_h5ad(tmp_path / "out" / "results.h5ad").uns["ensemblevi"]
    assert len(uns["sample_split"]["holdout_samples"]) == 0
    assert uns["cell_novelty"]["calibration_kind"] == TRAINING_SAMPLES
    assert "calibrated on cells of the training samples" in " ".join(reading)
    # recorded like a run before the option: a model trained without samples kept out
    record = json.loads((tmp_path / "out" / "run.json").read_text())["model"]
    assert "sample_split" not in record["config"]


@pytest.mark.parametrize(
    ("change", "options", "match"),
    [
        ("one sample", {}, "at least 2"),
        ("tiny samples", {}, "have at least 20 cells"),
        ("missing", {"sample_key": "donor"}, "not an obs column"),
        ("too many out", {"holdout_samples": 4}, "n_holdout must be between"),
    ],
)
def test_bad_samples_fail_before_training(tmp_path, monkeypatch, change, options, match):
    adata = _replicates()
    if change == "one sample":
        adata.obs["sample"] = "s0"
    elif change == "tiny samples":  # two samples of 10 cells, one of 460: 2 cannot be kept out
        cell = np.arange(adata.n_obs)
        adata.obs["sample"] = np.where(cell < 10, "small1", np.where(cell < 20, "small2", "big"))
        options = {"holdout_samples": 2}
    import ensemblevi.pipeline._train as train_module

    def no_training(*args, **kwargs):
        raise AssertionError("trained despite bad samples")

    monkeypatch.setattr(train_module, "_train", no_training)
    config = RunConfig(
        data=str(_file(tmp_path, adata)), **{"sample_key": "sample", **TINY, **options}
    )
    with pytest.raises(ValueError, match=match):
        run_pipeline(config, tmp_path / "out", **QUIET)
    assert not (tmp_path / "out" / "run.json").exists()


def test_holdout_samples_needs_a_sample_key():
    with pytest.raises(ValueError, match="--holdout-samples keeps whole samples out"):
        RunConfig(holdout_samples=2).validate()
    with pytest.raises(ValueError, match="--holdout-samples must be an integer >= 0"):
        RunConfig(sample_key="s", holdout_samples=-1).validate()


def test_cli_run_sample_key_exit_2_names_the_fix(tmp_path):
    adata = _replicates()
    adata.obs["sample"] = "s0"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--data",
            str(_file(tmp_path, adata)),
            "--layer",
            "counts",
            "--sample-key",
            "sample",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code != 0
    assert "--holdout-samples 0" in " ".join(result.output.split())
