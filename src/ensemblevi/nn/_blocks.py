"""scVI's encoder and decoder built from ensemble layers, and the layer factories.

They mirror ``scvi.nn.FCLayers``, ``scvi.nn.Encoder`` and ``scvi.nn.DecoderSCVI``
(one-hot covariates concatenated to the input of the first layer, and of every layer when
``inject_covariates``; Linear -> BatchNorm -> ReLU -> Dropout), with a member axis added.
Which ensemble layers they are made of is one :class:`~ensemblevi.nn.LayerSpec`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._base import MEMBER_AXIS, ConvBase, EnsembleModule, LayerSpec, member_draw
from ._batch import BatchEnsembleConv2d, BatchEnsembleConvTranspose2d, BatchEnsembleLinear
from ._deep import EnsembleConv2d, EnsembleConvTranspose2d, EnsembleLinear
from ._hyperbatch import (
    HyperBatchEnsembleConv2d,
    HyperBatchEnsembleConvTranspose2d,
    HyperBatchEnsembleLinear,
    HyperDropout,
)
from ._norm_dropout import EnsembleBatchNorm, MemberDropout, SharedLinear


def make_linear(*, spec: LayerSpec, d_in: int, d_out: int, bias: bool = True) -> nn.Module:
    """The linear layer of ``spec``'s ensemble kind.

    Parameters
    ----------
    spec
        The ensemble kind, members and per-kind options (``tied``, ``n_hyper``,
        ``random_sign_init``).
    d_in, d_out
        Features in and out.
    bias
        Whether the layer has biases.
    """
    k = spec.n_members
    if spec.ensemble in ("deep", "single"):
        return EnsembleLinear(k, d_in, d_out, bias=bias)
    if spec.ensemble == "batch":
        return BatchEnsembleLinear(
            k, d_in, d_out, bias=bias, random_sign_init=spec.random_sign_init
        )
    if spec.ensemble == "hyperbatch":
        return HyperBatchEnsembleLinear(
            k,
            d_in,
            d_out,
            n_hyper=spec.n_hyper,
            bias=bias,
            random_sign_init=spec.random_sign_init,
            tied=spec.tied,
        )
    return SharedLinear(k, d_in, d_out, bias=bias)  # mcdropout (LayerSpec checked the kind)


def make_conv(
    *,
    spec: LayerSpec,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    transpose: bool = False,
    **conv_kwargs: int | bool,
) -> ConvBase:
    """The (transposed) convolution of ``spec``'s ensemble kind.

    MC dropout has no shared convolution: pass a one-member ``deep`` spec for its one
    network.

    Parameters
    ----------
    spec
        The ensemble kind, members and per-kind options.
    in_channels, out_channels, kernel_size
        As in ``torch.nn.Conv2d``.
    transpose
        A transposed convolution.
    **conv_kwargs
        ``stride``, ``padding``, ``output_padding``, ``bias``.
    """
    k = spec.n_members
    if spec.ensemble == "hyperbatch":
        cls = HyperBatchEnsembleConvTranspose2d if transpose else HyperBatchEnsembleConv2d
        extra = {"n_hyper": spec.n_hyper, "random_sign_init": spec.random_sign_init}
    elif spec.ensemble == "batch":
        cls = BatchEnsembleConvTranspose2d if transpose else BatchEnsembleConv2d
        extra = {"random_sign_init": spec.random_sign_init}
    elif spec.ensemble in ("deep", "single"):
        cls, extra = EnsembleConvTranspose2d if transpose else EnsembleConv2d, {}
    else:
        raise ValueError("MC dropout convolutions are one network: use a one-member deep spec.")
    return cls(k, in_channels, out_channels, kernel_size, **extra, **conv_kwargs)


def make_dropout(*, spec: LayerSpec, p: float) -> EnsembleModule:
    """The dropout of ``spec``: tuned (HBE), kept on at prediction (MC dropout) or plain.

    Parameters
    ----------
    spec
        The ensemble kind and ``tuned_dropout``.
    p
        The fixed dropout rate (unused when the rate is tuned).
    """
    if spec.tuned_dropout:
        return HyperDropout(spec.n_members)
    return MemberDropout(spec.n_members, p, always_on=spec.mc_dropout)


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
    """``scvi.nn.FCLayers`` with a member axis.

    Parameters
    ----------
    spec
        The layers' ensemble kind and options (MC dropout: one shared batch norm).
    n_in, n_out
        Input and output features.
    n_cat_list
        Categories of each one-hot covariate (1 or fewer: not used).
    n_layers, n_hidden
        Depth and width.
    dropout_rate
        Fixed dropout after each layer (tuned instead with ``spec.tuned_dropout``).
    use_batch_norm, use_layer_norm
        Normalisation after each linear layer.
    inject_covariates
        Covariates enter every layer (else the first only).
    cat_role
        What the one-hot inputs are: ``"covariates"`` (batch, then categorical covariates)
        or ``"labels"`` (scANVI's label-conditioned layers); reference mapping extends each
        kind with its own categories.
    """

    def __init__(
        self,
        *,
        spec: LayerSpec,
        n_in: int,
        n_out: int,
        n_cat_list: Sequence[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
        cat_role: str = "covariates",
    ):
        super().__init__()
        if cat_role not in ("covariates", "labels"):
            raise ValueError(f"cat_role must be 'covariates' or 'labels', got {cat_role!r}.")
        self.cat_role = cat_role
        self.n_cat_list = [n if n > 1 else 0 for n in (n_cat_list or [])]
        self.inject_covariates = inject_covariates
        n_cov = sum(self.n_cat_list)
        dims = [n_in] + [n_hidden] * (n_layers - 1) + [n_out]
        bn_members = 1 if spec.mc_dropout else None
        self.layers = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            inject = i == 0 or inject_covariates
            bn = EnsembleBatchNorm(spec.n_members, d_out, n_param_members=bn_members)
            ln = nn.LayerNorm(d_out, elementwise_affine=False)
            layer = {
                "linear": make_linear(spec=spec, d_in=d_in + n_cov * inject, d_out=d_out),
                "bn": bn if use_batch_norm else nn.Identity(),
                "ln": ln if use_layer_norm else nn.Identity(),
                "dropout": make_dropout(spec=spec, p=dropout_rate),
            }
            self.layers.append(nn.ModuleDict(layer))

    def forward(
        self, x: torch.Tensor, *cat_list: torch.Tensor, shared_input: bool = False
    ) -> torch.Tensor:
        """Run the layers.

        Parameters
        ----------
        x
            ``(..., K, B, n_in)``, or ``(B, n_in)`` with ``shared_input``.
        *cat_list
            One ``(B, 1)`` category code tensor per covariate of ``n_cat_list``.
        shared_input
            ``x`` has no member axis.
        """
        onehots = _one_hots(cat_list, self.n_cat_list)
        for i, layer in enumerate(self.layers):
            if i == 0 or self.inject_covariates:
                x = _concat(x, onehots)
            x = layer["linear"](x, shared_input=shared_input and i == 0)
            x = layer["dropout"](F.relu(layer["ln"](layer["bn"](x))))
        return x


class EnsembleEncoder(nn.Module):
    """``scvi.nn.Encoder`` with a member axis: q(z | x) = N(mu_k(x), var_k(x)) per member.

    With ``distribution="ln"`` the latent is logistic normal, as in scvi-tools: ``q`` is the
    normal of the untransformed draw and the returned draw is its softmax.

    Parameters
    ----------
    spec
        The ensemble kind and options.
    n_input, n_output
        Input features and latent dimensions.
    n_cat_list, n_layers, n_hidden, dropout_rate, use_batch_norm, use_layer_norm,
    inject_covariates
        As in :class:`EnsembleFCLayers`.
    var_eps
        Added to the variance, as in scvi-tools.
    distribution
        ``"normal"`` or ``"ln"`` (logistic normal: the draws go through a softmax).
    var_activation
        Makes the variance head positive (``None``: ``torch.exp``, scvi-tools' default).
    cat_role
        As in :class:`EnsembleFCLayers`.
    """

    def __init__(
        self,
        *,
        spec: LayerSpec,
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
        distribution: str = "normal",
        var_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cat_role: str = "covariates",
    ):
        super().__init__()
        if distribution not in ("normal", "ln"):
            raise ValueError(
                f"latent_distribution must be 'normal' or 'ln' (logistic normal), got "
                f"{distribution!r}."
            )
        if var_activation is not None and not callable(var_activation):
            raise TypeError(
                "var_activation must be a callable mapping the variance head's output to "
                f"positive values (e.g. torch.nn.Softplus()), got {type(var_activation).__name__}."
            )
        self.n_output = n_output
        self.var_eps = var_eps
        self.distribution = distribution
        self.var_activation = torch.exp if var_activation is None else var_activation
        self.n_members = spec.n_members
        self.member_stream: tuple[int, int] | None = None  # see set_member_stream
        self.encoder = EnsembleFCLayers(
            spec=spec,
            n_in=n_input,
            n_out=n_hidden,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            inject_covariates=inject_covariates,
            cat_role=cat_role,
        )
        # Mean and log-variance heads fused into one matmul; Linear's init depends on the
        # fan-in only, so this initialises exactly like two separate heads.
        self.heads = make_linear(spec=spec, d_in=n_hidden, d_out=2 * n_output)

    def forward(
        self,
        x: torch.Tensor,
        *cat_list: torch.Tensor,
        shared_input: bool = True,
        transform: bool = True,
    ) -> tuple[torch.distributions.Normal, torch.Tensor]:
        """``(q(z | x), z)``: the posterior and one reparameterised draw.

        Parameters
        ----------
        x
            ``(B, n_input)`` (shared by the members), or with a member axis.
        *cat_list
            Covariate codes, as in :meth:`EnsembleFCLayers.forward`.
        shared_input
            ``x`` has no member axis (the default: counts enter every member).
        transform
            Return the draw through :meth:`z_transformation` (``False``: the draw of ``q``).
        """
        q = self.encoder(x, *cat_list, shared_input=shared_input)
        q_m, q_v = self.heads(q).split(self.n_output, dim=-1)
        q_v = self.var_activation(q_v) + self.var_eps
        dist = torch.distributions.Normal(q_m, q_v.sqrt(), validate_args=False)
        if q_m.dim() < 3 or q_m.shape[MEMBER_AXIS] != self.n_members:
            u = dist.rsample()
        else:
            # reparameterised sample with the noise of this shard's slice of the ensemble
            eps = member_draw(
                q_m.shape,
                self.n_members,
                self.member_stream,
                lambda s: torch.randn(s, dtype=q_m.dtype, device=q_m.device),
            )
            u = q_m + dist.scale * eps
        return dist, self.z_transformation(u) if transform else u

    def z_transformation(self, u: torch.Tensor) -> torch.Tensor:
        """The latent from an untransformed normal draw: the identity, or softmax for ``ln``.

        Parameters
        ----------
        u
            Draws of ``q``, latent dimensions last.
        """
        return torch.softmax(u, dim=-1) if self.distribution == "ln" else u


class EnsembleDecoderSCVI(nn.Module):
    """``scvi.nn.DecoderSCVI`` with a member axis: normalised expression and zero-inflation.

    Parameters
    ----------
    spec
        The ensemble kind and options (the decoder never tunes its dropout).
    n_input, n_output
        Latent (plus continuous covariate) dimensions and genes.
    n_cat_list, n_layers, n_hidden, use_batch_norm, use_layer_norm, inject_covariates,
    dropout_rate
        As in :class:`EnsembleFCLayers` (scVI's decoder has no dropout: 0 by default).
    tied_heads
        ``hyperbatch``: the likelihood heads are tied HBE layers (``W' = W``).
    scale_activation
        ``"softmax"`` (expression as fractions of the library) or ``"softplus"`` (used with
        a size factor as the library, as scvi-tools does).
    dispersion_head
        Also decode a per-cell dispersion (``dispersion="gene-cell"``): a third head, each
        member its own.
    """

    def __init__(
        self,
        *,
        spec: LayerSpec,
        n_input: int,
        n_output: int,
        n_cat_list: Sequence[int] | None = None,
        n_layers: int = 1,
        n_hidden: int = 128,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
        dropout_rate: float = 0.0,
        tied_heads: bool = False,
        scale_activation: str = "softmax",
        dispersion_head: bool = False,
    ):
        super().__init__()
        if scale_activation not in ("softmax", "softplus"):
            raise ValueError(
                f"scale_activation must be 'softmax' or 'softplus', got {scale_activation!r}."
            )
        self.n_output = n_output
        self.scale_activation = scale_activation
        self.dispersion_head = dispersion_head
        self.px_decoder = EnsembleFCLayers(
            spec=spec,
            n_in=n_input,
            n_out=n_hidden,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            inject_covariates=inject_covariates,
        )
        # Scale, zero-inflation logits (and dispersion) heads fused into one matmul (same
        # init as separate heads).
        head_spec = dataclasses.replace(spec, tied=tied_heads)
        n_heads = 3 if dispersion_head else 2
        self.heads = make_linear(spec=head_spec, d_in=n_hidden, d_out=n_heads * n_output)

    def forward(
        self, z: torch.Tensor, library: torch.Tensor, *cat_list: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(px_scale, px_rate, px_dropout, px_r)``, each ``(..., K, B, n_output)``.

        ``px_r`` is the log dispersion of ``dispersion_head`` (else ``None``).

        Parameters
        ----------
        z
            Latent draws ``(..., K, B, n_input)``.
        library
            Log library sizes: observed ``(..., B, 1)`` (the same for every member) or
            latent ``(..., K, B, 1)``.
        *cat_list
            Covariate codes, as in :meth:`EnsembleFCLayers.forward`.
        """
        px = self.px_decoder(z, *cat_list)
        raw_scale, px_dropout, *px_r = self.heads(px).split(self.n_output, dim=-1)
        if self.scale_activation == "softmax":
            px_scale = torch.softmax(raw_scale, dim=-1)
        else:
            px_scale = F.softplus(raw_scale)
        if library.dim() < px_scale.dim() and library.shape[-2] == px_scale.shape[-2]:
            library = library.unsqueeze(MEMBER_AXIS)  # observed library: same for all members
        px_rate = torch.exp(library) * px_scale
        return px_scale, px_rate, px_dropout, px_r[0] if px_r else None
