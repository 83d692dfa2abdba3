"""Shared data paths and session-scoped trained models.

The trained models here are built once per test session and shared across files. A test
that only reads a model uses it as it is; a test that changes a model (trains it further,
maps a query onto it, writes into its AnnData) takes :func:`private_copy` of it, so no
test sees another's changes whatever the order they run in.
"""

import os
import tempfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: the ensemble kinds of EnsembleSCVI, each trained once in :func:`kind_models`
KINDS = ["deep", "batch", "hyperbatch", "mcdropout", "single"]


def shared_file(name: str) -> Path:
    """Path of a file in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(
            f"{path} is absent (fresh clone without ../shared/data); real-data test skipped"
        )
    return path


@pytest.fixture
def pbmc_path() -> Path:
    return shared_file("pbmc3k.h5ad")


def private_copy(model):
    """An independent copy of a trained model and of its AnnData (``model.adata``).

    Saved and loaded with a copy of the AnnData (``copy.deepcopy`` would leave the copied
    AnnData unregistered with the model class): the copy's ``adata`` is its training data,
    as the original's is, with the same weights, split and history.
    """
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp, overwrite=True)
        return type(model).load(tmp, adata=model.adata.copy())


def pytest_configure(config):
    # under pytest-xdist each worker is one process: one torch thread each, so two workers
    # on two cores do not fight over the cores (torch starts one thread per core)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lopez_adata():
    """lopez2020, 240 cells x 40 genes, set up with its counts layer and batch: read only."""
    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=240, n_genes=40)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    return adata


#: how :func:`kind_models` trains (tests that count steps read it)
KIND_TRAIN = {"max_epochs": 2, "enable_progress_bar": False, "seed": 0}
KIND_TUNE_EVERY = 2


@pytest.fixture(scope="session")
def kind_models(lopez_adata):
    """One EnsembleSCVI per kind (K = 3; 1 for single), 2 epochs on :func:`lopez_adata`.

    Read only: take :func:`private_copy` to change one.
    """
    from ensemblevi._warnings import quiet_third_party
    from ensemblevi.model import EnsembleSCVI

    models = {}
    for kind in KINDS:
        model = EnsembleSCVI(
            lopez_adata, n_members=3, ensemble=kind, n_hidden=32, n_latent=4, seed=0
        )
        plan = {"plan_kwargs": {"tune_every": KIND_TUNE_EVERY}} if kind == "hyperbatch" else {}
        with quiet_third_party(loggers=True):
            model.train(**KIND_TRAIN, **plan)
        models[kind] = model
    return models


@pytest.fixture(scope="session")
def heart_model():
    """A deep ensemble (K = 3, 3 epochs) on heartlike data, 400 cells x 120 genes.

    Read only: tests that write into the AnnData (the analysis tools do) take
    :func:`private_copy` of the model and use its ``adata``.
    """
    import ensemblevi as ev
    from ensemblevi._warnings import quiet_third_party
    from ensemblevi.model import EnsembleSCVI

    adata = ev.data.synthetic("heartlike", seed=0, n_cells=400, n_genes=120)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = EnsembleSCVI(adata, n_members=3, n_hidden=32, n_latent=5, seed=0)
    with quiet_third_party(loggers=True):
        model.train(max_epochs=3, enable_progress_bar=False, seed=0)
    return model
