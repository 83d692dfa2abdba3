import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from typer.testing import CliRunner

from ensemblevi.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["simulate"],
        ["inspect"],
        ["run"],
        ["de"],
        ["map"],
        ["train"],
        ["merge"],
        ["benchmark"],
        ["version"],
    ],
)
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
    # not --quick: it sets 1,000 cells whatever --n-cells says; 500 cells hold out the 45
    # validation cells the novelty rule needs to calibrate
    args = ["run", "--n-cells", "500", "--epochs", "2", "--n-samples", "3", "--members", "2"]
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
    assert "ensemblevi_cv_between" in ad.var and "ensemblevi_is_novel" in ad.obs
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
    # DE on the run directory: table, settings, figure, AnnData and a report section
    de = ["de", str(out), "--group1", "Fibroblast", "--group2", "Myeloid", "--n-samples", "4"]
    res = runner.invoke(app, de)
    assert res.exit_code == 0, res.output
    name = "de_Fibroblast_vs_Myeloid"
    for path in (f"tables/{name}.csv", f"tables/{name}.json", f"figures/{name}.png"):
        assert (out / path).exists(), path
    report = (out / "report.html").read_text()
    assert "Differential expression: Fibroblast vs Myeloid" in report
    assert report.count("data:image/png;base64") == len(figures) + 1
    ad = anndata.read_h5ad(out / "results.h5ad")
    df = sc.get.rank_genes_groups_df(ad, "Fibroblast", key="ensemblevi_de_Fibroblast_vs_Myeloid")
    table = pd.read_csv(out / "tables" / f"{name}.csv", index_col=0)
    assert len(df) == len(table) == ad.n_vars
    np.testing.assert_allclose(df["scores"], table["proba_de"], rtol=1e-6)
    for bad, msg in (
        (["--group1", "Nope"], "Nope"),
        (["--groupby", "nope", "--group1", "A"], "nope"),
    ):
        res = runner.invoke(app, ["de", str(out), *bad])
        assert res.exit_code == 2 and msg in res.output
    res = runner.invoke(app, ["de", str(tmp_path / "empty"), "--group1", "A"])
    assert res.exit_code == 2 and "ensemblevi run" in res.output
    # same configuration: the trained model is reused, and the DE result with it
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "reusing the trained model" in res.output
    assert (out / "tables" / f"{name}.csv").exists()
    assert "Differential expression" in (out / "report.html").read_text()
    assert "ensemblevi_de_Fibroblast_vs_Myeloid" in anndata.read_h5ad(out / "results.h5ad").uns
    # a different run is refused without --force, and nothing is touched
    before = (out / "run.json").read_bytes()
    res = runner.invoke(app, [*args, "--members", "3"])
    assert res.exit_code == 1 and "--force" in res.output and "members: 2 -> 3" in res.output
    assert (out / "run.json").read_bytes() == before
    manifest = json.loads((out / ".ensemblevi-manifest.json").read_text())
    assert f"tables/{name}.csv" in manifest["files"] and manifest["command"] == "run"
    # a new model (--force) takes the DE results of the old one with it, at its commit
    res = runner.invoke(app, [*args, "--members", "3", "--force"])
    assert res.exit_code == 0, res.output
    assert not (out / "tables" / f"{name}.csv").exists()
    assert not (out / "figures" / f"{name}.png").exists()
    assert "Differential expression" not in (out / "report.html").read_text()
    assert not any(
        k.startswith("ensemblevi_de_") for k in anndata.read_h5ad(out / "results.h5ad").uns
    )


def test_run_reports_bad_markers(tmp_path):
    res = runner.invoke(app, ["run", "--quick", "--markers", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "Unknown marker set" in res.output


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    # both interpreters start at once: each spends its seconds importing
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in ("ensemblevi", "ensemblevi.cli")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "run" in out and "map" in out
