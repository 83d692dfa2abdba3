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
import pandas as pd
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
    EnsembleSCVI.load(tmp_path / "m", adata=adata.copy())  # (adata stays the fixture's own)
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


@pytest.mark.parametrize(
    "call",
    [
        "get_uncertainty",
        "get_normalized_expression",
        "get_latent_representation",
        "get_elbo",
        "get_marginal_ll",
        "get_reconstruction_error",
    ],
)
def test_seeded_get_calls_leave_the_callers_rng(trained, caller_state, call):
    """A seeded output draws from its own streams; the caller's continue where they were.

    (Unseeded draws, as ``get_latent_representation(give_mean=False)``, come from the
    caller's streams, as scvi-tools' do: not tested here.)
    """
    model, adata = trained
    kwargs = {
        "get_uncertainty": {"n_samples": 2, "seed": 1, "progress": False, "return_frames": False},
        "get_normalized_expression": {"n_samples": 2, "seed": 1, "return_members": True},
        "get_latent_representation": {"return_members": True},
        "get_elbo": {"seed": 1},
        "get_marginal_ll": {"n_mc_samples": 3, "seed": 1},
        "get_reconstruction_error": {"seed": 1},
    }[call]
    first = getattr(model, call)(adata, **kwargs)
    assert _rng_state() == caller_state
    torch.rand(3)  # the caller draws between two calls: the seeded output does not move
    second = getattr(model, call)(adata, **kwargs)
    flat = [np.asarray(v, dtype=float) for v in _values(first)]
    for a, b in zip(flat, [np.asarray(v, dtype=float) for v in _values(second)], strict=True):
        np.testing.assert_array_equal(a, b)


def _values(output) -> list:
    """The arrays of an output (a dict of frames, a frame, an array, a tensor, a number)."""
    if isinstance(output, dict):
        return [v for value in output.values() for v in _values(value)]
    if isinstance(output, torch.Tensor):
        return [output.detach().cpu().numpy()]
    return [np.asarray(output)]


def _but_numpy(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != "numpy"}


def test_seed_ensemble_resumes_and_leaves_the_callers_state(tmp_path, caller_state):
    """Seeds trained, saved and reused; the caller's RNG, filters and loggers unchanged."""
    adata = ev.data.synthetic("lopez2020", seed=2, n_cells=100, n_genes=20)
    caller_state = _rng_state()  # (the data above come from a private generator)
    filters = list(warnings.filters)
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    kwargs = {"setup_kwargs": {"layer": "counts"}, "max_epochs": 1, "progress": False}
    ens = ev.tl.seed_ensemble(adata, n_seeds=2, save_dir=tmp_path, n_hidden=8, n_latent=2, **kwargs)
    assert _rng_state() == caller_state
    assert warnings.filters == filters
    assert {name: logging.getLogger(name).level for name in LOGGERS} == levels
    assert ens.n_members == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["seed_0", "seed_1"]
    again = ev.tl.seed_ensemble(
        adata, n_seeds=2, save_dir=tmp_path, n_hidden=8, n_latent=2, **kwargs
    )
    assert warnings.filters == filters
    assert {name: logging.getLogger(name).level for name in LOGGERS} == levels
    for key, value in ens.module.state_dict().items():  # loaded, not retrained
        np.testing.assert_array_equal(again.module.state_dict()[key].numpy(), value.numpy())
    z0, z1 = (ens.get_latent_representation(member=k) for k in (0, 1))
    assert not np.allclose(z0, z1)  # different seeds, different models
    assert isinstance(ens.get_marginal_ll(n_mc_samples=3, return_table=True), pd.Series)


def test_a_seeded_call_on_unseen_anndata_leaves_the_callers_rng(trained):
    model, _ = trained
    unseen = ev.data.synthetic("lopez2020", seed=0, n_cells=120, n_genes=20)
    _move_every_stream()
    before = _rng_state()
    model.get_uncertainty(unseen, n_samples=2, seed=1, progress=False, return_frames=False)
    assert _rng_state() == before


def test_seed_ensemble_leaves_the_callers_rng(tmp_path):
    adata = ev.data.synthetic("lopez2020", seed=2, n_cells=60, n_genes=12)
    kwargs = {"setup_kwargs": {"layer": "counts"}, "max_epochs": 1, "progress": False}
    for _ in ("trained", "reused"):
        _move_every_stream()
        before = _rng_state()
        ev.tl.seed_ensemble(adata, n_seeds=1, save_dir=tmp_path, n_hidden=4, n_latent=2, **kwargs)
        after = _rng_state()
        for stream in before:  # every stream checked, each named when it moved
            assert after[stream] == before[stream], f"{stream} moved"
