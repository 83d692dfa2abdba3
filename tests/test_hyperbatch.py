"""Hyper-BatchEnsemble inside EnsembleSCVI: sampling, loss, the tune step, the model API."""

import math

import numpy as np
import pytest
import torch
from conftest import KIND_TRAIN, KIND_TUNE_EVERY
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS

import ensemblevi as ev
from ensemblevi.model import EnsembleSCVI
from ensemblevi.module import EnsembleVAE
from ensemblevi.module._hyperparameters import (
    DEFAULT_HYPERPARAMETERS,
    L2_GROUPS,
    resolve_hyperparameters,
)
from ensemblevi.nn import HyperBatchEnsembleLinear
from ensemblevi.nn._hyperbatch import HyperDropout, hyper_l2_penalty
from ensemblevi.train import EnsembleTrainingPlan, HyperTrainingPlan
from ensemblevi.train._plan import tune_step

K, G, B = 3, 30, 16


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(B, G, generator=g) * 5 + 0.5)
    return {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.zeros(B, 1),
        REGISTRY_KEYS.LABELS_KEY: torch.zeros(B, 1),
    }


def _module(**kw):
    torch.manual_seed(0)
    return EnsembleVAE(G, n_members=K, ensemble="hyperbatch", n_hidden=16, n_latent=4, **kw)


def test_lambda_is_sampled_per_cell_in_training_and_the_mean_at_prediction():
    module = _module()
    module.train()
    module.inference(**module._get_inference_input(_tensors()))
    lam = module._lambda
    assert lam.shape == (K, B, len(DEFAULT_HYPERPARAMETERS))
    low, high = module.hyper.bounds()
    assert (lam >= low.unsqueeze(1) - 1e-6).all() and (lam <= high.unsqueeze(1) + 1e-6).all()
    assert lam.std(1).min() > 0  # a different draw per cell
    drop = [m for m in module.modules() if isinstance(m, HyperDropout)]
    assert drop and all(torch.equal(m.rate, lam[..., 0:1]) for m in drop)
    module.eval()
    module.inference(**module._get_inference_input(_tensors()))
    torch.testing.assert_close(module._lambda, module.hyper.mean().unsqueeze(1))


def test_training_loss_weighs_kl_by_sampled_beta_and_adds_the_l2_penalty():
    module = _module()
    module.l2_scale = 1 / 50
    with torch.no_grad():  # make beta clearly differ from 1
        j = module.hyper.index("kl_weight")
        module.hyper.log_low[:, j] = torch.log(torch.tensor([0.2, 2.0, 6.0]))
        module.hyper.log_high[:, j] = module.hyper.log_low[:, j] + 0.5
    module.train()
    tensors = _tensors()
    inf, gen, out = module(tensors, loss_kwargs={"kl_weight": 0.7})
    rec, kl_z, kl_l = module.elbo_terms(tensors, inf, gen)
    beta = module._lambda[..., j]
    expected = (rec + 0.7 * beta * kl_z + kl_l).mean(-1).mean()
    l2 = (
        sum(
            hyper_l2_penalty(layer, module._lambda[..., module.hyper.index(f"l2_{group}")])
            for group, layers in module.l2_groups().items()
            for layer in layers
        )
        / 50
    )
    assert l2 > 0
    torch.testing.assert_close(out.loss, expected + l2)
    # every HBE linear layer is in exactly one L2 group
    grouped = [id(m) for layers in module.l2_groups().values() for m in layers]
    all_layers = [id(m) for m in module.modules() if isinstance(m, HyperBatchEnsembleLinear)]
    assert sorted(grouped) == sorted(all_layers) and len(set(grouped)) == len(grouped)
    assert tuple(module.l2_groups()) == L2_GROUPS
    # evaluation: the plain ELBO (beta = 1, no penalty)
    module.eval()
    inf, gen, out = module(tensors)
    rec, kl_z, kl_l = module.elbo_terms(tensors, inf, gen)
    torch.testing.assert_close(out.loss, (rec + kl_z + kl_l).mean(-1).mean())


def test_tune_loss_is_the_mixture_nll_minus_entropy_and_moves_only_the_bounds():
    module = _module()
    tensors = _tensors(1)
    module.train()
    torch.manual_seed(5)
    loss, nll = module.tune_loss(tensors, tau=0.1)
    assert module.training  # restored
    # same draws again, by hand: evaluation mode, sampled lambda, mixture of member ELBOs
    module.eval()
    module._sample_hyper = True
    torch.manual_seed(5)
    inf = module.inference(**module._get_inference_input(tensors))
    gen = module.generative(**module._get_generative_input(tensors, inf))
    rec, kl_z, kl_l = module.elbo_terms(tensors, inf, gen)
    module._sample_hyper = False
    elbo = -(rec + kl_z + kl_l).double()
    ref = -(torch.logsumexp(elbo, 0) - np.log(K)).mean()
    torch.testing.assert_close(nll.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss, nll - 0.1 * module.hyper.entropy().mean())
    # the tune step: only the bounds change, and they stay clipped
    plan = HyperTrainingPlan(module, tune_lr=0.05)
    tune_opt = torch.optim.Adam(module.hyper_parameters(), lr=0.05)
    with torch.no_grad():  # a non-trivial embedding, so the NLL depends on lambda
        for m in module.modules():
            if isinstance(m, HyperBatchEnsembleLinear):
                m.embedding.weight.normal_(0, 0.3)
    net = {n: p.detach().clone() for n, p in module.named_parameters() if "hyper.log" not in n}
    bounds = [p.detach().clone() for p in module.hyper_parameters()]
    tune_step(module, tensors, tune_opt, tau=plan.tau)
    for n, p in module.named_parameters():
        if n in net:
            assert torch.equal(p, net[n]), n
    assert all(
        not torch.equal(a, b) for a, b in zip(bounds, module.hyper_parameters(), strict=True)
    )
    # and the train optimiser's groups never hold the bounds
    ids = {id(p) for g in plan.param_groups(module.parameters()) for p in g["params"]}
    assert not ids & {id(p) for p in module.hyper_parameters()}
    assert len(ids) == sum(1 for _ in module.parameters()) - 2


def test_resolve_hyperparameters():
    assert resolve_hyperparameters() == DEFAULT_HYPERPARAMETERS
    assert [h.name for h in resolve_hyperparameters(["kl_weight", "dropout"])] == [
        "kl_weight",
        "dropout",
    ]
    (h,) = resolve_hyperparameters({"kl_weight": (0.5, 2.0)})
    assert (h.low, h.high, h.init) == (0.5, 2.0, None)
    (h,) = resolve_hyperparameters({"dropout": {"low": 0.01, "high": 0.5, "init": 0.2}})
    assert h.init == 0.2
    with pytest.raises(ValueError, match="tunable"):
        resolve_hyperparameters(["n_latent"])
    with pytest.raises(ValueError, match="below 1"):
        resolve_hyperparameters({"dropout": (0.1, 1.5)})
    with pytest.raises(ValueError, match="hyperbatch"):
        EnsembleVAE(G, n_members=K, ensemble="batch", hyperparameters=["dropout"])
    # without a tuned dropout the encoder keeps its fixed dropout
    module = EnsembleVAE(G, n_members=K, ensemble="hyperbatch", hyperparameters=["kl_weight"])
    assert not any(isinstance(m, HyperDropout) for m in module.modules())


def test_initial_intervals_start_at_the_untuned_baseline():
    # the model's own dropout centres the dropout interval; 0 starts at the low end, with
    # every member's jittered interval still inside the range (none clipped flat)
    for rate in (0.0, 0.1, 0.3):
        (h,) = resolve_hyperparameters(["dropout"], baseline={"dropout": rate})
        assert h.init == pytest.approx(max(rate, h.low * math.exp(h.init_width + 0.3)))
    torch.manual_seed(1)
    module = _module(dropout_rate=0.0)
    low, high = (t.detach() for t in module.hyper.bounds())
    j = module.hyper.index("dropout")
    assert (low[:, j] >= 1e-3).all() and (high[:, j] < 5e-3).all()
    assert torch.all(low < high)
    # a user's init wins over the baseline
    (h,) = resolve_hyperparameters({"dropout": {"init": 0.5}}, baseline={"dropout": 0.0})
    assert h.init == 0.5
    # scVI's L2 starts mid-range (the log-uniform mean, 14.5); the ConvVAE's at the low end
    i = module.hyper.index("l2_decoder")
    assert 10 < float(module.hyper.mean().detach()[:, i].mean()) < 20
    conv = ev.module.EnsembleConvVAE((8, 8), n_members=K, ensemble="hyperbatch")
    for name in L2_GROUPS:
        j = conv.hyper.index(f"l2_{name}")
        assert 0.1 <= float(conv.hyper.mean().detach()[:, j].min()) < 0.3


def test_tied_heads_are_the_default_and_full_heads_double_the_kernel():
    tied, full = _module(), _module(hyper_heads="full")
    assert tied.decoder.heads.tied and tied.decoder.heads.weight_hyper is None
    assert not full.decoder.heads.tied and full.decoder.heads.weight_hyper is not None
    # only the likelihood heads are tied; every other HBE layer keeps its second kernel
    others = [m for m in tied.modules() if isinstance(m, HyperBatchEnsembleLinear)]
    assert sum(m.tied for m in others) == 1
    n = sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in tied.parameters())
    assert n == full.decoder.heads.weight_hyper.numel()
    with pytest.raises(ValueError, match="hyper_heads"):
        _module(hyper_heads="wide")


@pytest.fixture(scope="module")
def hbe_model(kind_models):
    """The session's hyperbatch ensemble (conftest.py: K = 3, tuned every 2 steps)."""
    model = kind_models["hyperbatch"]
    return model.adata, model


def test_model_records_tuning_and_round_trips(hbe_model, tmp_path):
    adata, model = hbe_model
    table = model.get_hyperparameters()
    assert list(table.columns) == ["member", "hyperparameter", "low", "high", "mean"]
    assert len(table) == K * len(DEFAULT_HYPERPARAMETERS)
    assert ((table["low"] < table["mean"]) & (table["mean"] < table["high"])).all()
    traj = model.hyper_trajectory_
    steps_per_epoch = int(np.ceil(len(model.train_indices) / 128))
    n_tune = KIND_TRAIN["max_epochs"] * steps_per_epoch // KIND_TUNE_EVERY
    assert n_tune >= 2
    assert traj["step"].nunique() == n_tune + 1  # the initial bounds + one per tune step
    first = traj[traj["step"] == 0].set_index(["member", "hyperparameter"])
    last = table.set_index(["member", "hyperparameter"])
    assert not np.allclose(first["low"], last["low"])  # tuning moved the bounds
    assert "hyper_kl_weight_low_m0" in model.history and "tune_nll" in model.history
    model.save(tmp_path / "m")
    loaded = EnsembleSCVI.load(tmp_path / "m", adata=adata)
    assert loaded.get_hyperparameters().equals(table)
    assert len(loaded.hyper_trajectory_) == len(traj)
    np.testing.assert_allclose(
        loaded.get_elbo(return_mean=False), model.get_elbo(return_mean=False), rtol=1e-5
    )
    fig = ev.pl.hyperparameter_trajectories(model, return_fig=True)
    assert len([ax for ax in fig.axes if ax.has_data()]) == len(DEFAULT_HYPERPARAMETERS)


def test_model_errors(hbe_model):
    adata, model = hbe_model
    with pytest.raises(ValueError, match="train_size < 1"):
        model.train(max_epochs=1, train_size=1.0)
    deep = EnsembleSCVI(adata, n_members=2, ensemble="deep", n_hidden=8, n_latent=2)
    with pytest.raises(ValueError, match="hyperbatch"):
        deep.get_hyperparameters()
    with pytest.raises(ValueError, match="hyperbatch"):
        ev.pl.hyperparameter_trajectories(deep)


class _SaveCheckpoint(Callback):
    def __init__(self, path):
        self.path = path
        self.global_step = None

    def on_train_end(self, trainer, pl_module):
        self.global_step = trainer.global_step
        trainer.save_checkpoint(self.path)


def test_both_optimisers_live_in_lightning_and_its_checkpoint(tmp_path):
    adata = ev.data.synthetic("lopez2020", seed=1, n_cells=200, n_genes=30)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = EnsembleSCVI(adata, n_members=2, ensemble="hyperbatch", n_hidden=8, n_latent=2, seed=0)
    # the plan class is the model's from construction on (scvi-tools' train() reads it)
    assert model._training_plan_cls is HyperTrainingPlan
    assert EnsembleSCVI(adata, n_members=2)._training_plan_cls is EnsembleTrainingPlan
    saver = _SaveCheckpoint(tmp_path / "last.ckpt")
    # a plateau scheduler that must fire after epoch 2 (no improvement can pass a 1e9
    # threshold): under manual optimisation the plan steps it, not Lightning
    plateau = {"reduce_lr_on_plateau": True, "lr_patience": 0, "lr_threshold": 1e9}
    model.train(
        max_epochs=2,
        batch_size=40,
        seed=0,
        enable_progress_bar=False,
        callbacks=[saver],
        check_val_every_n_epoch=1,
        plan_kwargs={"tune_every": 2, **plateau},
    )
    n_train = int(np.ceil(len(model.train_indices) / 40)) * 2
    n_tune = n_train // 2
    assert saver.global_step == n_train  # tune steps do not count as training steps
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    net_state, tune_state = ckpt["optimizer_states"]
    bounds = model.module.hyper_parameters()
    assert len(tune_state["state"]) == len(bounds) == 2
    for i, p in enumerate(bounds):
        assert tune_state["state"][i]["exp_avg"].shape == p.shape
        assert int(tune_state["state"][i]["step"]) == n_tune
    assert tune_state["param_groups"][0]["lr"] == 1e-3  # the scheduler is the network's
    assert net_state["param_groups"][0]["lr"] == pytest.approx(0.6e-3)  # scvi's factor 0.6
    assert len(ckpt["lr_schedulers"]) == 1
    n_net = sum(len(g["params"]) for g in net_state["param_groups"])
    assert n_net == len(list(model.module.parameters())) - 2  # every weight but the bounds
    # the trajectory came through the callback: one record per tune step, no module attribute
    assert model.hyper_trajectory_["step"].nunique() == n_tune + 1
    assert not hasattr(model.module, "hyper_trajectory")


class _AutomaticHyperPlan(EnsembleTrainingPlan):
    """The previous HBE loop, as reference: Lightning's automatic optimisation of the
    network and a tune step with its own Adam, outside Lightning, after the batch."""

    def __init__(self, module, *, tune_every=3, tau=1e-3, tune_lr=1e-3, **kwargs):
        super().__init__(module, **kwargs)
        self.tune_every, self.tau = tune_every, tau
        self.tune_opt = torch.optim.Adam(module.hyper_parameters(), lr=tune_lr)
        self.steps, self.val = 0, None

    def param_groups(self, params):
        bounds = {id(p) for p in self.module.hyper_parameters()}
        return super().param_groups(p for p in params if id(p) not in bounds)

    def on_train_start(self):
        super().on_train_start()
        self.module.l2_scale = 1.0 / self.n_obs_training

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.steps += 1
        if self.steps % self.tune_every == 0:
            batch = next(self.val, None) if self.val is not None else None
            if batch is None:
                self.val = iter(self.trainer.datamodule.val_dataloader())
                batch = next(self.val)
            tune_step(self.module, batch, self.tune_opt, self.tau)


def test_manual_optimisation_trains_as_the_previous_automatic_loop():
    adata = ev.data.synthetic("lopez2020", seed=2, n_cells=200, n_genes=30)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    states = []
    for plan in (None, HyperTrainingPlan, _AutomaticHyperPlan):
        model = EnsembleSCVI(
            adata, n_members=2, ensemble="hyperbatch", n_hidden=8, n_latent=2, seed=0
        )
        if plan is not None:
            model._training_plan_cls = plan
            model.train(
                max_epochs=2,
                batch_size=40,
                seed=0,
                enable_progress_bar=False,
                plan_kwargs={"tune_every": 2, "tune_lr": 0.05},
            )
        states.append(model.module.state_dict())
    start, new, old = states
    assert (new["hyper.log_low"] - start["hyper.log_low"]).abs().max() > 1e-3  # tuned
    for key, value in old.items():  # the same operations in the same order: bit-identical
        torch.testing.assert_close(new[key], value, rtol=0, atol=0, msg=key)
