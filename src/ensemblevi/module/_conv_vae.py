"""A vanilla convolutional VAE with ensemble members: the science's first HBE check.

Encoder: two strided 3 x 3 convolutions (ReLU) and a dense layer to the mean and
log-variance of q(z | x); decoder: a dense layer and two strided transposed convolutions to
per-pixel logits of a Bernoulli (or continuous Bernoulli) likelihood. Every layer is an
ensemble layer of the chosen kind, laid out member-major ``(K*B, C, H, W)``; the same
images go to every member.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import ContinuousBernoulli, Normal, kl_divergence

from ensemblevi._constants import EnsembleKind, check_kind, logmeanexp
from ensemblevi.module._hyperparameters import (
    L2_GROUPS,
    HyperparameterHost,
    HyperparameterSpec,
)
from ensemblevi.nn import (
    BatchEnsembleConv2d,
    BatchEnsembleConvTranspose2d,
    EnsembleConv2d,
    EnsembleConvTranspose2d,
    EnsembleModule,
    HyperBatchEnsembleConv2d,
    HyperBatchEnsembleConvTranspose2d,
    HyperDropout,
    MemberDropout,
    hyper_l2_penalty,
    make_linear,
    set_hyperparameters,
)

LIKELIHOODS = ("bernoulli", "continuous_bernoulli")


def _conv(kind: str, k: int, c_in: int, c_out: int, transpose: bool, n_hyper: int, **kw):
    if kind == "hyperbatch":
        cls = HyperBatchEnsembleConvTranspose2d if transpose else HyperBatchEnsembleConv2d
        return cls(k, c_in, c_out, 3, n_hyper=n_hyper, **kw)
    if kind == "batch":
        cls = BatchEnsembleConvTranspose2d if transpose else BatchEnsembleConv2d
        return cls(k, c_in, c_out, 3, **kw)
    # deep and single: K independent kernels; mcdropout: one network (K = 1 weights)
    cls = EnsembleConvTranspose2d if transpose else EnsembleConv2d
    return cls(k, c_in, c_out, 3, **kw)


def _conv_baseline(dropout_rate: float) -> dict[str, float]:
    """Where the ConvVAE's HBE intervals start: its own dropout and the low end of every
    L2 range (mid-range L2 held it at the posterior-collapse plateau on digits)."""
    return {"dropout": dropout_rate, **{f"l2_{g}": 0.0 for g in L2_GROUPS}}


class EnsembleConvVAE(HyperparameterHost, nn.Module):
    """The network and its loss. ``ensemble`` as in :class:`~ensemblevi.module.EnsembleVAE`.

    Parameters
    ----------
    shape
        ``(height, width)`` of the images.
    n_members, ensemble
        K and the ensemble kind.
    n_latent, channels, n_hidden
        Latent size, the two convolutions' channels, and the dense layer width.
    likelihood
        ``bernoulli`` (binary images) or ``continuous_bernoulli`` (intensities in [0, 1]).
    dropout_rate
        Dropout after each hidden layer (MC dropout: kept on at prediction; HBE: tuned
        when ``dropout`` is among ``hyperparameters``).
    hyperparameters
        ``hyperbatch`` only; see :func:`~ensemblevi.module.resolve_hyperparameters`.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        n_members: int = 4,
        ensemble: EnsembleKind = "deep",
        n_latent: int = 8,
        channels: tuple[int, int] = (16, 32),
        n_hidden: int = 128,
        likelihood: str = "bernoulli",
        dropout_rate: float = 0.0,
        hyperparameters: HyperparameterSpec = None,
    ):
        super().__init__()
        check_kind(ensemble)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
        if ensemble == "single":
            n_members = 1
        self.n_members = int(n_members)
        self.ensemble = ensemble
        self.shape = tuple(shape)
        self.n_latent = n_latent
        self.likelihood = likelihood
        h, w = shape
        self.h4, self.w4 = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
        c1, c2 = channels
        self.c2 = c2
        mc = ensemble == "mcdropout"
        kind = "deep" if ensemble == "single" else ensemble
        k_w = 1 if mc else self.n_members  # MC dropout: one set of weights
        lin_kind = "deep" if mc else kind
        n_hyper = self._init_hyper(
            ensemble, self.n_members, hyperparameters, baseline=_conv_baseline(dropout_rate)
        )
        down = {"stride": 2, "padding": 1}
        up = {"stride": 2, "padding": 1, "output_padding": 1}
        self.enc1 = _conv(kind if not mc else "deep", k_w, 1, c1, False, n_hyper, **down)
        self.enc2 = _conv(kind if not mc else "deep", k_w, c1, c2, False, n_hyper, **down)
        flat = c2 * self.h4 * self.w4
        self.enc_dense = make_linear(lin_kind, k_w, flat, n_hidden, n_hyper=n_hyper)
        self.enc_head = make_linear(lin_kind, k_w, n_hidden, 2 * n_latent, n_hyper=n_hyper)
        self.dec_dense = make_linear(lin_kind, k_w, n_latent, n_hidden, n_hyper=n_hyper)
        self.dec_expand = make_linear(lin_kind, k_w, n_hidden, flat, n_hyper=n_hyper)
        self.dec1 = _conv(kind if not mc else "deep", k_w, c2, c1, True, n_hyper, **up)
        self.dec_head = _conv(kind if not mc else "deep", k_w, c1, 1, True, n_hyper, **up)
        tuned_dropout = self.hyper is not None and "dropout" in self.hyper.names
        self.dropout = (
            HyperDropout(self.n_members)
            if tuned_dropout
            else MemberDropout(self.n_members, dropout_rate, always_on=mc)
        )

    # ------------------------------------------------------------- helpers
    def fast_parameters(self) -> list[nn.Parameter]:
        return [
            p for m in self.modules() if isinstance(m, EnsembleModule) for p in m.fast_parameters()
        ]

    def network_parameters(self) -> list[nn.Parameter]:
        bounds = {id(p) for p in self.hyper_parameters()}
        return [p for p in self.parameters() if id(p) not in bounds]

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        k = self.n_members
        return self.dropout(x.reshape(k, x.shape[0] // k, -1)).reshape(x.shape)

    def _layer(self, layer: nn.Module, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Run a layer on member-major rows; MC dropout's single network sees all rows."""
        if self.ensemble == "mcdropout":
            if shared:
                x = x.repeat(self.n_members, *([1] * (x.dim() - 1)))
            layer.active_member = 0  # the one set of weights, applied to every row
            try:
                return layer(x)
            finally:
                layer.active_member = None
        return layer(x, shared_input=shared)

    # ------------------------------------------------------------ the model
    def encode(self, images: torch.Tensor) -> Normal:
        """q(z | x) of every member for ``(B, H, W)`` images: loc/scale ``(K, B, L)``."""
        b = images.shape[0]
        self._prepare_hyper(b)
        x = images.unsqueeze(1)
        h = self._drop(F.relu(self._layer(self.enc1, x, shared=True)))
        h = self._drop(F.relu(self._layer(self.enc2, h)))
        h = self._drop(F.relu(self._layer(self.enc_dense, h.flatten(1))))
        mu, logvar = self._layer(self.enc_head, h).chunk(2, dim=-1)
        k = self.n_members
        return Normal(mu.reshape(k, b, -1), torch.exp(0.5 * logvar).reshape(k, b, -1) + 1e-4)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits ``(S, K, B, H, W)`` for latent codes ``(S, K, B, L)``."""
        s, k, b, _ = z.shape
        # samples go next to the cells so that rows stay member-major: (K, S*B, L)
        rows = z.transpose(0, 1).reshape(k * s * b, -1)
        per_sample = s > 1 and self._lambda is not None and self._lambda.shape[1] > 1
        if per_sample:
            # per-cell lambda: repeat it for each sample, matching the rows
            lam = self._lambda.repeat(1, s, 1)
            set_hyperparameters(self, self.hyper.normalise(lam))
        h = self._drop_rows(F.relu(self._layer(self.dec_dense, rows)), s)
        h = self._drop_rows(F.relu(self._layer(self.dec_expand, h)), s)
        h = h.reshape(-1, self.c2, self.h4, self.w4)
        h = self._drop_rows(F.relu(self._layer(self.dec1, h)), s)
        logits = self._layer(self.dec_head, h)[:, 0, : self.shape[0], : self.shape[1]]
        if per_sample:
            set_hyperparameters(self, self.hyper.normalise(self._lambda))
        return logits.reshape(k, s, b, *self.shape).transpose(0, 1)

    def _drop_rows(self, x: torch.Tensor, s: int) -> torch.Tensor:
        if s == 1 or isinstance(self.dropout, MemberDropout):
            return self._drop(x)
        rate = self.dropout.rate
        self.dropout.rate = rate.repeat(1, s, 1) if rate.shape[1] > 1 else rate
        try:
            return self._drop(x)
        finally:
            self.dropout.rate = rate

    def log_lik(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)`` summed over pixels: ``(S, K, B)``."""
        x = images.expand_as(logits)
        if self.likelihood == "bernoulli":
            ll = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            ll = ContinuousBernoulli(logits=logits, validate_args=False).log_prob(x)
        return ll.flatten(-2).sum(-1)

    def elbo_terms(self, images: torch.Tensor, n_samples: int = 1):
        """``(rec, kl, z, qz)``: per-member reconstruction loss ``(S, K, B)`` and KL ``(K, B)``."""
        qz = self.encode(images)
        z = qz.rsample((n_samples,))
        rec = -self.log_lik(images, self.decode(z))
        kl = kl_divergence(qz, Normal(0.0, 1.0)).sum(-1)
        return rec, kl, z, qz

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Training loss: members' mean negative ELBO, summed (deep) or averaged (shared
        weights), with HBE's sampled KL weight and tuned L2 penalty in training mode."""
        rec, kl, _, _ = self.elbo_terms(images)
        beta = self._hyper_value("kl_weight") if self.training else None
        per = rec[0] + (kl if beta is None else beta * kl)
        per_member = per.mean(-1)
        loss = per_member.sum() if self.ensemble in ("deep", "single") else per_member.mean()
        if self.training and self.hyper is not None and self.l2_scale:
            for group, layers in self.l2_groups().items():
                strength = self._hyper_value(f"l2_{group}")
                if strength is not None:
                    for layer in layers:
                        loss = loss + self.l2_scale * hyper_l2_penalty(layer, strength)
        return loss

    def l2_groups(self) -> dict[str, list[nn.Module]]:
        return {
            "encoder": [self.enc1, self.enc2, self.enc_dense],
            "latent": [self.enc_head],
            "decoder": [self.dec_dense, self.dec_expand, self.dec1],
            "heads": [self.dec_head],
        }

    def tune_loss(
        self, images: torch.Tensor, tau: float = 1e-3
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble validation NLL (beta = 1, evaluation mode, sampled lambda) - tau x entropy."""
        was = self.training
        self.eval()
        self._sample_hyper = True
        try:
            rec, kl, _, _ = self.elbo_terms(images)
            nll = -logmeanexp(-(rec[0] + kl), 0).mean()
            loss = nll - tau * self.hyper.entropy().mean()
        finally:
            self._sample_hyper = False
            self.train(was)
        return loss, nll

    @torch.no_grad()
    def log_likelihood(self, images: torch.Tensor, n_samples: int = 100) -> torch.Tensor:
        """Importance-weighted bound of ``log p(x)`` per member, ``(K, B)``."""
        qz = self.encode(images)
        z = qz.sample((n_samples,))
        log_w = (
            self.log_lik(images, self.decode(z))
            + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - qz.log_prob(z).sum(-1)
        )
        return logmeanexp(log_w, 0)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
        """Members' pixel means ``(K, B, H, W)``, averaged over ``n_samples`` latent draws."""
        qz = self.encode(images)
        z = qz.sample((n_samples,)) if n_samples > 1 else qz.loc.unsqueeze(0)
        logits = self.decode(z)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(logits).mean(0)
        return ContinuousBernoulli(logits=logits, validate_args=False).mean.mean(0)
