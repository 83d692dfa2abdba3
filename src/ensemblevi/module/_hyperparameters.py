"""The hyperparameters Hyper-BatchEnsemble tunes in a VAE, and their defaults.

Only continuous hyperparameters that enter the training loss can be tuned this way
(Wenzel, Snoek, Tran & Jenatton 2020, NeurIPS, section 3): the encoder's dropout rate, the KL weight
``beta`` and an L2 strength per layer group. Latent size, depth, width and the likelihood
family cannot.

Defaults (ranges as in the HBE paper's MLP experiments and the reference's L2 scale). The
dropout interval starts at the model's own rate (``resolve_hyperparameters``' ``baseline``),
not mid-range: a network without dropout starts at the low end. The L2 intervals start
where the reference starts them (mid-range, 14.5) in :class:`EnsembleVAE`, and at the low
end (0.165) in the convolutional VAE; both measured (``docs/benchmarks.md``): on digits a
ConvVAE HBE started at 14.5 stayed at the posterior-collapse plateau and started at the low
end beat BatchEnsemble, while on PBMC 3k (seed 0) an scVI HBE started at the low end lost
1.3-2 nats per cell to BatchEnsemble where started mid-range it was 2.7 ahead (over three
seeds mid-range is 0.6 ahead on average, and behind on two of them).

============  ===============  ======================================================
name          range            initial interval (log scale +- 0.2 around)
============  ===============  ======================================================
dropout       [0.001, 0.9]     the model's ``dropout_rate`` (scVI 0.1; 0 -> 0.00165)
kl_weight     [0.1, 10]        1 (the ELBO)
l2_encoder    [0.1, 100]       14.5, the log-uniform mean of the range (ConvVAE: 0.165)
l2_latent     [0.1, 100]       same
l2_decoder    [0.1, 100]       same
l2_heads      [0.1, 100]       same
============  ===============  ======================================================

The L2 strengths are on the reference's scale: the penalty
``lambda * ||W + W' diag(e1(lambda))||^2`` is divided by the number of training cells.
Groups: ``encoder`` = the encoder's hidden layers, ``latent`` = the heads of q(z|x) (and
q(l|x)), ``decoder`` = the decoder's hidden layers, ``heads`` = the decoder's expression
and zero-inflation heads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from ensemblevi._constants import logmeanexp
from ensemblevi.nn._base import EnsembleModule
from ensemblevi.nn._hyperbatch import (
    HyperDropout,
    Hyperparameter,
    LogUniformHyperparameters,
    hyper_l2_penalty,
    set_hyperparameters,
)

L2_GROUPS = ("encoder", "latent", "decoder", "heads")  # keys of the modules' l2_groups()
DEFAULT_HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("dropout", 1e-3, 0.9, init=0.1),
    Hyperparameter("kl_weight", 0.1, 10.0, init=1.0),
    *(Hyperparameter(f"l2_{group}", 0.1, 100.0) for group in L2_GROUPS),
)
TUNABLE = tuple(h.name for h in DEFAULT_HYPERPARAMETERS)

HyperparameterSpec = (
    Sequence[str | Hyperparameter | Mapping] | Mapping[str, Mapping | Sequence[float]] | None
)


def _start_at(h: Hyperparameter, value: float) -> Hyperparameter:
    """``h`` with its initial interval centred on ``value``, kept inside the range (so that
    the members' jittered intervals are not clipped flat against a bound)."""
    margin = math.exp(h.init_width + 0.3)  # 0.3: 3 sd of the members' jitter (init_std 0.1)
    low, high = h.low * margin, h.high / margin
    return dataclasses.replace(h, init=min(max(float(value), low), high))


def resolve_hyperparameters(
    spec: HyperparameterSpec = None, baseline: Mapping[str, float] | None = None
) -> tuple[Hyperparameter, ...]:
    """Hyperparameters to tune from a user's specification.

    Parameters
    ----------
    spec
        ``None``: all defaults. A list of names takes those defaults; a list may also hold
        :class:`~ensemblevi.nn.Hyperparameter` objects or dicts of their fields. A mapping
        ``{name: {"low": .., "high": .., "init": ..}}`` or ``{name: (low, high[, init])}``
        overrides the named defaults' fields.
    baseline
        The model's untuned settings (e.g. ``{"dropout": 0.0}``): they centre the initial
        interval of a default whose ``init`` the user did not set, so that an HBE starts
        where the BatchEnsemble it extends is (a rate of 0 starts at the low end).
    """
    defaults = {h.name: h for h in DEFAULT_HYPERPARAMETERS}
    for name, value in (baseline or {}).items():
        if name in defaults:
            defaults[name] = _start_at(defaults[name], value)
    if spec is None:
        return tuple(defaults.values())
    if isinstance(spec, Mapping):
        items = []
        for name, value in spec.items():
            fields = (
                dict(value)
                if isinstance(value, Mapping)
                else dict(zip(("low", "high", "init"), value, strict=False))
            )
            items.append({"name": name, **fields})
        spec = items
    out = []
    for item in spec:
        if isinstance(item, Hyperparameter):
            h = item
        elif isinstance(item, str):
            if item not in defaults:
                raise ValueError(f"Cannot tune {item!r}: tunable hyperparameters are {TUNABLE}.")
            h = defaults[item]
        elif isinstance(item, Mapping):
            name = item.get("name")
            if name not in defaults:
                raise ValueError(f"Cannot tune {name!r}: tunable hyperparameters are {TUNABLE}.")
            base = defaults[name]
            fields = {
                "low": base.low,
                "high": base.high,
                "init": base.init,
                "init_width": base.init_width,
                **item,
            }
            if "init" not in item and ("low" in item or "high" in item):
                fields["init"] = None  # the new range's log-uniform mean
            h = Hyperparameter(**fields)
        else:
            raise TypeError(f"Cannot read a hyperparameter from {item!r}.")
        if h.name not in defaults:
            raise ValueError(f"Cannot tune {h.name!r}: tunable hyperparameters are {TUNABLE}.")
        if h.name == "dropout" and h.high >= 1:
            raise ValueError("The dropout range must stay below 1.")
        out.append(h)
    if not out:
        raise ValueError("Tune at least one hyperparameter.")
    if len({h.name for h in out}) != len(out):
        raise ValueError(f"Hyperparameters listed twice: {[h.name for h in out]}.")
    return tuple(out)


class HyperparameterHost:
    """What the ensemble modules (EnsembleVAE, the convolutional VAE) share: the loss
    reduction over members, the parameter groups, and Hyper-BatchEnsemble's pieces
    (choosing lambda for a pass, the tuned L2 penalty, the tune objective).

    The module sets ``hyper`` (a :class:`~ensemblevi.nn.LogUniformHyperparameters` or
    ``None``), ``_sample_hyper`` and ``_lambda`` in its ``__init__`` via :meth:`_init_hyper`,
    and defines :meth:`l2_groups` and :meth:`negative_elbo`.
    """

    hyper: LogUniformHyperparameters | None
    _lambda: torch.Tensor | None
    active_member: int | None = None
    ensemble: str
    n_members: int

    # ------------------------------------------------------ members and groups
    def reduce_members(self, per_member: torch.Tensor) -> torch.Tensor:
        """The training loss from each member's mean loss ``(K,)``: summed or averaged.

        A deep ensemble sums: every member then gets exactly the gradient it would get
        if it were trained alone. BatchEnsemble, Hyper-BatchEnsemble and MC dropout share
        weights, and the reference averages over the K*B rows.

        Parameters
        ----------
        per_member
            Each member's mean loss over the minibatch, ``(K,)``.
        """
        return per_member.sum() if self.ensemble in ("deep", "single") else per_member.mean()

    def fast_parameters(self) -> list[nn.Parameter]:
        """BatchEnsemble fast weights (and per-member biases): their own optimiser group."""
        return [
            p for m in self.modules() if isinstance(m, EnsembleModule) for p in m.fast_parameters()
        ]

    def network_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the hyperparameter bounds (the train step's)."""
        bounds = {id(p) for p in self.hyper_parameters()}
        return [p for p in self.parameters() if id(p) not in bounds]

    # ------------------------------------------------------- Hyper-BatchEnsemble
    def l2_groups(self) -> dict[str, list[nn.Module]]:
        """The HBE layers of each L2 group (keys: :data:`L2_GROUPS`)."""
        # a hook of the base class: each technique (subclass) defines it
        raise NotImplementedError(f"{type(self).__name__} does not define l2_groups()")

    def negative_elbo(self, batch) -> torch.Tensor:
        """Each member's per-example negative ELBO with ``beta = 1``, ``(K, B)``.

        Parameters
        ----------
        batch
            A minibatch, as the module's training loss takes it.
        """
        # a hook of the base class: each technique (subclass) defines it
        raise NotImplementedError(f"{type(self).__name__} does not define negative_elbo()")

    def hyper_l2(self) -> torch.Tensor:
        """The tuned L2 penalty of this pass (all members), divided by the training cells.

        Zero outside Hyper-BatchEnsemble, inside a single-member pass, and before the
        training loop has set ``l2_scale``.
        """
        total = torch.zeros((), device=next(self.parameters()).device)
        if self.hyper is None or self.active_member is not None or not self.l2_scale:
            return total
        for group, layers in self.l2_groups().items():
            strength = self._hyper_value(f"l2_{group}")
            if strength is None:
                continue
            for layer in layers:
                total = total + hyper_l2_penalty(layer, strength)
        return total * self.l2_scale

    def tune_loss(self, batch, tau: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
        """The tune step's objective on a validation minibatch: ``(loss, nll)``.

        ``nll = -mean_i log (1/K) sum_k exp(ELBO_k(x_i))`` with ``beta = 1`` and no
        regulariser, computed in evaluation mode (no dropout) with lambda drawn from each
        member's distribution; ``loss = nll - tau * mean entropy`` of the distributions.
        Only the bounds should be updated from it (the plan differentiates it with
        respect to :meth:`hyper_parameters` alone).

        Parameters
        ----------
        batch
            A validation minibatch.
        tau
            Entropy weight (reference: 1e-3).
        """
        if self.hyper is None:
            raise ValueError("tune_loss is for ensemble='hyperbatch'.")
        was_training = self.training
        self.eval()
        self._sample_hyper = True
        try:
            nll = -logmeanexp(-self.negative_elbo(batch), 0).mean()
            loss = nll - tau * self.hyper.entropy().mean()
        finally:
            self._sample_hyper = False
            self.train(was_training)
        return loss, nll

    def _init_hyper(
        self,
        ensemble: str,
        n_members: int,
        spec: HyperparameterSpec,
        baseline: Mapping[str, float] | None = None,
    ) -> int:
        """Build the distributions for ``hyperbatch``; returns J (0 for other kinds).

        Parameters
        ----------
        ensemble, n_members
            The module's kind and K.
        spec
            What to tune (see :func:`resolve_hyperparameters`).
        baseline
            See :func:`resolve_hyperparameters`.
        """
        if spec is not None and ensemble != "hyperbatch":
            raise ValueError("hyperparameters are tuned by ensemble='hyperbatch' only.")
        self.hyper = None
        self._sample_hyper = False  # the tune step samples lambda in evaluation mode
        self._lambda = None
        self.l2_scale = 0.0  # 1 / training examples, set by the training loop
        if ensemble != "hyperbatch":
            return 0
        self.hyper = LogUniformHyperparameters(n_members, resolve_hyperparameters(spec, baseline))
        return self.hyper.n_hyper

    def hyper_parameters(self) -> list[torch.nn.Parameter]:
        """The tuned bounds ``log a``, ``log b`` (updated by the tune step only)."""
        return [] if self.hyper is None else list(self.hyper.parameters())

    def _prepare_hyper(self, n: int) -> None:
        """Choose lambda for the coming pass and hand it to the layers.

        Parameters
        ----------
        n
            Examples in the pass.

        Training (and the tune step): one reparameterised draw per member and example,
        ``(K, n, J)``; prediction: each member's mean, ``(K, 1, J)``.
        """
        if self.hyper is None:
            return
        if self.training or self._sample_hyper:
            lam = self.hyper.sample(n)
        else:
            lam = self.hyper.mean().unsqueeze(1)
        self._lambda = lam
        set_hyperparameters(self, self.hyper.normalise(lam))
        if "dropout" in self.hyper.names:
            rate = lam[..., self.hyper.index("dropout")].unsqueeze(-1)
            for m in self.modules():
                if isinstance(m, HyperDropout):
                    m.rate = rate

    def _hyper_value(self, name: str) -> torch.Tensor | None:
        """This pass' ``(K, n|1)`` values of one tuned hyperparameter (``None``: not tuned);
        inside a single-member pass, that member's ``(n|1,)``.

        Parameters
        ----------
        name
            The hyperparameter.
        """
        if self.hyper is None or name not in self.hyper.names or self._lambda is None:
            return None
        lam = self._lambda[..., self.hyper.index(name)]
        return lam if self.active_member is None else lam[self.active_member]


def hyperparameter_table(hyper: LogUniformHyperparameters) -> pd.DataFrame:
    """``member, hyperparameter, low, high, mean`` of every member's interval.

    Parameters
    ----------
    hyper
        The tuned distributions.
    """
    with torch.no_grad():
        low, high = (t.cpu().numpy() for t in hyper.bounds())
        mean = hyper.mean().cpu().numpy()
    return pd.DataFrame(
        [
            (k, name, float(low[k, j]), float(high[k, j]), float(mean[k, j]))
            for k in range(hyper.n_members)
            for j, name in enumerate(hyper.names)
        ],
        columns=["member", "hyperparameter", "low", "high", "mean"],
    )


def bounds_record(hyper: LogUniformHyperparameters, step: int, epoch: int, nll) -> dict:
    """One point of the tuning trajectory: the bounds after a tune step.

    Parameters
    ----------
    hyper
        The tuned distributions.
    step, epoch
        Train steps done, and the epoch.
    nll
        The tune step's validation NLL per cell (``None`` for the initial bounds).
    """
    low, high = (t.detach().cpu().numpy() for t in hyper.bounds())
    return {"step": step, "epoch": epoch, "low": low, "high": high, "nll": nll}


def trajectory_frame(hyper: LogUniformHyperparameters, records: list[dict]) -> pd.DataFrame:
    """Long table of :func:`bounds_record` points: one row per record, member and name.

    Parameters
    ----------
    hyper
        The tuned distributions (for the names).
    records
        :func:`bounds_record` points.
    """
    return pd.DataFrame(
        [
            (
                r["step"],
                r["epoch"],
                k,
                name,
                float(r["low"][k, j]),
                float(r["high"][k, j]),
                r["nll"],
            )
            for r in records
            for k in range(hyper.n_members)
            for j, name in enumerate(hyper.names)
        ],
        columns=["step", "epoch", "member", "hyperparameter", "low", "high", "tune_nll"],
    )
