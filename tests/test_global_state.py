"""Global state comes back as it was: every random generator, the warning filters, logger levels.

Each concern has one scoped helper (``_seeding.forked_rng``/``seeded_globally``,
``_warnings.quiet_third_party``, ``module._likelihood.compiled_likelihood``); these tests run
the public entry points that use them and compare the caller's state before and after.
"""

from __future__ import annotations

import logging
import pickle
import random
import warnings

import numpy as np
import pytest
import torch

import ensemblevi as ev
from ensemblevi._seeding import forked_rng, seeded_globally
from ensemblevi._warnings import LOGGERS, quiet_third_party
from ensemblevi.model import ConvVAE, EnsembleSCVI

SMALL = {"n_hidden": 8, "n_latent": 2, "seed": 0}


def _rng_state() -> dict:
    """Every global generator's state, as comparable values."""
    state = {
        "torch": torch.random.get_rng_state().numpy().tobytes(),
        "numpy": pickle.dumps(np.random.get_state()),  # noqa: NPY002
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
    return state


def _move_every_stream() -> None:
    """Put every generator somewhere no seed puts it, so a restore is seen as one."""
    torch.rand(7)
    np.random.rand(3)  # noqa: NPY002
    random.random()
    if torch.cuda.is_available():
        for d in range(torch.cuda.device_count()):
            torch.rand(5, device=f"cuda:{d}")


@pytest.fixture
def caller_state():
    _move_every_stream()
    return _rng_state()


@pytest.fixture(scope="module")
def trained():
    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=120, n_genes=20)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = EnsembleSCVI(adata, n_members=2, **SMALL)
    model.train(max_epochs=1, seed=0, enable_progress_bar=False)
    return model, adata


def test_the_state_reader_sees_a_draw(caller_state):
    """The comparison below can fail: one draw from any generator changes the state."""
    for draw in (lambda: torch.rand(1), np.random.rand, random.random):
        draw()
        assert _rng_state() != caller_state
        caller_state = _rng_state()


@pytest.mark.parametrize("seed", [None, 3])
def test_forked_rng_restores_every_generator_also_on_error(caller_state, seed):
    with pytest.raises(RuntimeError, match="inside"), forked_rng(seed):
        _move_every_stream()
        raise RuntimeError("inside")
    assert _rng_state() == caller_state


def test_forked_rng_seeds_every_generator():
    with forked_rng(5):
        a = (torch.rand(2), np.random.rand(2), random.random())  # noqa: NPY002
    with forked_rng(5):
        b = (torch.rand(2), np.random.rand(2), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_forked_rng_restores_every_cuda_device(caller_state):
    with forked_rng(1):
        for d in range(torch.cuda.device_count()):
            torch.rand(3, device=f"cuda:{d}")
    assert _rng_state()["cuda"] == caller_state["cuda"]


def test_seeded_globally_none_draws_from_the_caller():
    """``None``: third-party code draws from the caller's streams (as without ensemblevi)."""
    before = _rng_state()
    with seeded_globally(None):
        torch.rand(1)
    assert _rng_state() != before


@pytest.mark.parametrize("shard", [False, True])
def test_building_a_model_leaves_the_callers_rng(caller_state, shard):
    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=60, n_genes=12)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    extra = {"member_offset": 1, "n_members_total": 3} if shard else {}
    caller_state = _rng_state()
    EnsembleSCVI(adata, n_members=2, **SMALL, **extra)
    assert _rng_state() == caller_state


def test_conv_vae_leaves_the_callers_rng(caller_state):
    images = np.random.default_rng(0).random((12, 8, 8)).astype(np.float32)
    model = ConvVAE(images, n_members=2, n_latent=2, channels=(2, 2), n_hidden=8, seed=0)
    caller_state = _rng_state()  # (the images above come from a private generator)
    model.train(max_epochs=1, seed=0, progress=False)
    model.epistemic_score(images, n_samples=2, seed=1)
    assert _rng_state() == caller_state


@pytest.mark.parametrize("mode", [None, "change"])
def test_de_leaves_the_callers_rng(trained, caller_state, mode):
    model, adata = trained
    kwargs = {"mode": mode} if mode else {"n_samples": 2}
    model.differential_expression(adata, groupby="cell_type", group1="A", group2="B", **kwargs)
    assert _rng_state() == caller_state


def test_training_and_loading_leave_the_warning_filters_and_loggers(trained, tmp_path):
    model, adata = trained
    filters = list(warnings.filters)
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    model.train(max_epochs=1, seed=1, enable_progress_bar=False)
    model.save(tmp_path / "m", overwrite=True)
    EnsembleSCVI.load(tmp_path / "m", adata=adata)
    assert warnings.filters == filters
    assert {name: logging.getLogger(name).level for name in LOGGERS} == levels


def test_quiet_third_party_hides_named_categories_only():
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    filters = list(warnings.filters)
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_third_party(loggers=True):
            warnings.warn("few workers", PossibleUserWarning, stacklevel=1)
            warnings.warn("ensemblevi's own", UserWarning, stacklevel=1)
            assert logging.getLogger("scvi").level == logging.ERROR
    assert [str(w.message) for w in caught] == ["ensemblevi's own"]
    assert warnings.filters == filters
    assert {name: logging.getLogger(name).level for name in LOGGERS} == levels
