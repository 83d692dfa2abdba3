"""EnsembleSCVI: scvi-tools API, outputs, reproducibility, save/load and failure handling."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import KIND_TRAIN, KINDS
from lightning.pytorch.callbacks import Callback

import ensemblevi as ev
from ensemblevi.model import EnsembleSCVI

TRAIN = KIND_TRAIN


def _data(n_cells=240, seed=0):
    adata = ev.data.synthetic("lopez2020", seed=seed, n_cells=n_cells, n_genes=40)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    return adata


@pytest.fixture(scope="module")
def trained(lopez_adata, kind_models):
    """The session's models of every kind (conftest.py), trained on ``_data()``."""
    return lopez_adata, kind_models


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_have_member_shapes(trained, kind):
    adata, models = trained
    model = models[kind]
    k = 1 if kind == "single" else 3
    assert model.n_members == k and model.is_trained
    # scvi-tools' shape by default (member 0); all members on request
    assert model.get_latent_representation().shape == (adata.n_obs, 4)
    assert model.get_latent_representation(return_members=True).shape == (k, adata.n_obs, 4)
    if kind != "mcdropout":  # MC-dropout members are new mask draws at every call
        # member k through scvi-tools' code (one member computed) against the module's
        # all-member batched pass, the posterior means of every member at once
        loader = model._make_data_loader(adata=adata, batch_size=adata.n_obs)
        model.module.eval()
        with torch.no_grad():
            qz = model.module.predictive(next(iter(loader)), use_mean=True).qz.loc[0]  # (K, n, L)
        stacked = model.get_latent_representation(return_members=True)
        for j in range(k):
            np.testing.assert_allclose(
                model.get_latent_representation(member=j), qz[j].numpy(), rtol=1e-4, atol=1e-5
            )
            np.testing.assert_allclose(stacked[j], qz[j].numpy(), rtol=1e-4, atol=1e-5)
    genes = list(adata.var_names[[3, 1]])
    frame = model.get_normalized_expression(gene_list=genes)
    assert isinstance(frame, pd.DataFrame) and frame.shape == (adata.n_obs, 2)
    assert list(frame.columns) == sorted(genes, key=list(adata.var_names).index)
    members = model.get_normalized_expression(return_members=True, indices=np.arange(10))
    assert members.shape == (k, 10, adata.n_vars)
    np.testing.assert_allclose(members.sum(-1), 1, rtol=1e-4)  # library_size=1: fractions
    one = model.get_normalized_expression(member=0, indices=np.arange(10))
    assert isinstance(one, pd.DataFrame) and one.shape == (10, adata.n_vars)


def test_ensemble_mean_is_the_member_average(trained):
    """The ensemble's expression against a loop over the members' own scvi-tools outputs."""
    _, models = trained
    model = models["deep"]
    idx, n = np.arange(20), 1000  # Monte Carlo over z: compared on the log scale
    mean = model.get_normalized_expression(indices=idx, n_samples=n, seed=0, return_numpy=True)
    singles = []
    for k, view in enumerate(model.members):
        torch.manual_seed(k)
        singles.append(view.get_normalized_expression(indices=idx, n_samples=n, return_numpy=True))
    average = np.mean(singles, axis=0)
    err = np.abs(np.log(mean) - np.log(average)).mean()
    assert err < 0.015, err  # measured about 0.005
    # each member alone is further from the ensemble than the Monte Carlo error
    assert min(np.abs(np.log(mean) - np.log(s)).mean() for s in singles) > 5 * err


def test_elbo_and_marginal_ll_per_member_and_mixture(trained):
    adata, models = trained
    model = models["deep"]
    elbo = model.get_elbo(return_mean=False, return_table=True)
    assert list(elbo.columns) == ["member_0", "member_1", "member_2", "mixture"]
    assert elbo.shape == (adata.n_obs, 4)
    members = elbo.iloc[:, :3].to_numpy()
    mix = elbo["mixture"].to_numpy()
    # log-mean-exp lies between the mean and the max of the members
    assert np.all(mix >= members.mean(1) - 1e-6) and np.all(mix <= members.max(1) + 1e-6)
    np.testing.assert_allclose(
        mix, np.log(np.exp(members - members.max(1, keepdims=True)).mean(1)) + members.max(1)
    )
    # scvi-tools' types by default: the mixture as a 0-d float32 tensor, or per cell
    mean = model.get_elbo()
    assert isinstance(mean, torch.Tensor) and mean.ndim == 0 and mean.dtype == torch.float32
    assert float(mean) == pytest.approx(mix.mean(), rel=1e-6)
    np.testing.assert_allclose(model.get_elbo(return_mean=False), mix, rtol=1e-6)
    ll = model.get_marginal_ll(n_mc_samples=20, return_table=True)
    assert set(ll.index) == set(elbo.columns)
    # importance sampling tightens the bound on average
    assert ll["mixture"] > float(mean)
    assert type(model.get_marginal_ll(n_mc_samples=5)) is np.float64  # as scvi-tools'


def test_uncertainty_layers_var_and_uns(trained):
    adata, models = trained
    ad = adata.copy()
    model = models["deep"]
    genes = list(adata.var_names[:5])
    before = (set(ad.layers), set(ad.var.columns), set(ad.uns))
    parts = model.get_uncertainty(ad, gene_list=genes, n_samples=4, progress=False)
    assert (set(ad.layers), set(ad.var.columns), set(ad.uns)) == before  # nothing written
    again = model.get_uncertainty(
        ad, gene_list=genes, n_samples=4, progress=False, key_added="ensemblevi"
    )
    pd.testing.assert_frame_equal(again["var_within"], parts["var_within"])
    assert set(parts) == {"mean", "var_between", "var_within", "var_noise"}
    for name, frame in parts.items():
        layer = ad.layers[f"ensemblevi_{name}"]
        assert layer.shape == ad.shape
        np.testing.assert_allclose(layer[:, :5], frame.to_numpy())
        assert np.isnan(layer[:, 5:]).all()
    assert (parts["var_between"].to_numpy() > 0).all()
    assert np.isnan(ad.var["ensemblevi_cv_between"].to_numpy()[5:]).all()
    b, w = (parts[n].to_numpy().astype(np.float64) for n in ("var_between", "var_within"))
    np.testing.assert_allclose(
        ad.var["ensemblevi_frac_between"].iloc[:5], b.sum(0) / (b + w).sum(0), rtol=1e-5
    )
    assert ad.uns["ensemblevi"]["uncertainty"]["n_members"] == 3
    # another key, without the dense layers
    model.get_uncertainty(ad, n_samples=2, progress=False, key_added="unc2", store_layers=False)
    assert "unc2_var_between" in ad.var and not any(k.startswith("unc2") for k in ad.layers)
    # a single model has no between-member part
    single = models["single"].get_uncertainty(ad, n_samples=3, progress=False)
    assert (single["var_between"].to_numpy() == 0).all()


def test_uncertainty_parts_are_the_moments_of_the_member_draws(trained):
    """Mean, between- and within-member variance against numpy moments of the very same
    draws (same seed and minibatches), taken from the members' normalised expression."""
    _, models = trained
    model = models["deep"]
    kw = {"n_samples": 5, "seed": 3, "batch_size": 40}
    parts = model.get_uncertainty(**kw, progress=False)
    draws = model.get_normalized_expression(
        **kw, return_mean=False, return_members=True, library_size=1e4
    ).astype(np.float64)  # (K, S, cells, genes)
    reference = {
        "mean": draws.mean((0, 1)),
        "var_between": draws.mean(1).var(0),
        "var_within": draws.var(1).mean(0),
    }
    for name, ref in reference.items():
        np.testing.assert_allclose(parts[name].to_numpy(), ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_streamed_uncertainty_summaries_match_the_dense_parts(trained):
    """The O(cells + genes) summaries equal numpy reductions of the four dense parts."""
    adata, models = trained
    ad = adata.copy()
    model = models["deep"]
    kw = {"n_samples": 3, "progress": False, "batch_size": 7, "seed": 2}
    dense = model.get_uncertainty(ad, **kw)
    out = model.get_uncertainty(ad, **kw, return_frames=False, key_added="s", store_layers=False)
    assert set(out) == {"genes", "cells"} and not any(k.startswith("s_") for k in ad.layers)
    m, b, w = (
        dense[n].to_numpy().astype(np.float64) for n in ("mean", "var_between", "var_within")
    )
    cv = np.sqrt(b) / np.maximum(m, np.finfo(np.float32).tiny)
    genes, cells = out["genes"], out["cells"]
    for name in ("mean", "var_between", "var_within", "var_noise"):
        np.testing.assert_allclose(genes[name], dense[name].to_numpy().mean(0), rtol=1e-5)
    np.testing.assert_allclose(genes["cv_between"], cv.mean(0), rtol=1e-5)
    np.testing.assert_allclose(genes["frac_between"], b.sum(0) / (b + w).sum(0), rtol=1e-5)
    np.testing.assert_allclose(cells["cv_between"], cv.mean(1), rtol=1e-5)
    np.testing.assert_allclose(cells["frac_between"], b.sum(1) / (b + w).sum(1), rtol=1e-5)
    np.testing.assert_allclose(ad.obs["s_cv_between"], cv.mean(1), rtol=1e-5)
    np.testing.assert_allclose(ad.var["s_frac_between"], genes["frac_between"])


def test_missing_gene_is_named(trained):
    _, models = trained
    with pytest.raises(ValueError, match=r"not in adata.var_names.*NOT_A_GENE"):
        models["deep"].get_normalized_expression(gene_list=["NOT_A_GENE"])
    with pytest.raises(IndexError, match="out of range"):
        models["deep"].get_latent_representation(member=5)


def test_batch_ensemble_parameter_groups(trained):
    _, models = trained
    module = models["batch"].module
    plan = ev.train.EnsembleTrainingPlan(module, lr=2e-3, fast_lr_multiplier=0.5)
    opt = plan.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in opt.param_groups}
    fast_ids = {id(p) for p in module.fast_parameters()}
    assert {id(p) for p in groups["fast"]["params"]} == fast_ids and fast_ids
    assert groups["fast"]["lr"] == pytest.approx(1e-3) and groups["fast"]["weight_decay"] == 0
    assert groups["shared"]["lr"] == pytest.approx(2e-3)
    n_all = sum(1 for p in module.parameters() if p.requires_grad)
    assert len(groups["shared"]["params"]) + len(groups["fast"]["params"]) == n_all
    # a deep ensemble has no fast weights: one group
    deep_plan = ev.train.EnsembleTrainingPlan(trained[1]["deep"].module)
    assert len(deep_plan.configure_optimizers()["optimizer"].param_groups) == 1


def test_fused_adam_takes_the_reference_adam_steps():
    """The plan's fused Adam equals torch's default Adam with scvi-tools' settings."""
    module = EnsembleSCVI(_data(n_cells=60), n_members=2, ensemble="batch", n_hidden=8).module
    plan = ev.train.EnsembleTrainingPlan(module, lr=3e-3, weight_decay=1e-4, eps=0.01)
    fused = plan.configure_optimizers()["optimizer"]
    assert fused.defaults["fused"]
    copy = [p.detach().clone().requires_grad_() for p in module.parameters()]
    by_id = {id(p): c for p, c in zip(module.parameters(), copy, strict=True)}
    groups = [
        {
            "params": [by_id[id(p)] for p in g["params"]],
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
        }
        for g in fused.param_groups
    ]
    ref = torch.optim.Adam(groups, lr=3e-3, eps=0.01, weight_decay=1e-4, fused=False)
    assert not any(g["fused"] for g in ref.param_groups) and len(groups) == 2
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, c in zip(module.parameters(), copy, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            c.grad = p.grad.clone()
        fused.step()
        ref.step()
    for p, c in zip(module.parameters(), copy, strict=True):
        torch.testing.assert_close(p.detach(), c.detach(), rtol=1e-5, atol=1e-6)


def test_same_seed_same_model_and_outputs(trained):
    """A second training with the same seed on a new copy of the data: the same weights
    and outputs as the session's deep ensemble (conftest.py, trained the same way)."""
    states, outputs = [], []
    for model in (trained[1]["deep"], None):
        if model is None:
            model = EnsembleSCVI(_data(), n_members=3, n_hidden=32, n_latent=4, seed=0)
            model.train(**TRAIN)
        states.append(model.module.state_dict())
        outputs.append(model.get_uncertainty(n_samples=2, progress=False)["mean"])
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key])
    pd.testing.assert_frame_equal(outputs[0], outputs[1])


def test_setup_rejects_bad_input():
    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=60, n_genes=20)
    logged = adata.copy()
    logged.X = np.log1p(logged.layers["counts"].toarray())
    # the count check runs where the likelihood is known (gene_likelihood="normal" takes
    # continuous data), still before any training
    EnsembleSCVI.setup_anndata(logged)
    with pytest.raises(ValueError, match=r"need raw integer counts.*layer=.counts."):
        EnsembleSCVI(logged)
    with pytest.raises(ValueError, match="not_a_column"):
        EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="not_a_column")
    with pytest.raises(ValueError, match="ensemble must be one of"):
        EnsembleSCVI.setup_anndata(adata, layer="counts")
        EnsembleSCVI(adata, ensemble="hyper")


def test_save_load_round_trip_and_gene_mismatch(trained, tmp_path):
    adata, models = trained
    model = models["batch"]
    path = tmp_path / "model"
    model.save(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(path)
    model.save(path, overwrite=True)
    assert os.listdir(tmp_path) == ["model"]  # no temporary directories left behind
    loaded = EnsembleSCVI.load(path, adata=adata)
    assert loaded.ensemble == "batch" and loaded.n_members == 3
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[key], value)
    a = model.get_elbo(seed=1, return_table=True)
    b = loaded.get_elbo(seed=1, return_table=True)
    pd.testing.assert_series_equal(a, b)
    other = adata[:, adata.var_names[::-1]].copy()
    with pytest.raises(ValueError, match="same genes, other order"):
        EnsembleSCVI.load(path, adata=other)
    fewer = adata[:, :30].copy()
    with pytest.raises(ValueError, match="Missing here: 10"):
        EnsembleSCVI.load(path, adata=fewer)


class _PoisonAtEpoch(Callback):
    """Put a NaN into the weights at the start of the given epoch (0-based)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                pl_module.module.px_r.fill_(float("nan"))


def test_nan_loss_stops_with_last_good_weights_and_checkpoint(tmp_path):
    adata = _data(n_cells=120)
    model = EnsembleSCVI(adata, n_members=2, n_hidden=16, n_latent=3, seed=0)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(
        FloatingPointError, match=r"at epoch 3 .*after epoch 2.*lower learning rate"
    ):
        model.train(
            max_epochs=5,
            enable_progress_bar=False,
            checkpoint_path=ckpt,
            callbacks=[_PoisonAtEpoch(2)],
        )
    state = model.module.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert model.is_trained
    restored = EnsembleSCVI.load(ckpt, adata=adata)  # the epoch-2 checkpoint is loadable
    assert restored.is_trained  # and usable as it is
    for key, value in state.items():
        torch.testing.assert_close(restored.module.state_dict()[key], value)
    assert np.isfinite(float(model.get_elbo()))
