"""`train` never loses what the user had: owned output, --force, checkpoints, --resume, signals."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ensemblevi
from ensemblevi.cli import app
from ensemblevi.model import EnsembleSCVI
from ensemblevi.model._memory import check_training_memory, parameter_count, training_bytes
from ensemblevi.pipeline._data import training_data
from ensemblevi.pipeline._train_command import kl_continuation
from ensemblevi.train._callbacks import EpochCheckpoint

COMMON = ["--preset", "lopez2020", "--n-cells", "200", "--members", "2", "--batch-size", "50"]
STAGE = ".ensemblevi-stage"


@pytest.fixture(autouse=True)
def _quiet():
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def _train(*args):
    return CliRunner().invoke(app, ["train", *COMMON, *args])


def _state(path):
    return torch.load(Path(path) / "model.pt", weights_only=False)["model_state_dict"]


def test_train_refuses_a_folder_of_user_files(tmp_path, sim_file):
    d = tmp_path / "d"
    d.mkdir()
    (d / "data.h5ad").write_bytes(sim_file.read_bytes())
    (d / "notes.txt").write_text("mine")
    res = CliRunner().invoke(
        app, ["train", "--data", str(d / "data.h5ad"), "--epochs", "1", "--out", str(d)]
    )
    assert res.exit_code == 2 and "was not written by ensemblevi" in res.output
    assert sorted(p.name for p in d.iterdir()) == ["data.h5ad", "notes.txt"]
    assert (d / "data.h5ad").read_bytes() == sim_file.read_bytes()


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    from ensemblevi.data import synthetic
    from ensemblevi.data._io import write_h5ad_atomic

    return write_h5ad_atomic(
        synthetic("lopez2020", seed=0, n_cells=100, n_genes=40),
        tmp_path_factory.mktemp("data") / "data.h5ad",
    )


def test_unreadable_data_file_is_a_short_error(tmp_path):
    bad = tmp_path / "data.h5ad"
    bad.write_text("this is a text file\n")
    for args in (
        ["inspect", str(bad)],
        ["train", "--data", str(bad), "--out", str(tmp_path / "m")],
    ):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "is not a readable AnnData (.h5ad) file" in res.output
        assert "re-export" in res.output and "Traceback" not in res.output
    assert bad.read_text() == "this is a text file\n"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--epochs", "0"), ("--epochs", "-3"), ("--members", "0"), ("--batch-size", "0")],
)
def test_counts_below_one_refused_before_anything(tmp_path, option, value):
    res = _train("--epochs", "1", option, value, "--out", str(tmp_path / "m"))
    assert res.exit_code == 2 and f"{option} must be at least 1" in res.output
    assert not (tmp_path / "m").exists()


def test_force_resume_and_a_failed_retraining_keeps_the_model(tmp_path, monkeypatch):
    out = tmp_path / "m"
    assert _train("--epochs", "2", "--out", str(out)).exit_code == 0
    first = (out / "model.pt").read_bytes()
    # what a killed writer leaves (temporaries, an unfinished checkpoint save) goes next time
    leftovers = [out / ".ensemblevi-tmp-dead" / "model.pt", out / STAGE / ".ensemblevi-tmp-x"]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("half")
    res = _train("--epochs", "2", "--out", str(out))
    assert res.exit_code == 0 and "nothing to do" in res.output
    assert not any(p.exists() for p in leftovers)
    res = _train("--epochs", "3", "--out", str(out))
    assert res.exit_code == 1 and "epochs: 2 -> 3" in res.output and "--force" in res.output
    assert (out / "model.pt").read_bytes() == first

    # a retraining that dies after its first checkpoint: the finished model is untouched
    real = EpochCheckpoint._save

    def save_then_die(self, epoch):
        real(self, epoch)
        raise RuntimeError("killed")

    monkeypatch.setattr(EpochCheckpoint, "_save", save_then_die)
    res = _train("--epochs", "3", "--seed", "1", "--out", str(out), "--force")
    assert isinstance(res.exception, RuntimeError)
    monkeypatch.undo()
    assert (out / "model.pt").read_bytes() == first
    assert json.loads((out / "train.json").read_text())["spec"]["epochs"] == 2
    record = EpochCheckpoint.read(out / STAGE / "checkpoint")
    assert record["epochs_done"] == 1 and Path(record["folder"]).name == "epoch-0001"

    res = _train("--epochs", "3", "--seed", "1", "--out", str(out))
    assert res.exit_code == 1  # neither the model nor the checkpoint is replaced unasked
    res = _train("--epochs", "3", "--seed", "2", "--out", str(out), "--force", "--resume")
    assert res.exit_code == 2 and "seed: 1 -> 2" in res.output
    res = _train("--epochs", "3", "--seed", "1", "--out", str(out), "--force", "--resume")
    assert res.exit_code == 0, res.output
    assert "epochs 2..3" in res.output
    done = json.loads((out / "train.json").read_text())
    assert done["spec"]["epochs"] == 3 and done["resumed_after"] == 1
    assert sorted(os.listdir(out)) == [
        ".ensemblevi-manifest.json",
        "model.json",
        "model.pt",
        "train.json",
    ]
    res = _train("--epochs", "3", "--seed", "1", "--out", str(out), "--resume")
    assert res.exit_code == 0 and "nothing to do" in res.output


def test_resumable_checkpoint_layout(tmp_path):
    from ensemblevi.data import synthetic

    ad = synthetic("lopez2020", seed=0, n_cells=60, n_genes=20)
    EnsembleSCVI.setup_anndata(ad, layer="counts")
    model = EnsembleSCVI(ad, n_members=2, n_hidden=8, n_latent=2, seed=0)
    seen = []
    cb = EpochCheckpoint(
        model,
        tmp_path,
        record={"spec": {"x": 1}},
        epochs_before=4,
        on_save=lambda n, folder: seen.append((n, folder.name)),
    )
    model.train(max_epochs=3, batch_size=30, enable_progress_bar=False, callbacks=[cb])
    assert seen == [(5, "epoch-0005"), (6, "epoch-0006"), (7, "epoch-0007")]
    record = EpochCheckpoint.read(tmp_path)
    assert record["epochs_done"] == 7 and record["spec"] == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "epoch-0007"]
    (tmp_path / "epoch-0007" / "model.pt").unlink()  # a record whose model is gone
    assert EpochCheckpoint.read(tmp_path) is None
    (tmp_path / "checkpoint.json").write_text("{trunc")
    assert EpochCheckpoint.read(tmp_path) is None


def test_resume_without_checkpoint_is_refused(tmp_path):
    res = _train("--epochs", "1", "--out", str(tmp_path / "m"), "--resume")
    assert res.exit_code == 2 and "no checkpoint of an interrupted training" in res.output


def test_kl_warmup_continues_after_resume():
    assert kl_continuation(0) is None
    plan = kl_continuation(100)
    # scvi-tools' weight epoch/400 continued: (100 + e) / 400 = min + (1 - min) e / (400 - 100)
    for e in (0, 50, 299):
        weight = (
            plan["min_kl_weight"] + (1 - plan["min_kl_weight"]) * e / plan["n_epochs_kl_warmup"]
        )
        assert weight == pytest.approx((100 + e) / 400)
    assert kl_continuation(500) == {"min_kl_weight": 1.0, "n_epochs_kl_warmup": None}


def test_memory_estimate_refuses_before_allocating(tmp_path, monkeypatch):
    import ensemblevi.model._memory as mem

    def build(n):
        return torch.nn.Linear(10, 3 * n)  # 3n(10 + 1) parameters: 33 per member

    assert training_bytes(330, 10, 1, 1) == (4 * 330 + 6 * 10) * 4
    with pytest.raises(MemoryError, match=r"needs at least .* GiB .*--shard I/N"):
        check_training_memory(build, 10**8, 128, 100, available=2**30)  # meta: no allocation
    assert check_training_memory(build, 10, 1, 1, available=2**30) == (4 * 330 + 60) * 4
    assert parameter_count(build, 10**9) == 33 * 10**9

    monkeypatch.setattr(mem, "available_bytes", lambda accelerator="auto": 2**30)
    res = _train("--members", "100000", "--epochs", "1", "--out", str(tmp_path / "m"))
    assert res.exit_code == 2 and "100,000 members needs at least" in res.output
    assert "1.0 GiB is free" in res.output
    assert not (tmp_path / "m" / STAGE / "checkpoint").exists()


def test_model_constructor_refuses_weights_that_cannot_fit(monkeypatch):
    import ensemblevi.model._memory as mem
    from ensemblevi.data import synthetic

    ad = synthetic("lopez2020", seed=0, n_cells=50, n_genes=20)
    EnsembleSCVI.setup_anndata(ad, layer="counts")
    one, two = (
        sum(p.numel() for p in EnsembleSCVI(ad, n_members=k).module.parameters()) for k in (1, 2)
    )
    expected = (2 * one - two) + (two - one) * 100_000  # shared + per member x K, counted real
    monkeypatch.setattr(mem, "available_bytes", lambda accelerator="auto": 2**30)
    with pytest.raises(MemoryError, match=rf"Building 100,000 members .*\({expected:,} param"):
        EnsembleSCVI(ad, n_members=100_000)
    with pytest.raises(ValueError):  # what every command already reports as an error line
        EnsembleSCVI(ad, n_members=100_000)


def test_nan_batch_is_a_named_error_in_train(tmp_path, sim_file):
    import anndata
    import numpy as np

    ad = anndata.read_h5ad(sim_file)
    ad.obs["batch"] = ad.obs["batch"].astype(object)
    ad.obs.iloc[:4, ad.obs.columns.get_loc("batch")] = np.nan
    path = tmp_path / "nan.h5ad"
    ad.write_h5ad(path)
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(path),
            "--layer",
            "counts",
            "--batch-key",
            "batch",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert res.exit_code == 2 and "obs['batch'] has 4 missing value(s)" in res.output
    res = CliRunner().invoke(app, ["inspect", str(path)])
    assert res.exit_code == 0 and "4 missing (NaN)" in res.output


# ---------------------------------------------------------------- signals (subprocess)
def _command(out, *extra):
    code = "import sys; from ensemblevi.cli import main; sys.argv[0] = 'ensemblevi'; main()"
    args = ["train", *COMMON, "--epochs", "40", "--seed", "3", "--accelerator", "cpu"]
    return [sys.executable, "-c", code, *args, "--out", str(out), *extra]


def _env():
    src = str(Path(ensemblevi.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src, "COLUMNS": "200"}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_exits_nonzero_keeps_checkpoint_and_resumes(tmp_path, sig, code):
    out = tmp_path / "m"
    proc = subprocess.Popen(
        _command(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    record = out / STAGE / "checkpoint" / EpochCheckpoint.RECORD
    deadline = time.monotonic() + 240
    while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, output
    name = signal.Signals(sig).name
    line = next(ln for ln in output.splitlines() if ln.startswith("Interrupted"))
    assert line.startswith(f"Interrupted ({name}): kept the checkpoint after epoch ")
    assert "--resume" in line and str(out / STAGE / "checkpoint" / "epoch-") in line
    assert "NameError" not in output and "Exception raised during training" not in output
    assert "Traceback" not in output

    ckpt = EpochCheckpoint.read(out / STAGE / "checkpoint")
    assert 1 <= ckpt["epochs_done"] < 40
    assert f"after epoch {ckpt['epochs_done']} of 40" in line
    adata, _ = training_data({**ckpt["spec"], "epochs": 40})
    model = EnsembleSCVI.load(ckpt["folder"], adata=adata)  # the checkpoint is usable
    assert model.is_trained and model.n_members == 2
    assert not (out / "model.pt").exists()  # nothing is called finished
    res = CliRunner().invoke(app, _command(out)[3:])  # the same command without --resume
    assert res.exit_code == 1 and "pass --resume to continue it" in res.output
    assert EpochCheckpoint.read(out / STAGE / "checkpoint") == ckpt

    res = subprocess.run(
        _command(out, "--resume"), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((out / "train.json").read_text())["resumed_after"] == ckpt["epochs_done"]
    assert not (out / STAGE).exists()
