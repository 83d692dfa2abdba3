"""The scvi-tools contract: member views, ensemble-level defaults, hygiene, compatibility."""

import random
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scvi
import sparse
import torch
from scvi.model.base import RNASeqMixin, VAEMixin

import ensemblevi as ev
from ensemblevi import _scvi_check
from ensemblevi._scvi_check import check_scvi_tools
from ensemblevi.model import EnsembleSCVI
from ensemblevi.model._members import check_member_contract
from ensemblevi.model.base._members import (
    MEMBER_ONLY,
    OVERRIDDEN,
    VIA_MODULE,
    MemberMethodError,
    MemberView,
)


@pytest.fixture(scope="module")
def fitted():
    adata = ev.data.synthetic("lopez2020", seed=1, n_cells=160, n_genes=30)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = EnsembleSCVI(adata, n_members=3, n_hidden=16, n_latent=4, seed=0)
    model.train(max_epochs=3, enable_progress_bar=False, seed=0)
    return adata, model


def test_every_inherited_method_is_handled():
    inherited = {
        name
        for cls in (RNASeqMixin, VAEMixin)
        for name, value in vars(cls).items()
        if callable(value) and not name.startswith("__")
    }
    groups = [set(OVERRIDDEN), set(VIA_MODULE), set(MEMBER_ONLY)]
    assert set.union(*groups) == inherited
    assert sum(len(g) for g in groups) == len(inherited)  # each in exactly one group
    for name in OVERRIDDEN:
        assert getattr(EnsembleSCVI, name) is not getattr(RNASeqMixin, name, None)
        assert getattr(EnsembleSCVI, name) is not getattr(VAEMixin, name, None)
    # the user guide's contract table lists the public methods of each group, in its own row
    readme = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "model.md").read_text()
    rows = {
        "ensemble versions": OVERRIDDEN,
        "scvi-tools' code, ensemble semantics": VIA_MODULE,
        "per member only": MEMBER_ONLY,
    }
    for label, group in rows.items():
        (line,) = [row for row in readme.splitlines() if row.startswith(f"| {label} |")]
        listed = set(re.findall(r"`(\w+)`", line.split("|")[2]))
        assert listed == {n for n in group if not n.startswith("_")}, label


def test_member_only_methods_run_scvi_tools_on_one_member(fitted):
    adata, model = fitted

    def seeded(fn, *args, alone=None, **kwargs):  # the parameters come from a latent draw
        torch.manual_seed(3)
        if alone is None:
            return fn(*args, **kwargs)
        with model.module.member(alone):  # scvi-tools' own code on member k alone
            return fn(*args, **kwargs)

    for k in (0, 2):
        want = seeded(RNASeqMixin.get_likelihood_parameters, model, indices=[1, 5], alone=k)
        got = seeded(
            model.get_likelihood_parameters, indices=[1, 5], **({"member": k} if k else {})
        )
        assert set(got) == set(want) == {"mean", "dispersions", "dropout"}
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert got["mean"].shape == (2, adata.n_vars)
    every = seeded(model.get_likelihood_parameters, indices=[1, 5], return_members=True)
    assert len(every) == 3 and all(p["mean"].shape == (2, adata.n_vars) for p in every)
    # members differ: the list is not one member repeated
    assert not np.allclose(every[0]["dispersions"], every[1]["dispersions"])
    post = model.get_aggregated_posterior(indices=np.arange(10), member=1)
    # its components are member 1's posteriors: their means are member 1's latent codes
    z1 = model.get_latent_representation(indices=np.arange(10), member=1)
    np.testing.assert_allclose(post.component_distribution.mean.numpy(), z1, rtol=1e-5, atol=1e-6)
    z0 = model.get_latent_representation(indices=np.arange(10))
    assert not np.allclose(z0, z1)
    with pytest.raises(MemberMethodError, match=r"get_likelihood_parameters.*out of range"):
        model.get_likelihood_parameters(member=3)


def test_member_views_are_scvi_models(fitted):
    adata, model = fitted
    assert len(model.members) == 3 and isinstance(model.members[-1], MemberView)
    assert model.members[-1].member == 2
    with pytest.raises(IndexError, match="out of range"):
        model.members[3]
    view = model.members[1]
    z = view.get_latent_representation()
    assert isinstance(z, np.ndarray) and z.shape == (adata.n_obs, 4)
    assert isinstance(view.get_elbo(), torch.Tensor) and view.get_elbo().dim() == 0
    assert view.get_marginal_ll(n_mc_samples=3, return_mean=False).shape == (adata.n_obs,)
    assert set(view.get_likelihood_parameters()) == {"mean", "dropout", "dispersions"}
    assert view.get_likelihood_parameters()["mean"].shape == (adata.n_obs, adata.n_vars)
    assert view.get_latent_library_size(give_mean=False).shape == (adata.n_obs, 1)
    pp = view.posterior_predictive_sample(n_samples=2)
    assert isinstance(pp, sparse.GCXS) and pp.shape == (adata.n_obs, adata.n_vars, 2)
    assert view.get_feature_correlation_matrix(n_samples=2).shape == (adata.n_vars,) * 2
    assert view.get_aggregated_posterior().batch_shape == ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        de = view.differential_expression(groupby="cell_type", group1="A")
    assert isinstance(de, pd.DataFrame) and len(de) == adata.n_vars
    assert model.module.active_member is None  # the switch is undone afterwards


def test_member_path_equals_scvi_path_with_the_same_noise(fitted):
    _, model = fitted
    # member=k computes only member k, through the same noise scvi-tools would draw
    torch.manual_seed(3)
    ours = model.get_elbo(member=1, seed=None, return_mean=False)
    torch.manual_seed(3)
    scvi_way = model.members[1].get_elbo(return_mean=False).numpy()
    np.testing.assert_allclose(ours, scvi_way, rtol=1e-5)
    torch.manual_seed(4)
    ours = model.get_marginal_ll(
        member=2, seed=None, n_mc_samples=4, n_mc_samples_per_pass=1, return_mean=False
    )
    torch.manual_seed(4)
    scvi_way = model.members[2].get_marginal_ll(n_mc_samples=4, return_mean=False).numpy()
    np.testing.assert_allclose(ours, scvi_way, rtol=1e-5)
    torch.manual_seed(5)
    ours = model.get_reconstruction_error(member=0, seed=None, return_mean=False)
    torch.manual_seed(5)
    scvi_way = model.members[0].get_reconstruction_error(return_mean=False)
    np.testing.assert_allclose(
        ours["reconstruction_loss"], np.asarray(scvi_way["reconstruction_loss"]), rtol=1e-5
    )
    # the table's member columns (all members in one pass) against scvi-tools' per-member
    # ELBO on other noise: one latent sample per cell, averaged over 160 cells
    table = model.get_elbo(return_table=True)
    for k, view in enumerate(model.members):
        assert table[f"member_{k}"] == pytest.approx(float(view.get_elbo()), rel=0.02)


def test_stacked_expression_matches_members(fitted):
    _, model = fitted
    idx = np.arange(12)
    stacked = model.get_normalized_expression(
        indices=idx, return_members=True, n_samples=400, seed=0
    )
    for k, view in enumerate(model.members):
        torch.manual_seed(k)
        theirs = view.get_normalized_expression(indices=idx, n_samples=400, return_numpy=True)
        # Monte Carlo over z: compare on the genes' log scale
        err = np.abs(np.log(stacked[k]) - np.log(theirs))
        assert err.mean() < 0.02, (k, err.mean())
    other = model.get_normalized_expression(indices=idx, return_members=True, n_samples=400, seed=0)
    np.testing.assert_array_equal(stacked, other)  # seeded
    assert not np.allclose(stacked[0], stacked[1], rtol=0.05)  # members differ


def test_posterior_predictive_is_the_member_mixture(fitted):
    adata, model = fitted
    torch.manual_seed(0)
    pp = model.posterior_predictive_sample(n_samples=300)
    assert isinstance(pp, sparse.GCXS) and pp.shape == (adata.n_obs, adata.n_vars, 300)
    mixture_mean = pp.todense().mean(-1).mean(0)  # per gene
    # mixture mean = average of the members' means, each from scvi-tools' own sampler
    members_mean = np.mean(
        [
            view.posterior_predictive_sample(n_samples=300).todense().mean(-1).mean(0)
            for view in model.members
        ],
        axis=0,
    )
    np.testing.assert_allclose(mixture_mean, members_mean, rtol=0.05)
    # and not one member's alone (members differ enough on this data to tell)
    gaps = [
        np.abs(
            view.posterior_predictive_sample(n_samples=300).todense().mean(-1).mean(0)
            - members_mean
        ).max()
        for view in model.members
    ]
    assert max(gaps) > np.abs(mixture_mean - members_mean).max()
    corr = model.get_feature_correlation_matrix(n_samples=3)
    assert corr.shape == (adata.n_vars, adata.n_vars)
    np.testing.assert_allclose(np.diag(corr), 1, rtol=1e-6)


def test_unknown_arguments_raise(fitted):
    _, model = fitted
    for call in (
        lambda: model.get_elbo(n_mc_samples=3),
        lambda: model.get_marginal_ll(give_mean=True),
        lambda: model.get_uncertainty(store=True),
        lambda: model.get_normalized_expression(weight="importance"),
        lambda: model.get_latent_representation(foo=1),
    ):
        with pytest.raises(TypeError, match="unexpected keyword"):
            call()


def test_train_restores_global_random_state():
    adata = ev.data.synthetic("lopez2020", seed=2, n_cells=80, n_genes=20)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = EnsembleSCVI(adata, n_members=2, n_hidden=8, n_latent=2, seed=0)
    scvi_seed = scvi.settings.seed
    torch_state, np_state, py_state = (
        torch.random.get_rng_state(),
        np.random.get_state(),  # noqa: NPY002
        random.getstate(),
    )
    model.train(max_epochs=1, enable_progress_bar=False, seed=123)
    assert scvi.settings.seed == scvi_seed
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])  # noqa: NPY002
    assert random.getstate() == py_state


def test_from_scvi_members_are_the_scvi_models():
    adata = ev.data.synthetic("lopez2020", seed=4, n_cells=120, n_genes=25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
        refs = []
        for seed in (0, 1):
            scvi.settings.seed = seed
            ref = scvi.model.SCVI(adata, n_hidden=16, n_latent=3)
            ref.train(max_epochs=2, enable_progress_bar=False)
            refs.append(ref)
    ens = EnsembleSCVI.from_scvi(refs, adata=None)
    assert ens.ensemble == "deep" and ens.n_members == 2 and ens.is_trained
    for k, ref in enumerate(refs):
        np.testing.assert_allclose(
            ens.get_latent_representation(member=k),
            ref.get_latent_representation(),
            rtol=1e-4,
            atol=1e-5,
        )
    with pytest.raises(ValueError, match="not trained"):
        EnsembleSCVI.from_scvi([scvi.model.SCVI(adata, n_hidden=16, n_latent=3)])


def test_scvi_compatibility_check(monkeypatch):
    check_scvi_tools()  # the installed scvi-tools is supported
    monkeypatch.delattr(scvi.settings.__class__, "_seed", raising=False)
    monkeypatch.delattr(scvi.settings, "_seed")
    with pytest.raises(ImportError, match=r"scvi-tools 1\.4\.x.*_seed"):
        check_scvi_tools()


def test_compatibility_check_names_the_private_hooks(monkeypatch):
    """Each private scvi-tools hook the code relies on is checked by name."""
    from scvi.module._constants import MODULE_KEYS
    from scvi.train import TrainingPlan

    # the optimiser hook EnsembleTrainingPlan overrides
    monkeypatch.delattr(TrainingPlan, "_optimizer_creator_fn")
    with pytest.raises(ImportError, match="_optimizer_creator_fn"):
        check_scvi_tools()
    monkeypatch.undo()
    # a module output key scvi-tools' mixins read from the member's module
    monkeypatch.setattr(_scvi_check, "MODULE_KEYS", MODULE_KEYS._replace(PX_KEY="px_dist"))
    with pytest.raises(ImportError, match="PX_KEY"):
        check_scvi_tools()


def test_member_contract_catches_a_new_scvi_method(monkeypatch):
    check_member_contract()  # every mixin method is in exactly one group, declared as such
    monkeypatch.setattr(RNASeqMixin, "get_new_output", lambda self: None, raising=False)
    with pytest.raises(ImportError, match=r"scvi-tools 1\.4\.x.*get_new_output"):
        check_member_contract()


def test_member_contract_catches_an_undeclared_member_only_method(monkeypatch):
    # scvi-tools' own method back on the ensemble: it would compute member 0 silently
    monkeypatch.setattr(
        EnsembleSCVI, "get_likelihood_parameters", RNASeqMixin.get_likelihood_parameters
    )
    with pytest.raises(ImportError, match="get_likelihood_parameters is not declared"):
        check_member_contract()


@pytest.mark.parametrize("kind", ["deep", "batch", "hyperbatch", "single", "mcdropout"])
def test_all_member_latents_equal_the_member_loop(kind):
    """One batched encoder pass gives each member's scvi-tools latent (means, variances)."""
    adata = ev.data.synthetic("lopez2020", seed=1, n_cells=90, n_genes=20)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    k = 1 if kind == "single" else 3
    model = EnsembleSCVI(adata, n_members=k, ensemble=kind, n_hidden=8, n_latent=3, seed=0)
    model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    cells = np.arange(5, 80, 2)
    mean, var = model.get_latent_representation(
        indices=cells, batch_size=16, return_dist=True, return_members=True
    )
    assert mean.shape == var.shape == (k, len(cells), 3)
    if kind == "mcdropout":  # members are new dropout masks at every pass: no fixed values
        assert np.isfinite(mean).all() and (var > 0).all()
        return
    for j in range(k):
        loop_mean, loop_var = model.members[j].get_latent_representation(
            indices=cells, batch_size=16, return_dist=True
        )
        np.testing.assert_allclose(mean[j], loop_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var[j], loop_var, rtol=1e-5, atol=1e-6)
    stacked = model.get_latent_representation(return_members=True)
    np.testing.assert_allclose(stacked[:, cells], mean, rtol=1e-5, atol=1e-6)


def test_member_latents_are_stored_once_and_recomputed_for_new_weights(fitted, monkeypatch):
    """Novelty, stability and the member UMAPs read one stored all-member pass."""
    from ensemblevi.tl._novelty_rule import MEMBER_LATENT_KEY, member_latents

    adata, model = fitted
    adata = adata.copy()
    calls = []
    encode = type(model).get_latent_representation

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("return_members"))
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "get_latent_representation", counted)
    z = member_latents(model, adata)
    loop = np.stack([model.members[k].get_latent_representation(adata) for k in range(3)])
    np.testing.assert_allclose(z, loop, rtol=1e-5, atol=1e-6)
    assert adata.obsm[MEMBER_LATENT_KEY].shape == (adata.n_obs, 3 * z.shape[2])
    calls.clear()
    np.testing.assert_array_equal(member_latents(model, adata), z)
    assert calls == []  # read back, not encoded again
    view = adata[:10]
    np.testing.assert_array_equal(member_latents(model, view), z[:, :10])
    assert calls == []  # a view's rows of the stored pass
    encoder = list(model.module.z_encoder.parameters())
    with torch.no_grad():  # new weights: the stored pass no longer describes the model
        for p in encoder:
            p.add_(0.1)
    try:
        changed = member_latents(model, adata)
        assert calls == [True] and not np.allclose(changed, z)
    finally:
        with torch.no_grad():
            for p in encoder:
                p.sub_(0.1)
