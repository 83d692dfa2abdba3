"""`ensemblevi run` / `de` never lose what the user had: staging, reuse, refusal, interruption."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anndata
import pandas as pd
import pytest
from typer.testing import CliRunner

from ensemblevi import _files, cli
from ensemblevi import _fingerprint as fp
from ensemblevi.data import synthetic
from ensemblevi.data._io import write_h5ad_atomic
from ensemblevi.pipeline import _outputs

runner = CliRunner()
TINY = [
    "--n-cells",
    "200",
    "--epochs",
    "1",
    "--members",
    "2",
    "--n-samples",
    "2",
    "--n-top-genes",
    "100",
]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    # paths in messages must not be folded at 80 columns for the assertions below
    monkeypatch.setattr(cli.console, "width", 1000)


def _run(*args):
    return runner.invoke(cli.app, ["run", *map(str, args)])


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file of the committed result, by relative path."""
    files = _files.OutputDirectory(out, "run").files
    return {rel: (out / rel).read_bytes() for rel in files}


def _data_file(path: Path, seed: int = 0, rename: dict | None = None) -> Path:
    adata = synthetic(preset="heartlike", seed=seed, n_cells=200)
    if rename:
        adata.obs["cell_type"] = adata.obs["cell_type"].cat.rename_categories(rename)
    write_h5ad_atomic(adata, path, overwrite=True)
    return path


def test_failed_figures_keep_the_old_run_whole_and_the_new_model_for_reuse(tmp_path, monkeypatch):
    # the single kind: its report also says it has no spread (one full run for both)
    out, tiny = tmp_path / "run", [*TINY, "--ensemble", "single"]
    res = _run(*tiny, "--out", out)
    assert res.exit_code == 0, res.output
    before = _snapshot(out)
    assert "model/ensemblevi.json" in before and "run.json" in before
    report = before["report.html"].decode()
    assert "no between-member spread" in report
    assert "retraining would move these values" not in report

    def broken(*args, **kwargs):
        raise RuntimeError("figure stage broke")

    monkeypatch.setattr(_outputs, "write_figures", broken)
    res = _run(*tiny, "--seed", "1", "--force", "--out", out)
    assert res.exit_code == 1 and "figure stage broke" in res.output
    kept = out / _files.STAGE / "model"
    assert f"kept in {kept}" in res.output
    assert _snapshot(out) == before  # the old run is whole: --force removed nothing yet
    assert fp.read_record(kept)["config"]["seed"] == 1
    monkeypatch.undo()
    monkeypatch.setattr(cli.console, "width", 1000)
    res = _run(*tiny, "--seed", "1", "--force", "--out", out)
    assert res.exit_code == 0, res.output
    assert f"reusing the trained model in {kept}" in res.output
    assert not (out / _files.STAGE).exists()
    assert fp.read_record(out / "model")["config"]["seed"] == 1
    assert json.loads((out / "run.json").read_text())["config"]["seed"] == 1


# ------------------------------------------------------------------ the reuse check
# on the directory layer: the run's stage 2 (train_or_reuse) in a staged output, with a
# stub training (an untrained model of the same class, saved and loaded for real)
def _stub_train(monkeypatch, trained: list):
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.pipeline import _train

    def stub(config, prepared, stage, log, trust, split=None):
        EnsembleSCVI.setup_anndata(
            prepared.adata, layer=prepared.layer, batch_key=prepared.batch_key
        )
        trained.append(config.seed)
        return EnsembleSCVI(prepared.adata, n_members=2, n_hidden=4, n_latent=2, seed=0)

    monkeypatch.setattr(_train, "_train", stub)


def _stage2(config, out: Path, force: bool = False):
    """Stage 2 of a run on ``config``, committed into ``out``: the Trained and the log."""
    from ensemblevi.pipeline._data import prepare_data
    from ensemblevi.pipeline._train import MODEL_DIRS, train_or_reuse

    lines: list[str] = []
    with _files.staged_output(out, "run", keep_stage=MODEL_DIRS) as d:
        prepared = prepare_data(config, log=lines.append)
        trained = train_or_reuse(config, prepared, d, force=force, log=lines.append)
        if trained.source == "result":  # as the run does: the reused model stays
            d.abandon()
    return trained, " ".join(lines)


def test_the_reuse_check_reads_the_data_not_the_path(tmp_path, monkeypatch):
    from ensemblevi.pipeline import RunConfig
    from ensemblevi.pipeline._train import RunRefused

    trained: list = []
    _stub_train(monkeypatch, trained)
    data, out = _data_file(tmp_path / "cells.h5ad"), tmp_path / "run"
    config = RunConfig(
        data=str(data), layer="counts", n_top_genes=100, members=2, epochs=1, markers=None
    )
    assert _stage2(config, out)[0].source == "trained"
    reused, log = _stage2(config, out)
    assert reused.source == "result" and "reusing the trained model" in log
    assert len(trained) == 1
    before = _snapshot(out)
    _data_file(data, seed=1)  # same path, same options, other counts
    with pytest.raises(RunRefused, match="the count matrix changed") as err:
        _stage2(config, out)
    assert "--force" in str(err.value) and _snapshot(out) == before
    again, log = _stage2(config, out, force=True)
    assert again.source == "trained" and "not reusing" in log and len(trained) == 2
    assert _snapshot(out)["model/ensemblevi.json"] != before["model/ensemblevi.json"]


def test_a_damaged_model_is_named_and_force_retrains_it(tmp_path, monkeypatch):
    from ensemblevi.pipeline import RunConfig

    trained: list = []
    _stub_train(monkeypatch, trained)
    out = tmp_path / "run"
    config = RunConfig(n_cells=200, n_top_genes=100, members=2, epochs=1, markers=None)
    _stage2(config, out)
    (out / "model" / "model.pt").write_bytes(b"")  # e.g. a disk that filled up
    with pytest.raises(ValueError, match=r"model\.pt is not a readable saved model") as err:
        _stage2(config, out)
    assert "--force" in str(err.value) and (out / "model" / "model.pt").read_bytes() == b""
    assert _stage2(config, out, force=True)[0].source == "trained"
    assert (out / "model" / "model.pt").stat().st_size > 0
    assert _stage2(config, out)[0].source == "result"  # and the new model is reused
    assert len(trained) == 2


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    res = _run(*TINY, "--out", tmp_path)
    assert res.exit_code == 1 and "not empty" in res.output
    assert os.listdir(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--labels-key", "nope"], "--labels-key 'nope'"),
        (["--n-samples", "0"], "--n-samples"),
        (["--epochs", "0"], "--epochs"),
        (["--members", "0"], "--members"),
        (["--markers", "BAD"], ""),
    ],
)
def test_bad_arguments_are_refused_before_training(tmp_path, bad, message):
    if bad == ["--markers", "BAD"]:
        (tmp_path / "m.json").write_text("{not: json")
        bad = ["--markers", str(tmp_path / "m.json")]
    res = _run(*TINY, *bad, "--out", tmp_path / "run")
    assert res.exit_code == 2 and message in res.output
    assert "training" not in res.output
    assert not (tmp_path / "run" / "model").exists()


def test_de_results_of_lossy_names_do_not_collide(tmp_path):
    rename = {"Fibroblast": "CD4 T", "Myeloid": "CD4+ T"}
    data, out = _data_file(tmp_path / "cells.h5ad", rename=rename), tmp_path / "run"
    # hyperbatch: the run also reports its tuned hyperparameters (one full run for both);
    # 3 epochs of 2 steps: two tune steps (every 3rd train step), the second one past the
    # end of the one-batch validation loader, which starts again
    args = [*TINY, "--ensemble", "hyperbatch", "--data", data, "--layer", "counts", "--out", out]
    args[args.index("--epochs") + 1] = "3"
    res = _run(*args)
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "tables" / "hyperparameters.csv")
    assert set(table["hyperparameter"]) >= {"dropout", "kl_weight"} and len(table) == 2 * 6
    assert (out / "figures" / "hyperparameters.png").exists()
    assert "Tuned hyperparameters" in (out / "report.html").read_text()
    names = []
    for group in rename.values():
        res = runner.invoke(
            cli.app, ["de", str(out), "--group1", group, "--n-samples", "2", "--max-cells", "40"]
        )
        assert res.exit_code == 0, res.output
        names.append(
            next(
                n for n in os.listdir(out / "tables") if n.endswith(".json") and n[:-5] not in names
            )[:-5]
        )
    assert len(set(names)) == 2 and all(n.startswith("de_CD4_T_vs_rest_") for n in names)
    files = _files.OutputDirectory(out, "run").files
    for name in names:
        assert {f"tables/{name}.csv", f"tables/{name}.json", f"figures/{name}.png"} <= set(files)
    uns = anndata.read_h5ad(out / "results.h5ad").uns
    assert {"ensemblevi_" + n for n in names} <= set(uns)
    report = (out / "report.html").read_text()
    assert "Differential expression: CD4 T vs rest" in report
    assert "Differential expression: CD4+ T vs rest" in report
    table = pd.read_csv(out / "tables" / f"{names[0]}.csv", index_col=0)
    assert len(table) == uns["ensemblevi_" + names[0]]["names"].shape[0]


def test_seed_models_get_records_and_the_run_reuses_them(tmp_path):
    # stage 2 of `run --seeds 2` (real scvi.model.SCVI seeds), then the same again: reused
    from ensemblevi.pipeline import RunConfig

    out = tmp_path / "run"
    config = RunConfig(n_cells=200, n_top_genes=100, seeds=2, epochs=1, markers=None)
    assert _stage2(config, out)[0].source == "trained"
    for k in range(2):
        record = fp.read_record(out / "seeds" / f"seed_{k}")
        assert record["config"]["seed"] == k and record["config"]["max_epochs"] == 1
        assert (out / "seeds" / f"seed_{k}" / "model.json").exists()  # loads without pickles
    assert fp.read_record(out / "model")["config"]["seeds"] == 2
    trained, log = _stage2(config, out)
    assert trained.source == "result" and "reusing the trained model" in log


# ------------------------------------------------------------------ interruption
def _start(out: Path, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ensemblevi.cli",
            "run",
            "--n-cells",
            "300",
            "--members",
            "2",
            "--n-top-genes",
            "100",
            "--out",
            str(out),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def _wait_for(lines: list[str], text: str, timeout: float = 180) -> None:
    # generous: the child imports torch and scvi-tools first, slow on a busy machine
    end = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert time.monotonic() < end, f"{text!r} never printed: {''.join(lines)}"
        time.sleep(0.1)


def test_sigterm_during_training_exits_143_and_leaves_the_directory_as_it_was(tmp_path):
    out = tmp_path / "run"
    proc, lines = _start(out, "--epochs", "2000")
    _wait_for(lines, "training ")
    time.sleep(1)  # well inside the 2,000 epochs
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143, "".join(lines)
    time.sleep(0.2)
    output = " ".join("".join(lines).split())
    assert "interrupted (sigterm)" in output.lower() and "Nothing was lost" in output
    assert not (out / "run.json").exists() and not (out / _files.LOCK).exists()


def test_sigterm_after_training_keeps_the_model_and_says_where(tmp_path):
    out = tmp_path / "run"
    proc, lines = _start(out, "--epochs", "1", "--n-samples", "400")
    _wait_for(lines, "saved the trained model")
    proc.send_signal(signal.SIGTERM)  # the analyses take many seconds with 400 samples
    assert proc.wait(60) == 143, "".join(lines)
    time.sleep(0.2)
    kept = out / _files.STAGE / "model"
    assert f"kept in {kept}" in " ".join("".join(lines).split())
    assert fp.read_record(kept) is not None and not (out / "run.json").exists()


# ------------------------------------------------------------------ the >8,000-cell crash
class _StubModel:
    """Stands in for a trained model: the UMAP stage only needs its denoised expression.

    Three groups of cells, each with its own 20 high genes, so the layout can be checked.
    """

    def __init__(self, label):
        self.label = label

    def _validate_anndata(self, adata):
        return adata

    def get_normalized_expression(self, adata, library_size, return_numpy, **kwargs):
        import numpy as np

        rng = np.random.default_rng(0)
        program = np.ones((3, 60))
        for k in range(3):
            program[k, 20 * k : 20 * (k + 1)] = 8.0
        rho = rng.gamma(4.0, 1.0, (adata.n_obs, 60)) * program[self.label]
        return rho / rho.sum(1, keepdims=True) * library_size


def test_umap_stage_above_the_pynndescent_size(monkeypatch):
    # issue 19 item 10: above 8,000 cells scanpy.pp.neighbors switched to pynndescent 0.7.0,
    # which calls csr_array.getnnz (gone in scipy 1.17), and the main job crashed there
    # after training. The run's figure stage (the stored UMAP, then its plot) at 9,000
    # cells, with every approximate or scanpy neighbour search refused: the UMAP's
    # neighbours are exact at any size, and the three groups of cells stay apart.
    import numpy as np
    import pynndescent
    import pynndescent.pynndescent_
    import scanpy as sc
    import umap.umap_

    import ensemblevi as ev

    def refused(*args, **kwargs):
        raise AssertionError("approximate or scanpy neighbour search called")

    monkeypatch.setattr(sc.pp, "neighbors", refused)
    monkeypatch.setattr(pynndescent, "NNDescent", refused)
    monkeypatch.setattr(pynndescent.pynndescent_, "NNDescent", refused)
    monkeypatch.setattr(umap.umap_, "nearest_neighbors", refused)
    # the stub is no EnsembleSCVI: skip the type check the tool makes first
    monkeypatch.setattr(ev.tl._embedding, "validated", lambda model, adata, *a, **k: adata)
    adata = anndata.AnnData(np.zeros((9000, 60), dtype=np.float32))
    label = np.random.default_rng(2).integers(0, 3, adata.n_obs)
    adata.obs["ensemblevi_novelty_cv"] = np.random.default_rng(1).random(adata.n_obs)
    ev.tl.expression_umap(_StubModel(label), adata)
    fig = ev.pl.novelty_umap(adata, return_fig=True)
    xy = adata.obsm["X_umap_ensemblevi"]
    assert xy.shape == (9000, 2) and np.isfinite(xy).all() and fig.axes
    # every cell is nearer its own group's centre than another's
    mid = np.stack([xy[label == k].mean(0) for k in range(3)])
    nearest = np.argmin(((xy[:, None, :] - mid[None]) ** 2).sum(-1), axis=1)
    assert (nearest == label).mean() > 0.99
