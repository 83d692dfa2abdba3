"""scvi-tools' TrainingPlan with ensemble parameter groups, and HBE's train/tune alternation.

The parameter groups and the tune step are functions (:func:`fast_param_groups`,
:func:`tune_step`) so that the image model's own loop (``ConvVAE``) runs the same ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from scvi.train import SemiSupervisedTrainingPlan, TrainingPlan
from torch import nn

logger = logging.getLogger(__name__)
#: optimiser classes whose fused fallback was logged (once each per process)
_FUSED_FALLBACKS: set[str] = set()


def _fused_fallback(optimizer_cls: type, err: BaseException) -> None:
    """Log once per optimiser class that the fused implementation is unavailable, and why."""
    name = optimizer_cls.__name__
    if name not in _FUSED_FALLBACKS:
        _FUSED_FALLBACKS.add(name)
        why = str(err).splitlines()[0][:200] if str(err) else ""
        logger.info(
            "fused %s unavailable (%s: %s); using the default implementation (same update, "
            "slower steps).",
            name,
            type(err).__name__,
            why,
        )


def fast_param_groups(
    params: Iterable[nn.Parameter],
    *,
    fast: Iterable[nn.Parameter],
    lr: float,
    fast_lr_multiplier: float,
) -> list[dict]:
    """Optimiser groups: the shared weights, and the fast weights at their own rate.

    Without fast weights (single, deep, MC dropout) there is one unnamed group, as in
    scvi-tools; with them the groups are named ``shared`` and ``fast`` (what Lightning's
    ``LearningRateMonitor`` logs as ``lr-Adam/shared`` and ``lr-Adam/fast``).

    Fast weights (BatchEnsemble's ``r``, ``s`` and per-member biases) get
    ``lr * fast_lr_multiplier`` and no weight decay, as in the reference implementation
    (Wen, Tran & Ba 2020). Groups are built from the module's own list of fast
    parameters, never from parameter names.

    Parameters
    ----------
    params
        The parameters to optimise.
    fast
        The module's fast parameters (``module.fast_parameters()``).
    lr
        The base learning rate.
    fast_lr_multiplier
        Learning-rate multiplier of the fast-weight group.
    """
    fast_ids = {id(p) for p in fast}
    params = list(params)
    fast_params = [p for p in params if id(p) in fast_ids]
    if not fast_params:
        # one unnamed group, as scvi-tools': LearningRateMonitor then logs "lr-Adam" as for
        # scvi.model.SCVI, where a named group would log "lr-Adam/<name>"
        return [{"params": params}]
    shared = {"params": [p for p in params if id(p) not in fast_ids], "name": "shared"}
    fast_lr = lr * fast_lr_multiplier
    return [shared, {"params": fast_params, "name": "fast", "lr": fast_lr, "weight_decay": 0.0}]


def tune_step(module, batch, optimizer: torch.optim.Optimizer, tau: float) -> float:
    """One update of the hyperparameter bounds on a validation minibatch.

    Differentiates the module's ``tune_loss`` (ensemble validation NLL minus ``tau`` x
    the mean entropy) with respect to the bounds alone, steps ``optimizer`` and clips the
    bounds. Under data-parallel training the gradients (and the reported NLL) are
    averaged over the processes first, so every replica keeps the same bounds.

    Parameters
    ----------
    module
        A Hyper-BatchEnsemble module (``hyper_parameters()``, ``tune_loss``, ``hyper``).
    batch
        A validation minibatch, as the module's loss takes it.
    optimizer
        The optimiser of the bounds.
    tau
        Entropy weight of the tune objective.

    Returns
    -------
    float
        The minibatch's ensemble NLL per example (the processes' mean under DDP).
    """
    params = module.hyper_parameters()
    with torch.enable_grad():
        loss, nll = module.tune_loss(batch, tau=tau)
        grads = torch.autograd.grad(loss, params)
    nll = nll.detach()
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # one collective: the gradients and the NLL, averaged over the processes
        flat = torch.cat([g.reshape(-1) for g in grads] + [nll.reshape(1)])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        *grads, nll = flat.split([g.numel() for g in grads] + [1])
        grads = [g.view_as(p) for g, p in zip(grads, params, strict=True)]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    module.hyper.clip_()
    return float(nll)


class FastGroupsMixin:
    """Two optimiser parameter groups for any scvi-tools training plan.

    BatchEnsemble fast weights (whatever the module's ``fast_parameters()`` returns) get
    ``lr * fast_lr_multiplier`` and no weight decay (:func:`fast_param_groups`); every
    other parameter gets the usual settings. Everything else (KL warm-up, metrics,
    schedulers, the optimiser choice) is the host plan's (scvi-tools').

    Parameters
    ----------
    module
        An :class:`~ensemblevi.module.EnsembleVAE` (anything with ``fast_parameters()``).
    *args
        The host plan's positional arguments after the module (``n_classes``).
    fast_lr_multiplier
        Learning-rate multiplier of the fast-weight group (reference default 0.5).
    **kwargs
        Passed to the host plan (``lr``, ``weight_decay``, ``eps``,
        ``n_epochs_kl_warmup``, ``optimizer``, ...).
    """

    def __init__(self, module, *args, fast_lr_multiplier: float = 0.5, **kwargs):
        super().__init__(module, *args, **kwargs)
        if fast_lr_multiplier <= 0:
            raise ValueError(f"fast_lr_multiplier must be > 0, got {fast_lr_multiplier}.")
        self.fast_lr_multiplier = fast_lr_multiplier

    def param_groups(self, params: Iterable[nn.Parameter]) -> list[dict]:
        """Split ``params`` into the shared group and the fast-weight group.

        Parameters
        ----------
        params
            The parameters scvi-tools hands to the optimiser.
        """
        return fast_param_groups(
            params,
            fast=self.module.fast_parameters(),
            lr=self.lr,
            fast_lr_multiplier=self.fast_lr_multiplier,
        )

    def _optimizer_creator_fn(self, optimizer_cls):
        """scvi-tools' Adam/AdamW with the same settings, as the fused implementation.

        Parameters
        ----------
        optimizer_cls
            ``torch.optim.Adam`` or ``torch.optim.AdamW``.


        ``fused=True`` updates each parameter in one kernel instead of about ten element-
        wise passes: 3x faster Adam steps on this CPU for a K = 4 ensemble (measured in
        docs/benchmarks.md), and an ensemble has K times scVI's parameters. Same update
        rule; falls back to the default implementation where fused is unavailable.
        """

        def create(params):
            groups = list(params)
            tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
            settings = {"lr": self.lr, "eps": self.eps, "weight_decay": self.weight_decay}
            if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors):
                try:
                    return optimizer_cls(groups, fused=True, **settings)
                except (RuntimeError, TypeError, ValueError) as err:  # older torch: no fused
                    _fused_fallback(optimizer_cls, err)
            return optimizer_cls(groups, **settings)

        return create

    def get_optimizer_creator(self):
        """scvi-tools' optimiser creator, fed with parameter groups instead of a flat list."""
        create = super().get_optimizer_creator()
        return lambda params: create(self.param_groups(params))


class EnsembleTrainingPlan(FastGroupsMixin, TrainingPlan):
    """``scvi.train.TrainingPlan`` whose optimiser has two parameter groups.

    See :class:`FastGroupsMixin`.

    Parameters
    ----------
    module
        An :class:`~ensemblevi.module.EnsembleVAE`.
    fast_lr_multiplier
        Learning-rate multiplier of the fast-weight group (reference default 0.5).
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan`.
    """


class EnsembleSemiSupervisedTrainingPlan(FastGroupsMixin, SemiSupervisedTrainingPlan):
    """``scvi.train.SemiSupervisedTrainingPlan`` (scANVI's) with two parameter groups.

    Each step sees a minibatch of all cells and one of labelled cells, whose
    classification loss is weighted by ``classification_ratio``, as in scvi-tools; the
    logged accuracy and calibration error are the ensemble's (its mixture prediction).

    Parameters
    ----------
    module
        An :class:`~ensemblevi.module.EnsembleSCANVAE`.
    n_classes
        The number of cell types.
    fast_lr_multiplier
        Learning-rate multiplier of the fast-weight group.
    **kwargs
        Passed to :class:`scvi.train.SemiSupervisedTrainingPlan` (``classification_ratio``,
        ``lr``, ...).
    """


class HyperTuneMixin:
    """Hyper-BatchEnsemble's alternating algorithm on scvi-tools' training loop.

    Written by hand: scvi-tools has no self-tuning training. Like scvi-tools'
    ``AdversarialTrainingPlan``, it optimises manually with two optimisers, both returned
    by :meth:`configure_optimizers` (so a Lightning checkpoint holds both states): the
    network's (every parameter but the hyperparameter bounds, in scvi-tools' train step:
    one sampled lambda per member and cell, lambda-weighted KL and L2 in the loss) and the
    bounds' Adam (``tune_lr``). After every ``tune_every``-th train step, a *tune step*
    (:func:`tune_step`) takes a minibatch of the validation split, differentiates
    :meth:`~ensemblevi.module.EnsembleVAE.tune_loss` (ensemble validation NLL with
    ``beta = 1`` and no regulariser, minus ``tau`` x the mean entropy of the lambda
    distributions, in evaluation mode) with respect to the bounds only, steps their
    optimiser and clips them. That step's NLL is returned in the training step's output
    (``"tune_nll"``), where :class:`~ensemblevi.train.HyperparameterTrajectory` records
    the bounds; each epoch's mean is logged as ``tune_nll`` and its end bounds as
    ``hyper_<name>_<low|high>_m<k>``.

    Parameters
    ----------
    module
        An :class:`~ensemblevi.module.EnsembleVAE` with ``ensemble="hyperbatch"``.
    *args
        The host plan's positional arguments after the module (``n_classes``).
    tune_every
        Train steps per tune step (reference: 3).
    tau
        Entropy weight of the tune objective (reference: 1e-3).
    tune_lr
        Adam learning rate of the bounds (reference: 1e-3).
    **kwargs
        Passed to :class:`EnsembleTrainingPlan`.
    """

    def __init__(
        self,
        module,
        *args,
        tune_every: int = 3,
        tau: float = 1e-3,
        tune_lr: float = 1e-3,
        **kwargs,
    ):
        super().__init__(module, *args, **kwargs)
        if getattr(module, "hyper", None) is None:
            raise ValueError("HyperTrainingPlan needs a module built with ensemble='hyperbatch'.")
        if int(tune_every) != tune_every or tune_every < 1:
            raise ValueError(f"tune_every must be a positive integer, got {tune_every!r}.")
        if tau < 0 or tune_lr <= 0:
            raise ValueError(f"Need tau >= 0 and tune_lr > 0, got {tau} and {tune_lr}.")
        self.tune_every = int(tune_every)
        self.tau = float(tau)
        self.tune_lr = float(tune_lr)
        self.automatic_optimization = False
        self.train_steps = 0  # network updates so far; tune steps are not counted
        self._val_iter = None

    def param_groups(self, params: Iterable[nn.Parameter]) -> list[dict]:
        """The network's groups, without the hyperparameter bounds (tuned separately).

        Parameters
        ----------
        params
            The parameters scvi-tools hands to the optimiser.
        """
        bounds = {id(p) for p in self.module.hyper_parameters()}
        return super().param_groups(p for p in params if id(p) not in bounds)

    def configure_optimizers(self):
        """scvi-tools' optimiser (and scheduler) for the network, and Adam for the bounds."""
        config = super().configure_optimizers()
        tune = torch.optim.Adam(self.module.hyper_parameters(), lr=self.tune_lr)
        optimizers = [config["optimizer"], tune]
        if "lr_scheduler" in config:
            return optimizers, [config["lr_scheduler"]]
        return optimizers

    def _val_loader(self):
        dm = getattr(self.trainer, "datamodule", None)
        loader = dm.val_dataloader() if dm is not None else None
        if loader is None or len(loader) == 0:
            raise ValueError(
                "ensemble='hyperbatch' tunes its hyperparameters on validation cells, and "
                "this training has none: use train_size < 1 (e.g. the default 0.9)."
            )
        return loader

    def on_train_start(self) -> None:
        """Set the L2 scale (1 / training cells); fail early without validation cells."""
        super().on_train_start()
        self.module.l2_scale = 1.0 / max(int(self.n_obs_training or 1), 1)
        self._val_loader()

    def _next_val_batch(self) -> dict:
        if self._val_iter is None:
            self._val_iter = iter(self._val_loader())
        try:
            batch = next(self._val_iter)
        except StopIteration:
            self._val_iter = iter(self._val_loader())
            batch = next(self._val_iter)
        if isinstance(batch, (list, tuple)):  # semi-supervised loaders: [all, labelled]
            batch = batch[0]
        device = self.module.device
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def training_step(self, batch, batch_idx):
        """scvi-tools' train step, a manual network update, and every ``tune_every``-th
        step a tune step.

        Parameters
        ----------
        batch
            The training minibatch.
        batch_idx
            Its index in the epoch.
        """
        opt, tune_opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)  # forward pass and scvi's logging
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.train_steps += 1
        out = {"loss": loss}
        if self.train_steps % self.tune_every == 0:
            # the bare optimiser: Lightning's wrapper would count the tune step in
            # global_step, which must stay the number of network updates (KL warm-up)
            nll = tune_step(self.module, self._next_val_batch(), tune_opt.optimizer, self.tau)
            self.log("tune_nll", nll, on_step=False, on_epoch=True, batch_size=1)
            out["tune_nll"] = nll
        return out

    def _step_plateau_scheduler(self, on_validation: bool) -> None:
        # manual optimisation: Lightning leaves the scheduler to the plan (as scvi-tools'
        # AdversarialTrainingPlan does), stepped after the epoch whose metric it monitors
        metric = self.lr_scheduler_metric
        if self.reduce_lr_on_plateau and ("validation" in metric) == on_validation:
            self.lr_schedulers().step(self.trainer.callback_metrics[metric])

    def on_validation_epoch_end(self) -> None:
        """Step a validation-monitoring learning-rate scheduler."""
        super().on_validation_epoch_end()
        self._step_plateau_scheduler(on_validation=True)

    def on_train_epoch_end(self) -> None:
        """Log each member's bounds; step a train-monitoring learning-rate scheduler."""
        super().on_train_epoch_end()
        self._step_plateau_scheduler(on_validation=False)
        low, high = (t.detach().cpu() for t in self.module.hyper.bounds())
        for j, name in enumerate(self.module.hyper.names):
            for k in range(self.module.n_members):
                for side, t in (("low", low), ("high", high)):
                    self.log(
                        f"hyper_{name}_{side}_m{k}", float(t[k, j]), on_epoch=True, on_step=False
                    )


class HyperTrainingPlan(HyperTuneMixin, EnsembleTrainingPlan):
    """Hyper-BatchEnsemble's training on :class:`EnsembleTrainingPlan` (see
    :class:`HyperTuneMixin`).

    Parameters
    ----------
    module
        An :class:`~ensemblevi.module.EnsembleVAE` with ``ensemble="hyperbatch"``.
    **kwargs
        ``tune_every``, ``tau``, ``tune_lr``, and :class:`EnsembleTrainingPlan`'s.
    """


class HyperSemiSupervisedTrainingPlan(HyperTuneMixin, EnsembleSemiSupervisedTrainingPlan):
    """Hyper-BatchEnsemble's training on the semi-supervised plan.

    The tune step's objective stays the ensemble's validation NLL of the counts (the
    generative model shared with scVI); the labels enter only the network's train step.

    Parameters
    ----------
    module
        An :class:`~ensemblevi.module.EnsembleSCANVAE` with ``ensemble="hyperbatch"``.
    n_classes
        The number of cell types.
    **kwargs
        ``tune_every``, ``tau``, ``tune_lr``, and
        :class:`EnsembleSemiSupervisedTrainingPlan`'s.
    """
