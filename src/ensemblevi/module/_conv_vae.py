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
from ensemblevi.nn import MemberDropout
from ensemblevi.nn._base import LayerSpec
from ensemblevi.nn._blocks import make_conv, make_dropout, make_linear
from ensemblevi.nn._hyperbatch import set_hyperparameters

LIKELIHOODS = ("bernoulli", "continuous_bernoulli")


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
    random_sign_init
        BatchEnsemble fast-weight init, as in :class:`~ensemblevi.module.EnsembleVAE`.
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
        random_sign_init: float = -0.5,
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
        n_hyper = self._init_hyper(
            ensemble, self.n_members, hyperparameters, baseline=_conv_baseline(dropout_rate)
        )
        spec = LayerSpec(
            ensemble=ensemble,
            n_members=self.n_members,
            n_hyper=n_hyper,
            tuned_dropout=self.hyper is not None and "dropout" in self.hyper.names,
            random_sign_init=random_sign_init,
        )
        # MC dropout: one set of weights (a one-member deep network) under K masks
        w = LayerSpec(ensemble="deep", n_members=1) if spec.mc_dropout else spec
        down = {"kernel_size": 3, "stride": 2, "padding": 1}
        up = {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}
        self.enc1 = make_conv(spec=w, in_channels=1, out_channels=c1, **down)
        self.enc2 = make_conv(spec=w, in_channels=c1, out_channels=c2, **down)
        flat = c2 * self.h4 * self.w4
        self.enc_dense = make_linear(spec=w, d_in=flat, d_out=n_hidden)
        self.enc_head = make_linear(spec=w, d_in=n_hidden, d_out=2 * n_latent)
        self.dec_dense = make_linear(spec=w, d_in=n_latent, d_out=n_hidden)
        self.dec_expand = make_linear(spec=w, d_in=n_hidden, d_out=flat)
        self.dec1 = make_conv(spec=w, in_channels=c2, out_channels=c1, transpose=True, **up)
        self.dec_head = make_conv(spec=w, in_channels=c1, out_channels=1, transpose=True, **up)
        self.dropout = make_dropout(spec=spec, p=dropout_rate)

    # ------------------------------------------------------------- helpers
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
        """q(z | x) of every member for ``(B, H, W)`` images: loc/scale ``(K, B, L)``.

        Parameters
        ----------
        images
            ``(B, H, W)`` in [0, 1].
        """
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
        """Pixel logits ``(S, K, B, H, W)`` for latent codes ``(S, K, B, L)``.

        Parameters
        ----------
        z
            Latent codes ``(S, K, B, L)``.
        """
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
        """``log p(x | z)`` summed over pixels: ``(S, K, B)``.

        Parameters
        ----------
        images
            ``(B, H, W)``.
        logits
            Pixel logits ``(S, K, B, H, W)``.
        """
        x = images.expand_as(logits)
        if self.likelihood == "bernoulli":
            ll = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            ll = ContinuousBernoulli(logits=logits, validate_args=False).log_prob(x)
        return ll.flatten(-2).sum(-1)

    def elbo_terms(self, images: torch.Tensor, n_samples: int = 1):
        """``(rec, kl, z, qz)``: per-member reconstruction loss ``(S, K, B)`` and KL ``(K, B)``.

        Parameters
        ----------
        images
            ``(B, H, W)``.
        n_samples
            Latent draws S per member and image.
        """
        qz = self.encode(images)
        z = qz.rsample((n_samples,))
        rec = -self.log_lik(images, self.decode(z))
        kl = kl_divergence(qz, Normal(0.0, 1.0)).sum(-1)
        return rec, kl, z, qz

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Training loss: members' mean negative ELBO, reduced by :meth:`reduce_members`,
        with HBE's sampled KL weight and tuned L2 penalty in training mode.

        Parameters
        ----------
        images
            A minibatch ``(B, H, W)``.
        """
        rec, kl, _, _ = self.elbo_terms(images)
        beta = self._hyper_value("kl_weight") if self.training else None
        per = rec[0] + (kl if beta is None else beta * kl)
        loss = self.reduce_members(per.mean(-1))
        return loss + self.hyper_l2() if self.training else loss

    def negative_elbo(self, batch: torch.Tensor) -> torch.Tensor:
        """Each member's per-image negative ELBO with ``beta = 1``, ``(K, B)`` (tune step).

        Parameters
        ----------
        batch
            Images ``(B, H, W)``.
        """
        rec, kl, _, _ = self.elbo_terms(batch)
        return rec[0] + kl

    def l2_groups(self) -> dict[str, list[nn.Module]]:
        """The layers of each L2 group (all are HBE layers in ``hyperbatch``)."""
        return {
            "encoder": [self.enc1, self.enc2, self.enc_dense],
            "latent": [self.enc_head],
            "decoder": [self.dec_dense, self.dec_expand, self.dec1],
            "heads": [self.dec_head],
        }

    @torch.no_grad()
    def log_likelihood(self, images: torch.Tensor, n_samples: int = 100) -> torch.Tensor:
        """Importance-weighted bound of ``log p(x)`` per member, ``(K, B)``.

        Parameters
        ----------
        images
            ``(B, H, W)``.
        n_samples
            Importance samples per member and image.
        """
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
        """Members' pixel means ``(K, B, H, W)``, averaged over ``n_samples`` latent draws.

        Parameters
        ----------
        images
            ``(B, H, W)``.
        n_samples
            Latent draws (1: the posterior mean).
        """
        qz = self.encode(images)
        z = qz.sample((n_samples,)) if n_samples > 1 else qz.loc.unsqueeze(0)
        logits = self.decode(z)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(logits).mean(0)
        return ContinuousBernoulli(logits=logits, validate_args=False).mean.mean(0)
