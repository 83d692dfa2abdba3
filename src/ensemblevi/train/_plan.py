"""scvi-tools' TrainingPlan with explicit optimiser parameter groups for ensemble fast weights."""

from __future__ import annotations

from collections.abc import Iterable

from scvi.train import TrainingPlan
from torch import nn


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

    def get_optimizer_creator(self):
        """scvi-tools' optimiser creator, fed with parameter groups instead of a flat list."""
        create = super().get_optimizer_creator()
        return lambda params: create(self.param_groups(params))
