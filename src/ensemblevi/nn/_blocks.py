"""scVI's encoder and decoder built from ensemble layers.

They mirror ``scvi.nn.FCLayers``, ``scvi.nn.Encoder`` and ``scvi.nn.DecoderSCVI``
(one-hot covariates concatenated to the input of the first layer, and of every layer when
``inject_covariates``; Linear -> BatchNorm -> ReLU -> Dropout), with a member axis added.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ensemblevi._constants import ENSEMBLE_KINDS, EnsembleKind

from ._hyper import HyperBatchEnsembleLinear, HyperDropout
from ._layers import (
    MEMBER_AXIS,
    BatchEnsembleLinear,
    EnsembleBatchNorm,
    EnsembleLinear,
    MemberDropout,
    SharedLinear,
    member_draw,
)


def make_linear(
    kind: EnsembleKind,
    n_members: int,
    d_in: int,
    d_out: int,
    bias: bool = True,
    n_hyper: int = 0,
    tied: bool = False,
) -> nn.Module:
    """The linear layer of an ensemble kind (``n_hyper``: tuned hyperparameters, HBE only;
    ``tied``: an HBE layer with ``W' = W``, see :class:`HyperBatchEnsembleLinear`)."""
    if kind in ("deep", "single"):
        return EnsembleLinear(n_members, d_in, d_out, bias=bias)
    if kind == "batch":
        return BatchEnsembleLinear(n_members, d_in, d_out, bias=bias)
    if kind == "hyperbatch":
        if n_hyper < 1:
            raise ValueError("A hyperbatch layer needs n_hyper >= 1 tuned hyperparameters.")
        return HyperBatchEnsembleLinear(
            n_members, d_in, d_out, n_hyper=n_hyper, bias=bias, tied=tied
        )
    if kind == "mcdropout":
        return SharedLinear(n_members, d_in, d_out, bias=bias)
    raise ValueError(f"Unknown ensemble kind {kind!r}; use one of {ENSEMBLE_KINDS}.")


def _one_hots(cats: Sequence[torch.Tensor], n_cat_list: Sequence[int]) -> list[torch.Tensor]:
    return [
        F.one_hot(c.reshape(-1).long(), n).to(torch.float32)
        for c, n in zip(cats, n_cat_list, strict=True)
        if n > 1
    ]


def _concat(x: torch.Tensor, onehots: list[torch.Tensor]) -> torch.Tensor:
    """Append the (B, n_cov) covariates to x of shape (..., B, d), with or without members."""
    if not onehots:
        return x
    cov = torch.cat(onehots, dim=-1)
    return torch.cat([x, cov.to(x.dtype).expand(*x.shape[:-1], cov.shape[-1])], dim=-1)


class EnsembleFCLayers(nn.Module):
    """``scvi.nn.FCLayers`` with a member axis."""

    def __init__(
        self,
        kind: EnsembleKind,
        n_members: int,
        n_in: int,
        n_out: int,
        n_cat_list: Sequence[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
        mc_dropout: bool = False,
        n_hyper: int = 0,
        tuned_dropout: bool = False,
    ):
        super().__init__()
        self.n_cat_list = [n if n > 1 else 0 for n in (n_cat_list or [])]
        self.inject_covariates = inject_covariates
        n_cov = sum(self.n_cat_list)
        dims = [n_in] + [n_hidden] * (n_layers - 1) + [n_out]
        self.layers = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            inject = i == 0 or inject_covariates
            self.layers.append(
                nn.ModuleDict(
                    {
                        "linear": make_linear(
                            kind, n_members, d_in + n_cov * inject, d_out, n_hyper=n_hyper
                        ),
                        "bn": EnsembleBatchNorm(
                            n_members, d_out, n_param_members=1 if kind == "mcdropout" else None
                        )
                        if use_batch_norm
                        else nn.Identity(),
                        "ln": nn.LayerNorm(d_out, elementwise_affine=False)
                        if use_layer_norm
                        else nn.Identity(),
                        "dropout": HyperDropout(n_members)
                        if tuned_dropout
                        else MemberDropout(n_members, dropout_rate, always_on=mc_dropout),
                    }
                )
            )

    def forward(
        self, x: torch.Tensor, *cat_list: torch.Tensor, shared_input: bool = False
    ) -> torch.Tensor:
        onehots = _one_hots(cat_list, self.n_cat_list)
        for i, layer in enumerate(self.layers):
            if i == 0 or self.inject_covariates:
                x = _concat(x, onehots)
            x = layer["linear"](x, shared_input=shared_input and i == 0)
            x = layer["dropout"](F.relu(layer["ln"](layer["bn"](x))))
        return x


class EnsembleEncoder(nn.Module):
    """``scvi.nn.Encoder`` with a member axis: q(z | x) = N(mu_k(x), var_k(x)) per member."""

    def __init__(
        self,
        kind: EnsembleKind,
        n_members: int,
        n_input: int,
        n_output: int,
        n_cat_list: Sequence[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
        var_eps: float = 1e-4,
        mc_dropout: bool = False,
        n_hyper: int = 0,
        tuned_dropout: bool = False,
    ):
        super().__init__()
        self.n_output = n_output
        self.var_eps = var_eps
        self.n_members = n_members
        self.member_stream: tuple[int, int] | None = None  # see set_member_stream
        self.encoder = EnsembleFCLayers(
            kind,
            n_members,
            n_input,
            n_hidden,
            n_cat_list,
            n_layers,
            n_hidden,
            dropout_rate,
            use_batch_norm,
            use_layer_norm,
            inject_covariates,
            mc_dropout,
            n_hyper,
            tuned_dropout,
        )
        # Mean and log-variance heads fused into one matmul; Linear's init depends on the
        # fan-in only, so this initialises exactly like two separate heads.
        self.heads = make_linear(kind, n_members, n_hidden, 2 * n_output, n_hyper=n_hyper)

    def forward(
        self, x: torch.Tensor, *cat_list: torch.Tensor, shared_input: bool = True
    ) -> tuple[torch.distributions.Normal, torch.Tensor]:
        q = self.encoder(x, *cat_list, shared_input=shared_input)
        q_m, q_v = self.heads(q).split(self.n_output, dim=-1)
        q_v = torch.exp(q_v) + self.var_eps
        dist = torch.distributions.Normal(q_m, q_v.sqrt(), validate_args=False)
        if q_m.dim() < 3 or q_m.shape[MEMBER_AXIS] != self.n_members:
            return dist, dist.rsample()
        # reparameterised sample with the noise of this shard's slice of the ensemble
        eps = member_draw(
            q_m.shape,
            self.n_members,
            self.member_stream,
            lambda s: torch.randn(s, dtype=q_m.dtype, device=q_m.device),
        )
        return dist, q_m + dist.scale * eps


class EnsembleDecoderSCVI(nn.Module):
    """``scvi.nn.DecoderSCVI`` with a member axis: normalised expression and zero-inflation."""

    def __init__(
        self,
        kind: EnsembleKind,
        n_members: int,
        n_input: int,
        n_output: int,
        n_cat_list: Sequence[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
        dropout_rate: float = 0.0,
        mc_dropout: bool = False,
        n_hyper: int = 0,
        tied_heads: bool = False,
    ):
        super().__init__()
        self.n_output = n_output
        self.px_decoder = EnsembleFCLayers(
            kind,
            n_members,
            n_input,
            n_hidden,
            n_cat_list,
            n_layers,
            n_hidden,
            dropout_rate,
            use_batch_norm,
            use_layer_norm,
            inject_covariates,
            mc_dropout,
            n_hyper,
        )
        # Scale and zero-inflation logits heads fused into one matmul (same init as two).
        self.heads = make_linear(
            kind, n_members, n_hidden, 2 * n_output, n_hyper=n_hyper, tied=tied_heads
        )

    def forward(
        self, z: torch.Tensor, library: torch.Tensor, *cat_list: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        px = self.px_decoder(z, *cat_list)
        raw_scale, px_dropout = self.heads(px).split(self.n_output, dim=-1)
        px_scale = torch.softmax(raw_scale, dim=-1)
        if library.dim() < px_scale.dim() and library.shape[-2] == px_scale.shape[-2]:
            library = library.unsqueeze(MEMBER_AXIS)  # observed library: same for all members
        px_rate = torch.exp(library) * px_scale
        return px_scale, px_rate, px_dropout
