"""scvi-tools' TrainingPlan with explicit optimiser parameter groups for ensemble fast weights."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from scvi.train import TrainingPlan
from torch import nn

from ensemblevi.module._hyperparameters import bounds_record


class EnsembleTrainingPlan(TrainingPlan):
    """``scvi.train.TrainingPlan`` whose optimiser has two parameter groups.

    BatchEnsemble fast weights (``r``, ``s`` and per-member biases; whatever the module's
    ``fast_parameters()`` returns) get ``lr * fast_lr_multiplier`` and no weight decay, as in
    the reference implementation; every other parameter gets the usual settings. Groups are
    built from the module's own list of fast parameters, never from parameter names.
    Everything else (KL warm-up, metrics, schedulers, the optimiser choice) is scvi-tools'.

    Parameters
    ----------
    module
        An :class:`~ensemblevi.module.EnsembleVAE` (anything with ``fast_parameters()``).
    fast_lr_multiplier
        Learning-rate multiplier of the fast-weight group (reference default 0.5).
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (``lr``, ``weight_decay``, ``eps``,
        ``n_epochs_kl_warmup``, ``optimizer``, ...).
    """

    def __init__(self, module, *, fast_lr_multiplier: float = 0.5, **kwargs):
        super().__init__(module, **kwargs)
        if fast_lr_multiplier <= 0:
            raise ValueError(f"fast_lr_multiplier must be > 0, got {fast_lr_multiplier}.")
        self.fast_lr_multiplier = fast_lr_multiplier

    def param_groups(self, params: Iterable[nn.Parameter]) -> list[dict]:
        """Split ``params`` into the shared group and the fast-weight group."""
        fast_ids = {id(p) for p in self.module.fast_parameters()}
        params = list(params)
        shared = [p for p in params if id(p) not in fast_ids]
        fast = [p for p in params if id(p) in fast_ids]
        groups = [{"params": shared, "name": "shared"}]
        if fast:
            groups.append(
                {
                    "params": fast,
                    "name": "fast",
                    "lr": self.lr * self.fast_lr_multiplier,
                    "weight_decay": 0.0,
                }
            )
        return groups

    def _optimizer_creator_fn(self, optimizer_cls):
        """scvi-tools' Adam/AdamW with the same settings, as the fused implementation.

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
                except (RuntimeError, TypeError, ValueError):  # older torch: no fused on CPU
                    pass
            return optimizer_cls(groups, **settings)

        return create

    def get_optimizer_creator(self):
        """scvi-tools' optimiser creator, fed with parameter groups instead of a flat list."""
        create = super().get_optimizer_creator()
        return lambda params: create(self.param_groups(params))


class HyperTrainingPlan(EnsembleTrainingPlan):
    """Hyper-BatchEnsemble's alternating algorithm on scvi-tools' training loop.

    Written by hand: scvi-tools has no self-tuning training. Train steps are scvi-tools'
    (one sampled lambda per member and cell, lambda-weighted KL and L2 in the loss; the
    optimiser holds every network parameter but not the hyperparameter bounds). After every
    ``tune_every``-th train step, a *tune step* takes a minibatch of the validation split,
    computes :meth:`~ensemblevi.module.EnsembleVAE.tune_loss` (ensemble validation NLL with
    ``beta = 1`` and no regulariser, minus ``tau`` x the mean entropy of the lambda
    distributions, in evaluation mode), differentiates it with respect to the bounds only,
    takes an Adam step (``tune_lr``) and clips the bounds. The bounds after each tune step
    are kept in :attr:`trajectory` (and each epoch's end is logged to the history as
    ``hyper_<name>_<low|high>_m<k>``), so one can see whether tuning moved them.

    Parameters
    ----------
    module
        An :class:`~ensemblevi.module.EnsembleVAE` with ``ensemble="hyperbatch"``.
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
        *,
        tune_every: int = 3,
        tau: float = 1e-3,
        tune_lr: float = 1e-3,
        **kwargs,
    ):
        super().__init__(module, **kwargs)
        if getattr(module, "hyper", None) is None:
            raise ValueError("HyperTrainingPlan needs a module built with ensemble='hyperbatch'.")
        if int(tune_every) != tune_every or tune_every < 1:
            raise ValueError(f"tune_every must be a positive integer, got {tune_every!r}.")
        if tau < 0 or tune_lr <= 0:
            raise ValueError(f"Need tau >= 0 and tune_lr > 0, got {tau} and {tune_lr}.")
        self.tune_every = int(tune_every)
        self.tau = float(tau)
        self.tune_lr = float(tune_lr)
        self.trajectory: list[dict] = []
        module.hyper_trajectory = self.trajectory  # read by the model after training
        self._tune_opt = None
        self._val_iter = None
        self._train_steps = 0

    def param_groups(self, params: Iterable[nn.Parameter]) -> list[dict]:
        """The network's groups, without the hyperparameter bounds (tuned separately)."""
        bounds = {id(p) for p in self.module.hyper_parameters()}
        return super().param_groups(p for p in params if id(p) not in bounds)

    def _val_loader(self):
        dm = getattr(self.trainer, "datamodule", None)
        loader = dm.val_dataloader() if dm is not None else None
        if loader is None or len(loader) == 0:
            raise ValueError(
                "ensemble='hyperbatch' tunes its hyperparameters on validation cells, and "
                "this training has none: use train_size < 1 (e.g. the default 0.9)."
            )
        return loader

    def _record(self, nll: float | None) -> None:
        self.trajectory.append(
            bounds_record(self.module.hyper, self._train_steps, self.current_epoch, nll)
        )

    def on_train_start(self) -> None:
        super().on_train_start()
        self.module.l2_scale = 1.0 / max(int(self.n_obs_training or 1), 1)
        self._tune_opt = torch.optim.Adam(self.module.hyper_parameters(), lr=self.tune_lr)
        self._val_loader()  # fail before the first step when there is no validation split
        if not self.trajectory:
            self._record(None)

    def _next_val_batch(self) -> dict:
        if self._val_iter is None:
            self._val_iter = iter(self._val_loader())
        try:
            batch = next(self._val_iter)
        except StopIteration:
            self._val_iter = iter(self._val_loader())
            batch = next(self._val_iter)
        device = self.module.device
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def tune_step(self) -> float:
        """One update of the bounds on a validation minibatch; returns its NLL per cell."""
        params = self.module.hyper_parameters()
        with torch.enable_grad():
            loss, nll = self.module.tune_loss(self._next_val_batch(), tau=self.tau)
            grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self._tune_opt.step()
        self._tune_opt.zero_grad(set_to_none=True)
        self.module.hyper.clip_()
        return float(nll.detach())

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self._train_steps += 1
        if self._train_steps % self.tune_every == 0:
            nll = self.tune_step()
            self._record(nll)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        low, high = (t.detach().cpu() for t in self.module.hyper.bounds())
        for j, name in enumerate(self.module.hyper.names):
            for k in range(self.module.n_members):
                for side, t in (("low", low), ("high", high)):
                    self.log(f"hyper_{name}_{side}_m{k}", float(t[k, j]), on_epoch=True,
                             on_step=False)  # fmt: skip
        nlls = [r["nll"] for r in self.trajectory if r["nll"] is not None and
                r["epoch"] == self.current_epoch]  # fmt: skip
        if nlls:
            self.log("tune_nll", sum(nlls) / len(nlls), on_epoch=True, on_step=False)
