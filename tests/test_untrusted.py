"""Untrusted files: loading a model never runs code from it (issue 32, kind 1).

A model folder is shared (a lab drive, a collaborator's results, a model hub), so a
``model.pt`` may carry a pickle payload. Every load path is tried with one whose
``__reduce__`` would create a marker file: nothing may run, and the error names the file
and the opt-in. A normal save and load still gives identical outputs.
"""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ensemblevi import _compat, _files, cli
from ensemblevi import _fingerprint as fp
from ensemblevi._compat import UntrustedModelError
from ensemblevi.data import synthetic
from ensemblevi.data._io import write_h5ad_atomic
from ensemblevi.model import EnsembleSCVI

runner = CliRunner()


class Payload:
    """Unpickling this creates ``marker``: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    warnings.filterwarnings("ignore")
    monkeypatch.setattr(cli.console, "width", 1000)  # paths unfolded for the assertions


def _data(n_cells=120, n_genes=40):
    adata = synthetic("lopez2020", seed=0, n_cells=n_cells, n_genes=n_genes)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    return adata


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    warnings.filterwarnings("ignore")
    adata = _data()
    model = EnsembleSCVI(adata, n_members=2, n_hidden=8, n_latent=2, seed=0)
    model.train(max_epochs=1, batch_size=60, enable_progress_bar=False, seed=0)
    path = tmp_path_factory.mktemp("saved") / "model"
    model.save(path)
    return model, adata, path


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _poison(folder: Path, marker: Path, legacy: bool = False) -> Path:
    """The saved model's model.pt with a payload; ``legacy``: without model.json too."""
    pt = folder / "model.pt"
    saved = torch.load(pt, weights_only=True)
    if legacy:  # what scvi-tools' save (and ensemblevi's before format 2) writes
        doc = json.loads((folder / "model.json").read_text())
        saved["var_names"] = np.asarray(doc["var_names"], dtype=object)
        saved["attr_dict"] = {"x": 1}
        (folder / "model.json").unlink()
    saved["x"] = Payload(marker)
    torch.save(saved, pt)
    return folder


def _refused(err, path: Path, marker: Path) -> None:
    text = str(err.value) if hasattr(err, "value") else str(err)
    assert str(path / "model.pt") in text, text
    assert "trust=True" in text and "--trust-model" in text and "unpickling" in text
    assert not marker.exists(), "code in the model file ran"


# ------------------------------------------------------------------ the format
def test_save_is_json_and_tensors_and_loads_identically(trained, tmp_path):
    model, adata, path = trained
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.pt"]
    weights = torch.load(path / "model.pt", weights_only=True)  # tensors only
    assert set(weights) == {"model_state_dict"}
    doc = json.loads((path / "model.json").read_text())
    assert doc["format"] == _compat.SAVE_FORMAT and doc["version"] == _compat.SAVE_FORMAT_VERSION
    loaded = EnsembleSCVI.load(path, adata=adata)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )
    np.testing.assert_array_equal(loaded.validation_indices, model.validation_indices)
    assert loaded.init_params_ == model.init_params_ and loaded.is_trained
    assert loaded.history_["elbo_train"].equals(model.history_["elbo_train"])
    # and a model saved again from the loaded one is the same file content
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "model.json").read_text() == (path / "model.json").read_text()


def test_a_value_json_cannot_hold_is_refused_at_save(trained, tmp_path):
    model, _, _ = trained
    model.odd_ = object()
    try:
        with pytest.raises(TypeError, match="odd_ is a object"):
            model.save(tmp_path / "m")
    finally:
        del model.odd_
    assert not (tmp_path / "m" / "model.pt").exists()


# ------------------------------------------------------------------ the load paths
@pytest.mark.parametrize("legacy", [False, True])
def test_load_refuses_a_payload_and_runs_nothing(trained, tmp_path, legacy):
    _, adata, path = trained
    marker = tmp_path / "PWNED"
    bad = _poison(_copy(path, tmp_path / "bad"), marker, legacy=legacy)
    for adata_ in (adata, None):
        with pytest.raises(UntrustedModelError) as err:
            EnsembleSCVI.load(bad, adata=adata_)
        _refused(err, bad, marker)
    if legacy:
        with pytest.raises(UntrustedModelError) as err:
            _compat.saved_var_names(bad)
        _refused(err, bad, marker)
    else:  # the genes are JSON: read without touching model.pt
        assert _compat.saved_var_names(bad).equals(adata.var_names)
        assert not marker.exists()


def test_reference_mapping_refuses_a_payload(trained, tmp_path):
    from ensemblevi.model.base._archesmixin import Reference

    _, adata, path = trained
    marker = tmp_path / "PWNED"
    bad = _poison(_copy(path, tmp_path / "bad"), marker)
    with pytest.raises(UntrustedModelError) as err:
        EnsembleSCVI.load_query_data(adata.copy(), bad)
    _refused(err, bad, marker)
    assert "Model.load(path, adata, trust=True)" in str(err.value)
    with pytest.raises(UntrustedModelError):
        Reference.read(bad)
    assert not marker.exists()
    assert Reference.read(path).var_names.equals(adata.var_names)  # a safe save is read


def test_trust_reads_scvi_tools_own_format(trained, tmp_path):
    from scvi.model.base import BaseModelClass

    model, adata, _ = trained
    legacy = tmp_path / "legacy"
    BaseModelClass.save(model, str(legacy))  # scvi-tools' pickled format
    with pytest.raises(UntrustedModelError):
        EnsembleSCVI.load(legacy, adata=adata)
    loaded = EnsembleSCVI.load(legacy, adata=adata, trust=True)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )
    loaded.save(tmp_path / "converted")  # saved again: ensemblevi's format, no trust needed
    EnsembleSCVI.load(tmp_path / "converted", adata=adata)


def test_seed_ensemble_never_unpickles_a_saved_seed(tmp_path):
    import scvi

    import ensemblevi as ev

    adata = synthetic("lopez2020", seed=0, n_cells=80, n_genes=30)
    save = tmp_path / "seeds"
    kw = {
        "n_seeds": 1,
        "save_dir": save,
        "max_epochs": 1,
        "progress": False,
        "setup_kwargs": {"layer": "counts"},
        "n_hidden": 8,
        "n_latent": 2,
    }
    ev.tl.seed_ensemble(adata, **kw)
    seed = save / "seed_0"
    assert (seed / "model.json").exists()  # a seed is saved in ensemblevi's format
    stamp = (seed / "model.pt").stat().st_mtime_ns
    ev.tl.seed_ensemble(adata, **kw)  # reused without unpickling
    assert (seed / "model.pt").stat().st_mtime_ns == stamp
    marker = tmp_path / "PWNED"
    _poison(seed, marker)
    with pytest.raises(UntrustedModelError) as err:
        ev.tl.seed_ensemble(adata, **kw)
    _refused(err, seed, marker)
    # a seed in scvi-tools' own format is trained again, not unpickled
    (seed / "model.json").unlink()
    scvi.model.SCVI.setup_anndata(adata, layer="counts")
    plain = scvi.model.SCVI(adata, n_hidden=8, n_latent=2)
    plain.save(str(tmp_path / "plain"))
    (seed / "model.pt").write_bytes((tmp_path / "plain" / "model.pt").read_bytes())
    _poison_legacy = torch.load(seed / "model.pt", weights_only=False)
    _poison_legacy["x"] = Payload(marker)
    torch.save(_poison_legacy, seed / "model.pt")
    ev.tl.seed_ensemble(adata, **kw)
    assert not marker.exists() and (seed / "model.json").exists()


def _run_dir(trained, tmp_path: Path, marker: Path) -> Path:
    """A finished run's files as `de` and `map` read them, its model carrying a payload."""
    _, adata, path = trained
    run = tmp_path / "run"
    out = _files.OutputDirectory(run, "run").claim()
    stage = out.new_stage()
    _copy(path, stage / "model")
    write_h5ad_atomic(adata, stage / "results.h5ad")
    (stage / "run.json").write_text(json.dumps({"config": {}}))
    out.commit()
    _poison(run / "model", marker)
    return run


def test_de_and_map_on_a_poisoned_run_exit_2_and_run_nothing(trained, tmp_path):
    marker = tmp_path / "PWNED"
    run = _run_dir(trained, tmp_path, marker)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = runner.invoke(cli.app, ["de", str(run), "--group1", "A", "--n-samples", "2"])
    assert res.exit_code == 2, res.output
    _refused(res.output, run / "model", marker)
    query = write_h5ad_atomic(trained[1], tmp_path / "q.h5ad")
    res = runner.invoke(
        cli.app,
        [
            "map",
            "--model",
            str(run),
            "--query",
            str(query),
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "1",
            "--layer",
            "counts",
        ],
    )
    assert res.exit_code == 2, res.output
    _refused(res.output, run / "model", marker)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "m").exists()  # a new output folder is not left behind


def test_run_does_not_reuse_a_poisoned_model(tmp_path):
    from ensemblevi.pipeline import RunConfig
    from ensemblevi.pipeline._data import prepare_data
    from ensemblevi.pipeline._train import train_or_reuse, wanted_record

    config = RunConfig(
        n_cells=150, n_top_genes=50, members=2, epochs=1, markers=None, labels_key=None
    )
    prepared = prepare_data(config, log=lambda *a: None)
    out = _files.OutputDirectory(tmp_path / "run", "run").claim()
    model_dir = out.new_stage() / "model"
    adata = prepared.adata
    EnsembleSCVI.setup_anndata(adata, layer=prepared.layer, batch_key=prepared.batch_key)
    EnsembleSCVI(adata, n_members=2, n_hidden=8, n_latent=2, seed=0).save(model_dir)
    fp.write_record(model_dir, wanted_record(config, prepared))  # a matching record
    marker = tmp_path / "PWNED"
    _poison(model_dir, marker)
    with pytest.raises(UntrustedModelError) as err:
        train_or_reuse(config, prepared, out, log=lambda *a: None)
    _refused(err, model_dir, marker)
    assert "--force" in str(err.value)


def _spec(**kw):
    spec = {
        "data": "synthetic",
        "preset": "lopez2020",
        "n_cells": 120,
        "heart_path": "data",
        "layer": None,
        "batch_key": None,
        "n_top_genes": 40,
        "ensemble": "deep",
        "members": 2,
        "epochs": 1,
        "batch_size": 60,
        "seed": 0,
    }
    return {**spec, **kw}


def _saved_for(spec: dict, folder: Path) -> None:
    from ensemblevi.pipeline._data import training_data

    adata, _ = training_data(spec)
    EnsembleSCVI(adata, n_members=spec["members"], seed=spec["seed"]).save(folder)


def test_merge_and_resume_refuse_a_payload(tmp_path):
    from ensemblevi.pipeline._train_command import merge_command, train_command

    spec, marker = _spec(), tmp_path / "PWNED"
    shard = tmp_path / "shard"
    _saved_for(spec, shard)
    (shard / "train.json").write_text(json.dumps({"spec": spec, "member_range": [0, 2]}))
    _poison(shard, marker)
    with pytest.raises(UntrustedModelError) as err:
        merge_command([shard], tmp_path / "merged")
    _refused(err, shard, marker)
    assert not (tmp_path / "merged").exists()
    res = runner.invoke(cli.app, ["merge", str(shard), "--out", str(tmp_path / "merged")])
    assert res.exit_code == 2 and "--trust-model" in res.output and not marker.exists()

    # an interrupted `train` whose checkpoint carries a payload: --resume refuses it
    out = tmp_path / "trained"
    _files.OutputDirectory(out, "train").claim()
    ckpt = out / _files.STAGE / "checkpoint"
    _saved_for(spec, ckpt / "epoch-0001")
    record = {
        "spec": {k: v for k, v in spec.items() if k != "epochs"},
        "member_range": [0, 2],
        "epochs_done": 1,
        "model": "epoch-0001",
    }
    (ckpt / "checkpoint.json").write_text(json.dumps(record))
    _poison(ckpt / "epoch-0001", marker)
    with pytest.raises(UntrustedModelError) as err:
        train_command(_spec(epochs=2), out, resume=True, log=lambda *a: None)
    _refused(err, ckpt / "epoch-0001", marker)
    assert (ckpt / "checkpoint.json").exists()  # the checkpoint is kept as it was


def test_the_cli_help_says_what_trust_risks():
    for command in ("run", "de", "map", "train", "merge"):
        res = runner.invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"})
        text = " ".join(res.output.split())
        assert "--trust-model" in text and "runs any code" in text, command


def test_a_damaged_file_is_not_called_untrusted(trained, tmp_path):
    _, adata, path = trained
    bad = _copy(path, tmp_path / "bad")
    (bad / "model.pt").write_bytes(b"garbage \x00\x01")
    with pytest.raises(ValueError, match="not a readable saved model") as err:
        EnsembleSCVI.load(bad, adata=adata)
    assert not isinstance(err.value, UntrustedModelError)
    (bad / "model.json").write_text("{")
    with pytest.raises(ValueError, match=r"model\.json is not a readable"):
        EnsembleSCVI.load(bad, adata=adata)
    assert os.listdir(path)  # the original is untouched
