import anndata
import pandas as pd
import pytest
from typer.testing import CliRunner

from ensemblevi.cli import app

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["simulate"], ["inspect"], ["run"], ["version"]])
def test_help_everywhere(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_simulate_writes_refuses_overwrite_and_forces(tmp_path):
    out = tmp_path / "sim.h5ad"
    args = ["simulate", "--preset", "lopez2020", "--seed", "4", "--out", str(out)]
    res = runner.invoke(app, [*args, "--set", "n_cells=120"])
    assert res.exit_code == 0, res.output
    ad = anndata.read_h5ad(out)
    assert ad.n_obs == 120 and ad.uns["synthetic"]["seed"] == 4
    before = out.read_bytes()
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--force" in res.output
    assert out.read_bytes() == before
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0 and anndata.read_h5ad(out).n_obs == 1000


def test_simulate_bad_override(tmp_path):
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x.h5ad"), "--set", "n_typo=3"])
    assert res.exit_code == 2 and "Unknown simulator parameter" in res.output
    assert not (tmp_path / "x.h5ad").exists()


def test_inspect_reports_validation(tmp_path):
    out = tmp_path / "sim.h5ad"
    runner.invoke(app, ["simulate", "--preset", "hard", "--out", str(out), "--set", "n_cells=90"])
    res = runner.invoke(app, ["inspect", str(out), "--layer", "counts"])
    assert res.exit_code == 0
    assert "90 cells" in res.output and "valid raw counts" in res.output
    res = runner.invoke(app, ["inspect", str(out), "--layer", "true_rate"])
    assert "invalid" in res.output and "non-integer" in res.output
    res = runner.invoke(app, ["inspect", str(tmp_path / "nope.h5ad")])
    assert res.exit_code == 2 and "No file" in res.output


def test_run_main_job_writes_everything_and_reuses(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--quick", "--n-cells", "300", "--epochs", "2", "--members", "2"]
    args += ["--marker", "Myeloid=CD14,NOTAGENE", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "valid raw counts" in res.output and "NOTAGENE" in res.output
    for name in ("report.html", "results.h5ad", "run.json", "model/model.pt"):
        assert (out / name).exists(), name
    for name in ("marker_summary", "gene_uncertainty", "cell_novelty", "run_metadata"):
        assert (out / "tables" / f"{name}.csv").exists()
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"model_spread.png", "novelty_umap.png", "gene_uncertainty.png"} <= figures
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") == len(figures) and "DCN" in report
    ad = anndata.read_h5ad(out / "results.h5ad")
    assert "ensemblevi_uncertainty" in ad.var and "ensemblevi_is_novel" in ad.obs
    summary = pd.read_csv(out / "tables" / "marker_summary.csv")
    assert set(summary["gene"]) == {
        "DCN",
        "GSN",
        "PDGFRA",
        "MYH11",
        "TAGLN",
        "ACTA2",
        "CD14",
        "C1QA",
        "CD68",
    }
    # same configuration: the trained model is reused
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "reusing the trained model" in res.output
    # a different run is refused without --force, and nothing is touched
    before = (out / "run.json").read_bytes()
    res = runner.invoke(app, [*args, "--members", "3"])
    assert res.exit_code == 1 and "--force" in res.output
    assert (out / "run.json").read_bytes() == before


def test_run_reports_bad_markers(tmp_path):
    res = runner.invoke(app, ["run", "--quick", "--markers", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "Unknown marker set" in res.output


def test_run_hyperbatch_reports_tuned_hyperparameters(tmp_path):
    out = tmp_path / "hbe"
    args = ["run", "--quick", "--n-cells", "300", "--epochs", "2", "--members", "2"]
    res = runner.invoke(app, [*args, "--ensemble", "hyperbatch", "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "tables" / "hyperparameters.csv")
    assert set(table["hyperparameter"]) >= {"dropout", "kl_weight"} and len(table) == 2 * 6
    assert (out / "figures" / "hyperparameters.png").exists()
    assert "Tuned hyperparameters" in (out / "report.html").read_text()
