import anndata
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


def test_run_default_main_job(tmp_path):
    args = ["run", "--preset", "lopez2020", "--epochs", "2", "--members", "2"]
    args += ["--n-samples", "2", "--out", str(tmp_path)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "valid raw counts" in res.output and "B_vs_A" in res.output
    assert "agree on least" in res.output
    ad = anndata.read_h5ad(tmp_path / "run.h5ad")
    assert {"ensemblevi_mean", "ensemblevi_var_between"} <= set(ad.layers)
    assert (tmp_path / "model" / "model.pt").exists()
    before = (tmp_path / "run.h5ad").read_bytes()
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--force" in res.output
    assert (tmp_path / "run.h5ad").read_bytes() == before
