"""The stages of `ensemblevi run`, each alone: config, data, fingerprint, train/reuse, prose."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ensemblevi import _fingerprint as fp
from ensemblevi._files import OutputDirectory
from ensemblevi.data import synthetic
from ensemblevi.data._io import write_h5ad_atomic
from ensemblevi.pipeline import RunConfig
from ensemblevi.pipeline._data import prepare_data
from ensemblevi.pipeline._de import de_name
from ensemblevi.pipeline._readings import run_reading
from ensemblevi.pipeline._train import RunRefused, train_or_reuse

TINY = {"n_cells": 200, "epochs": 1, "members": 2, "n_top_genes": 100}


def _file(tmp_path, edit=None, seed=0, n_cells=200):
    """A small data file (cell_type, batch, counts layer), edited by ``edit(adata)``."""
    adata = synthetic(preset="heartlike", seed=seed, n_cells=n_cells)
    if edit is not None:
        edit(adata)
    path = tmp_path / f"data_{seed}.h5ad"
    write_h5ad_atomic(adata, path, overwrite=True)
    return path


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("field", "value", "option"),
    [
        ("members", 0, "--members"),
        ("epochs", 0, "--epochs"),
        ("n_samples", 0, "--n-samples"),
        ("seeds", -1, "--seeds"),
        ("ensemble", "nope", "--ensemble"),
    ],
)
def test_config_refuses_bad_values(field, value, option):
    with pytest.raises(ValueError, match=option):
        RunConfig(**{field: value}).validate()


def test_config_options_and_changes():
    config = RunConfig(marker=["A=B"], **TINY)
    options = config.options()
    assert "heart_path" not in options and options["marker"] == ["A=B"]
    assert json.loads(json.dumps(options)) == options
    changed = RunConfig(**{**TINY, "members": 3}, marker=["A=B"]).changed(options)
    assert changed == ["members: 2 -> 3"]
    assert config.training_options("batch")["batch_key"] == "batch"


# ------------------------------------------------------------------ data
def test_prepare_data_detects_batch_and_keeps_markers():
    prepared = prepare_data(RunConfig(**TINY, marker=("Fibroblast=NOTAGENE",)), log=lambda *_: None)
    assert prepared.layer == "counts" and prepared.adata.n_vars >= 100
    assert set(prepared.markers["Fibroblast"]) <= set(prepared.adata.var_names)
    assert "NOTAGENE" in set(prepared.missing["gene"])
    assert prepared.batch_key == ("batch" if "batch" in prepared.adata.obs else None)


def test_bad_marker_file_fails_before_the_data_is_read(tmp_path):
    bad = tmp_path / "markers.json"
    bad.write_text("{not json")
    config = RunConfig(data=str(tmp_path / "absent.h5ad"), markers=str(bad))
    with pytest.raises(ValueError):  # the markers' error, not the absent data file's
        prepare_data(config, log=lambda *_: None)


def test_missing_labels_column_is_named(tmp_path):
    config = RunConfig(data=str(_file(tmp_path)), labels_key="nope", n_top_genes=100)
    with pytest.raises(ValueError, match=r"--labels-key 'nope'.*cell_type"):
        prepare_data(config, log=lambda *_: None)


def test_nan_labels_are_refused_with_the_count(tmp_path):
    def blank(adata):
        labels = adata.obs["cell_type"].astype(object)
        labels.iloc[:7] = np.nan
        adata.obs["cell_type"] = pd.Categorical(labels)

    config = RunConfig(data=str(_file(tmp_path, blank)), n_top_genes=100)
    with pytest.raises(ValueError, match=r"obs\['cell_type'\] has no label for 7 of 200"):
        prepare_data(config, log=lambda *_: None)


def test_duplicate_cell_names_are_refused(tmp_path):
    def dup(adata):
        names = adata.obs_names.to_numpy().copy()
        names[1] = names[0]
        adata.obs_names = names

    config = RunConfig(data=str(_file(tmp_path, dup)), n_top_genes=100)
    with pytest.raises(ValueError, match="obs_names_make_unique"):
        prepare_data(config, log=lambda *_: None)


# ------------------------------------------------------------------ fingerprint
def test_matrix_digest_sees_every_change():
    rng = np.random.default_rng(0)
    dense = rng.poisson(1.0, (30, 20)).astype(np.float32)
    base = fp.matrix_digest(sp.csr_matrix(dense))
    assert fp.matrix_digest(sp.csr_matrix(dense.copy())) == base  # content, not identity
    changed = dense.copy()
    changed[3, 4] += 1
    assert fp.matrix_digest(sp.csr_matrix(changed)) != base
    assert fp.matrix_digest(sp.csr_matrix(dense.reshape(20, 30))) != base  # same bytes
    assert fp.matrix_digest(dense) != fp.matrix_digest(dense.astype(np.float64))
    assert fp.matrix_digest(dense) == fp.matrix_digest(np.asfortranarray(dense))


def test_differences_name_the_part_that_changed():
    adata = synthetic(preset="heartlike", seed=0, n_cells=100)
    data = fp.data_fingerprint(adata, "counts", ["batch"])
    record = fp.model_record(data, {"members": 2})
    assert fp.differences(record, record) == []
    other = adata.copy()
    other.layers["counts"] = other.layers["counts"].copy()
    other.layers["counts"][0, 0] += 1
    changed = fp.model_record(fp.data_fingerprint(other, "counts", ["batch"]), {"members": 3})
    assert fp.differences(record, changed) == ["the count matrix changed", "members: 2 -> 3"]
    renamed = adata.copy()
    renamed.obs_names = [f"x{i}" for i in range(renamed.n_obs)]
    moved = fp.model_record(fp.data_fingerprint(renamed, "counts", ["batch"]), {"members": 2})
    assert fp.differences(record, moved) == ["the cells (names or order) changed"]
    assert "no record" in fp.differences(None, record)[0]


# ------------------------------------------------------------------ train or reuse
def test_train_or_reuse_reuses_only_a_matching_model(tmp_path):
    quiet = lambda *_: None  # noqa: E731
    config = RunConfig(**TINY)
    out = OutputDirectory(tmp_path / "run", "run").claim()
    out.new_stage()
    first = train_or_reuse(config, prepare_data(config, log=quiet), out, log=quiet)
    assert first.source == "trained" and (out.stage / "model" / fp.RECORD).exists()
    assert fp.read_record(out.stage / "model") == first.record
    again = train_or_reuse(config, prepare_data(config, log=quiet), out, log=quiet)
    assert again.source == "stage"
    other = RunConfig(**{**TINY, "seed": 1})  # other data and other options
    with pytest.raises(RunRefused, match=r"count matrix changed.*seed: 0 -> 1"):
        train_or_reuse(other, prepare_data(other, log=quiet), out, log=quiet)
    forced = train_or_reuse(other, prepare_data(other, log=quiet), out, force=True, log=quiet)
    assert forced.source == "trained" and fp.read_record(out.stage / "model")["config"]["seed"] == 1


def test_seed_models_are_reused_only_on_a_matching_record(tmp_path):
    import ensemblevi as ev

    def data(seed):
        adata = synthetic(preset="lopez2020", seed=seed, n_cells=120)
        return adata[:, :50].copy()

    save = tmp_path / "seeds"
    ev.tl.seed_ensemble(
        data(0),
        n_seeds=1,
        save_dir=save,
        max_epochs=1,
        progress=False,
        setup_kwargs={"layer": "counts"},
    )
    weights = save / "seed_0" / "model.pt"
    stamp = weights.stat().st_mtime_ns
    ev.tl.seed_ensemble(
        data(0),
        n_seeds=1,
        save_dir=save,
        max_epochs=1,
        progress=False,
        setup_kwargs={"layer": "counts"},
    )
    assert weights.stat().st_mtime_ns == stamp  # same data and options: loaded
    ev.tl.seed_ensemble(
        data(1),
        n_seeds=1,
        save_dir=save,
        max_epochs=1,
        progress=False,
        setup_kwargs={"layer": "counts"},
    )
    assert weights.stat().st_mtime_ns != stamp  # other counts: retrained, not reused
    ev.tl.seed_ensemble(
        data(1),
        n_seeds=1,
        save_dir=save,
        max_epochs=2,
        progress=False,
        setup_kwargs={"layer": "counts"},
    )
    assert fp.read_record(save / "seed_0")["config"]["max_epochs"] == 2


# ------------------------------------------------------------------ report prose
def test_single_member_reading_says_there_is_no_spread():
    summary = pd.DataFrame(
        {
            "gene": ["A"],
            "group": ["g"],
            "member_cv": [0.0],
            "frac_uncertain_cells": [0.0],
            "frac_between": [0.0],
        }
    )
    genes = pd.DataFrame({"cv_between": [0.3, 0.1]}, index=["A", "B"])
    one = " ".join(run_reading(summary, genes, 1, 0.1))
    assert "no between-member spread" in one and "retraining would move these values" not in one
    many = " ".join(run_reading(summary.assign(frac_between=0.2), genes, 4, 0.1))
    assert "retraining would move these values less than" in many


# ------------------------------------------------------------------ DE names
def test_de_names_are_unique_and_stable():
    assert de_name("Fibroblast", "Myeloid") == "de_Fibroblast_vs_Myeloid"
    pairs = [
        ("CD4 T", None),
        ("CD4+ T", None),
        ("CD4_T", None),
        ("CD4_T", "rest"),
        ("A_vs_B", None),
        ("A", "B_vs_rest"),
    ]
    names = {de_name(*pair) for pair in pairs}
    assert len(names) == 6
    assert de_name("CD4 T", None) == de_name("CD4 T", None)
    assert de_name("CD4+ T", None).startswith("de_CD4_T_vs_rest_")
