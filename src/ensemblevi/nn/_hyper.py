"""Hyper-BatchEnsemble: per-member hyperparameter distributions and the layers they condition.

Written by hand (Wenzel, Snoek, Tran & Jenatton 2020; ``../shared/docs/ensembles.md``
section 3): neither PyTorch nor scvi-tools has self-tuning or Hyper-BatchEnsemble layers.

Each member ``k`` holds, for each hyperparameter ``j``, a log-uniform distribution on
``[a_kj, b_kj]`` with trainable ``log a`` and ``log b`` (:class:`LogUniformHyperparameters`).
A layer sees the hyperparameters through their normalised logs
``l = (log lambda - log lo) / (log hi - log lo)`` in ``[0, 1]`` (``lo, hi``: the allowed
range), mapped by a bias-free linear embedding ``e(l)`` to two per-output vectors:

``y = s_k * (W^T (r_k * x)) + e1(l) * s_k * (W'^T (r_k * x)) + b_k + e2(l) * b'_k``

(the reference ties ``u_k = r_k``, ``v_k = s_k``, so both kernels run in one matmul). The
embedding starts near zero, so an untrained HBE layer is a BatchEnsemble layer. A *tied*
layer (``tied=True``) also sets ``W' = W``, so the hyper term becomes a per-output scaling,
``y = s_k * (1 + e1(l)) * (W^T (r_k * x)) + b_k + e2(l) * b'_k``: BE's cost and parameters
plus an element-wise product, used where the doubled kernel costs most (scVI's
n_hidden -> genes likelihood heads; measured in ``docs/benchmarks.md``).

The layers read ``l`` from :func:`set_hyperparameters`, called by the module before each
forward pass with ``(K, B, J)`` (one draw per member and example: training) or
``(K, 1, J)`` (each member's mean: prediction), so the encoder/decoder blocks keep the
signatures of the other ensemble kinds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import (
    EnsembleModule,
    _init_uniform_,
    _LinearBase,
    fast_weight_init_,
    split_members,
)


@dataclass(frozen=True)
class Hyperparameter:
    """One tunable hyperparameter: its allowed range and where its interval starts.

    Parameters
    ----------
    name
        e.g. ``"dropout"``, ``"kl_weight"``, ``"l2_encoder"``.
    low, high
        Allowed range (``0 < low < high``); the bounds are clipped into it.
    init
        Centre of the initial intervals (default: the mean of the log-uniform over the
        whole range, as the reference does).
    init_width
        Half-width of the initial interval on the log scale (reference: 0.2).
    """

    name: str
    low: float
    high: float
    init: float | None = None
    init_width: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(
                f"Hyperparameter {self.name!r}: need 0 < low < high, got [{self.low}, {self.high}]."
            )
        if self.init is not None and not self.low <= self.init <= self.high:
            raise ValueError(
                f"Hyperparameter {self.name!r}: init {self.init} is outside "
                f"[{self.low}, {self.high}]."
            )
        if self.init_width <= 0:
            raise ValueError(f"Hyperparameter {self.name!r}: init_width must be > 0.")

    @property
    def centre(self) -> float:
        if self.init is not None:
            return self.init
        return (self.high - self.low) / math.log(self.high / self.low)


class LogUniformHyperparameters(nn.Module):
    """Per-member log-uniform distributions over J hyperparameters, tuned by gradient.

    Parameters ``log_low``, ``log_high`` are ``(K, J)``. Sampling is reparameterised,
    ``lambda = exp(log a + u (log b - log a))`` with ``u ~ U(0, 1)``, so a loss of the
    sampled values has gradients with respect to both bounds.

    Parameters
    ----------
    n_members
        K.
    hyperparameters
        The J :class:`Hyperparameter` specifications.
    init_std
        Std of the random jitter of each member's initial centre on the log scale, so the
        members start from different intervals.
    gap
        Smallest ``log b - log a`` kept by :meth:`clip_` (entropy and mean are singular when
        the interval closes).
    """

    def __init__(
        self,
        n_members: int,
        hyperparameters: Sequence[Hyperparameter],
        init_std: float = 0.1,
        gap: float = 1e-3,
    ):
        super().__init__()
        if not hyperparameters:
            raise ValueError("Pass at least one Hyperparameter to tune.")
        names = [h.name for h in hyperparameters]
        if len(set(names)) != len(names):
            raise ValueError(f"Hyperparameter names must be unique, got {names}.")
        if gap <= 0:
            raise ValueError(f"gap must be > 0, got {gap}.")
        self.specs = tuple(hyperparameters)
        self.names = tuple(names)
        self.n_members = n_members
        self.gap = gap
        lo = torch.tensor([math.log(h.low) for h in self.specs], dtype=torch.float32)
        hi = torch.tensor([math.log(h.high) for h in self.specs], dtype=torch.float32)
        self.register_buffer("range_low", lo)
        self.register_buffer("range_high", hi)
        centre = torch.tensor([math.log(h.centre) for h in self.specs])
        width = torch.tensor([h.init_width for h in self.specs])
        c = centre + init_std * torch.randn(n_members, len(self.specs))
        self.log_low = nn.Parameter((c - width).float())
        self.log_high = nn.Parameter((c + width).float())
        self.clip_()

    @property
    def n_hyper(self) -> int:
        return len(self.specs)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"No hyperparameter {name!r}; tuned: {list(self.names)}.") from None

    @torch.no_grad()
    def clip_(self) -> None:
        """Clip the bounds into the allowed range keeping ``log b - log a >= gap``."""
        lo, hi = self.range_low, self.range_high
        a = torch.minimum(torch.maximum(self.log_low, lo), hi - self.gap)
        b = torch.minimum(torch.maximum(self.log_high, a + self.gap), hi)
        self.log_low.copy_(a)
        self.log_high.copy_(b)

    def sample(self, n: int) -> torch.Tensor:
        """``(K, n, J)`` values, ``n`` reparameterised draws per member."""
        u = torch.rand(self.n_members, n, self.n_hyper, device=self.log_low.device)
        a, b = self.log_low.unsqueeze(1), self.log_high.unsqueeze(1)
        return torch.exp(a + u * (b - a))

    def mean(self) -> torch.Tensor:
        """``(K, J)`` means of the log-uniforms, ``(b - a) / (log b - log a)``."""
        a, b = self.log_low, self.log_high
        return (b.exp() - a.exp()) / (b - a)

    def entropy(self) -> torch.Tensor:
        """``(K, J)`` differential entropies, ``(log a + log b) / 2 + log(log b - log a)``."""
        a, b = self.log_low, self.log_high
        return (a + b) / 2 + torch.log(b - a)

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        """Normalised logs ``(log lambda - log lo) / (log hi - log lo)``, in [0, 1] in range."""
        return (values.log() - self.range_low) / (self.range_high - self.range_low)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` of each member's interval, ``(K, J)`` each (not log)."""
        return self.log_low.exp(), self.log_high.exp()


def set_hyperparameters(module: nn.Module, normalised: torch.Tensor | None) -> None:
    """Give every hyper layer in ``module`` the normalised hyperparameters ``(K, B|1, J)``."""
    for m in module.modules():
        if isinstance(m, _HyperMixin):
            m.hyper = normalised


class _HyperMixin:
    """The embedding ``e(l)`` and the normalised hyperparameters a forward pass reads."""

    hyper: torch.Tensor | None
    embedding: nn.Linear

    def _init_embedding(self, n_hyper: int, n_out: int, init_std: float) -> None:
        self.hyper = None
        self.embedding = nn.Linear(n_hyper, 2 * n_out, bias=False)
        nn.init.normal_(self.embedding.weight, 0.0, init_std)

    def _embed(self, member: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hyper is None:
            raise RuntimeError(
                f"{type(self).__name__} needs hyperparameters: call "
                "ensemblevi.nn.set_hyperparameters(module, l) before the forward pass."
            )
        h = self.hyper if member is None else self.hyper[member]
        return self.embedding(h.to(self.embedding.weight.dtype)).chunk(2, dim=-1)

    def _e1_weight(self) -> torch.Tensor:
        """The rows of the embedding that give ``e1`` (``(d_out, J)``; see :meth:`_embed`)."""
        return self.embedding.weight[: self.embedding.out_features // 2]


class HyperBatchEnsembleLinear(_HyperMixin, _LinearBase):
    """Hyper-BatchEnsemble dense layer (see the module docstring for the formula).

    Shared: ``weight`` W and ``weight_hyper`` W' (``(d_in, d_out)``) and the embedding; per
    member (fast): ``r``, ``s``, ``bias`` b and ``bias_hyper`` b'. The embedding is a shared
    network weight; the fast weights get the fast learning rate and no weight decay.
    """

    def __init__(
        self,
        n_members: int,
        in_features: int,
        out_features: int,
        n_hyper: int,
        bias: bool = True,
        random_sign_init: float = -0.5,
        embedding_init_std: float = 1e-4,
        tied: bool = False,
    ):
        super().__init__(n_members, in_features, out_features)
        self.tied = bool(tied)
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight_hyper = (
            None if self.tied else nn.Parameter(torch.empty(in_features, out_features))
        )
        self.r = nn.Parameter(torch.empty(n_members, in_features))
        self.s = nn.Parameter(torch.empty(n_members, out_features))
        self.bias = nn.Parameter(torch.zeros(n_members, out_features)) if bias else None
        self.bias_hyper = nn.Parameter(torch.zeros(n_members, out_features)) if bias else None
        self.random_sign_init = random_sign_init
        self._init_embedding(n_hyper, out_features, embedding_init_std)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_uniform_(self.weight, self.in_features)
        if self.weight_hyper is not None:
            _init_uniform_(self.weight_hyper, self.in_features)
        fast_weight_init_(self.r, self.random_sign_init)
        fast_weight_init_(self.s, self.random_sign_init)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
            # b' starts like a Linear bias: with b' = 0, e2 would get no gradient at all
            _init_uniform_(self.bias_hyper, self.in_features)

    def fast_parameters(self) -> Iterator[nn.Parameter]:
        yield self.r
        yield self.s
        if self.bias is not None:
            yield self.bias
            yield self.bias_hyper

    def kernels(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(W, W')`` with the output axis last, for :func:`hyper_l2_penalty`."""
        return [(self.weight, self.weight if self.tied else self.weight_hyper)]

    def _kernel(self) -> torch.Tensor:
        return self.weight if self.tied else torch.cat([self.weight, self.weight_hyper], dim=1)

    def _combine(self, both, s, b, bh, e1, e2):
        if self.tied:
            out = s * both * (1 + e1)
        else:
            main, hyper = both.split(self.out_features, dim=-1)
            out = s * (main + e1 * hyper)
        return out if b is None else out + b + e2 * bh

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        e1, e2 = self._embed()  # (K, B|1, d_out)
        both = torch.matmul(x * self.r.unsqueeze(-2), self._kernel())
        b = None if self.bias is None else self.bias.unsqueeze(-2)
        bh = None if self.bias_hyper is None else self.bias_hyper.unsqueeze(-2)
        return self._combine(both, self.s.unsqueeze(-2), b, bh, e1, e2)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        e1, e2 = self._embed(k)
        both = torch.matmul(x * self.r[k], self._kernel())
        b = None if self.bias is None else self.bias[k]
        bh = None if self.bias_hyper is None else self.bias_hyper[k]
        return self._combine(both, self.s[k], b, bh, e1, e2)


def hyper_l2_penalty(layer: nn.Module, strength: torch.Tensor) -> torch.Tensor:
    """``mean_(k,i) lambda_ki ||W + W' diag(e1(l_ki))||^2`` of one HBE layer, cheaply.

    ``strength`` is the L2 strength ``(K, B|1)`` of the layer's group, matching the layer's
    current hyperparameters. The square is expanded,
    ``||W||^2 + 2 sum_o e_o <W_o, W'_o> + sum_o e_o^2 ||W'_o||^2`` (``o``: output unit), and
    since the embedding is linear and bias-free (``e1 = E1 l``), the batch means it needs
    are ``mean lambda``, ``E1 mean(lambda l)`` and ``diag(E1 mean(lambda l l^T) E1^T)``:
    O(d_out J^2) instead of one ``(K, B, d_out)`` embedding (or, as in the reference, one
    matrix per example).
    """
    if layer.hyper is None:
        raise RuntimeError("hyper_l2_penalty needs the layer's hyperparameters set.")
    e1_weight = layer._e1_weight()  # (d_out, J)
    h = layer.hyper.to(e1_weight.dtype)  # (K, B|1, J)
    lam, h = torch.broadcast_tensors(strength.to(h.dtype).unsqueeze(-1), h)
    n = lam.shape[0] * lam.shape[1]
    mean_l = (lam * h).sum((0, 1)) / n  # (J,)
    mean_ll = torch.einsum("kni,knj->ij", lam * h, h) / n  # (J, J)
    lam_e = e1_weight @ mean_l  # mean of lambda * e1, (d_out,)
    lam_e2 = ((e1_weight @ mean_ll) * e1_weight).sum(1)  # mean of lambda * e1^2
    total = strength.new_zeros((), dtype=h.dtype)
    for w, wh in layer.kernels():
        o = -1 if isinstance(layer, HyperBatchEnsembleLinear) else 0
        w, wh = w.movedim(o, 0).flatten(1), wh.movedim(o, 0).flatten(1)  # (d_out, rest)
        sq, cross, sq_h = w.square().sum(), (w * wh).sum(1), wh.square().sum(1)
        total = total + strength.mean() * sq + 2 * (lam_e * cross).sum() + (lam_e2 * sq_h).sum()
    return total


class HyperDropout(EnsembleModule):
    """Dropout whose rate is a tuned hyperparameter: one rate per member and example.

    The module sets ``rate`` (``(K, B|1, 1)``) before each pass (see
    :class:`~ensemblevi.module.EnsembleVAE`); in training mode each example of each member
    gets a Bernoulli mask with its own rate (inverted scaling ``1 / (1 - p)``), in evaluation
    mode (prediction and the tune step) dropout is off, as in the reference.
    """

    def __init__(self, n_members: int):
        super().__init__(n_members)
        self.rate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.rate is None:
            raise RuntimeError("HyperDropout needs its rate set before a training pass.")
        p = self.rate if self.active_member is None else self.rate[self._check_member()]
        p = p.to(x.dtype).detach()  # the rate is tuned through the embedding, not the mask
        keep = torch.rand_like(x) >= p
        return x * keep / (1 - p)


# ---------------------------------------------------------------- convolutions
class _ConvBase(EnsembleModule):
    """Convolutions with a member axis on images laid out ``(K*B, C, H, W)`` member-major.

    A shared input ``(B, C, H, W)`` (the same images for every member) is passed with
    ``shared_input=True``. ``transpose=True`` makes it a transposed convolution.
    """

    transpose: bool = False

    def __init__(
        self,
        n_members: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
    ):
        super().__init__(n_members)
        if output_padding and not self.transpose:
            raise ValueError("output_padding is for transposed convolutions only.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.output_padding = output_padding

    @property
    def fan_in(self) -> int:
        # torch's convention, which for transposed convs counts the output channels
        channels = self.out_channels if self.transpose else self.in_channels
        return channels * self.kernel_size**2

    def _kernel_shape(self, n_in: int, n_out: int) -> tuple[int, ...]:
        k = self.kernel_size
        return (n_in, n_out, k, k) if self.transpose else (n_out, n_in, k, k)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
        if self.transpose:
            return F.conv_transpose2d(
                x, weight, None, self.stride, self.padding, self.output_padding, groups
            )
        return F.conv2d(x, weight, None, self.stride, self.padding, 1, groups)

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"Expected images (N, C, H, W), got shape {tuple(x.shape)}.")
        if self.active_member is not None:
            return self._single(x, self._check_member())
        if shared_input:
            x = x.unsqueeze(0).expand(self.n_members, *x.shape).reshape(-1, *x.shape[1:])
        else:
            split_members(x, self.n_members)  # fails clearly on a bad batch size
        return self._members(x)

    def extra_repr(self) -> str:
        return (
            f"n_members={self.n_members}, {self.in_channels}->{self.out_channels}, "
            f"kernel={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        )


def _per_row(v: torch.Tensor, n: int) -> torch.Tensor:
    """``(K, C)`` per-member channel vector to ``(K*B, C, 1, 1)`` rows (B = n / K)."""
    k = v.shape[0]
    return v.repeat_interleave(n // k, dim=0)[:, :, None, None]


class EnsembleConv2d(_ConvBase):
    """K independent convolutions (deep ensemble), run as one grouped convolution."""

    def __init__(self, n_members, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, bias: bool = True):  # fmt: skip
        super().__init__(
            n_members, in_channels, out_channels, kernel_size, stride, padding, output_padding
        )
        self.weight = nn.Parameter(
            torch.empty(n_members, *self._kernel_shape(in_channels, out_channels))
        )
        self.bias = nn.Parameter(torch.empty(n_members, out_channels)) if bias else None
        _init_uniform_(self.weight, self.fan_in)
        if self.bias is not None:
            _init_uniform_(self.bias, self.fan_in)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        k = self.n_members
        b = x.shape[0] // k
        grouped = x.reshape(k, b, *x.shape[1:]).transpose(0, 1).reshape(b, -1, *x.shape[2:])
        out = self._conv(grouped, self.weight.flatten(0, 1), groups=k)
        out = out.reshape(b, k, self.out_channels, *out.shape[2:]).transpose(0, 1)
        out = out.reshape(k * b, *out.shape[2:])
        return out if self.bias is None else out + _per_row(self.bias, out.shape[0])

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = self._conv(x, self.weight[k])
        return out if self.bias is None else out + self.bias[k][:, None, None]


class EnsembleConvTranspose2d(EnsembleConv2d):
    """K independent transposed convolutions (deep ensemble)."""

    transpose = True


class BatchEnsembleConv2d(_ConvBase):
    """BatchEnsemble convolution: a shared kernel; ``r_k`` scales input channels, ``s_k`` and
    ``b_k`` output channels, broadcast over space (Wen et al. 2020)."""

    def __init__(self, n_members, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, bias: bool = True, random_sign_init: float = -0.5):  # fmt: skip
        super().__init__(
            n_members, in_channels, out_channels, kernel_size, stride, padding, output_padding
        )
        self.weight = nn.Parameter(torch.empty(self._kernel_shape(in_channels, out_channels)))
        self.r = nn.Parameter(torch.empty(n_members, in_channels))
        self.s = nn.Parameter(torch.empty(n_members, out_channels))
        self.bias = nn.Parameter(torch.zeros(n_members, out_channels)) if bias else None
        _init_uniform_(self.weight, self.fan_in)
        fast_weight_init_(self.r, random_sign_init)
        fast_weight_init_(self.s, random_sign_init)

    def fast_parameters(self) -> Iterator[nn.Parameter]:
        yield self.r
        yield self.s
        if self.bias is not None:
            yield self.bias

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = self._conv(x * _per_row(self.r, n), self.weight) * _per_row(self.s, n)
        return out if self.bias is None else out + _per_row(self.bias, n)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = self._conv(x * self.r[k][:, None, None], self.weight) * self.s[k][:, None, None]
        return out if self.bias is None else out + self.bias[k][:, None, None]


class BatchEnsembleConvTranspose2d(BatchEnsembleConv2d):
    """BatchEnsemble transposed convolution."""

    transpose = True


class HyperBatchEnsembleConv2d(_HyperMixin, BatchEnsembleConv2d):
    """Hyper-BatchEnsemble convolution: BE plus ``e1(l) * s_k * conv(r_k * x, W') + e2(l) * b'_k``,
    with ``e1, e2`` per output channel."""

    def __init__(self, n_members, in_channels, out_channels, kernel_size, n_hyper: int,
                 stride=1, padding=0, output_padding=0, bias: bool = True,
                 random_sign_init: float = -0.5, embedding_init_std: float = 1e-4):  # fmt: skip
        super().__init__(
            n_members, in_channels, out_channels, kernel_size, stride, padding, output_padding,
            bias, random_sign_init,
        )  # fmt: skip
        self.weight_hyper = nn.Parameter(torch.empty_like(self.weight))
        _init_uniform_(self.weight_hyper, self.fan_in)
        self.bias_hyper = None
        if bias:
            self.bias_hyper = nn.Parameter(torch.empty(n_members, out_channels))
            _init_uniform_(self.bias_hyper, self.fan_in)
        self._init_embedding(n_hyper, out_channels, embedding_init_std)

    def fast_parameters(self) -> Iterator[nn.Parameter]:
        yield from super().fast_parameters()
        if self.bias_hyper is not None:
            yield self.bias_hyper

    def kernels(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # output channels on axis 0 (conv) or 1 (transposed): moved first by the caller
        o = 1 if self.transpose else 0
        return [(self.weight.movedim(o, 0), self.weight_hyper.movedim(o, 0))]

    def _both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.cat([self.weight, self.weight_hyper], dim=1 if self.transpose else 0)
        return self._conv(x, w).split(self.out_channels, dim=1)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        e1, e2 = self._embed()  # (K, B|1, C_out)
        e1 = e1.expand(self.n_members, n // self.n_members, -1).reshape(n, -1)[:, :, None, None]
        e2 = e2.expand(self.n_members, n // self.n_members, -1).reshape(n, -1)[:, :, None, None]
        main, hyper = self._both(x * _per_row(self.r, n))
        out = _per_row(self.s, n) * (main + e1 * hyper)
        if self.bias is None:
            return out
        return out + _per_row(self.bias, n) + e2 * _per_row(self.bias_hyper, n)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        e1, e2 = (e[:, :, None, None] for e in self._embed(k))  # (B|1, C_out, 1, 1)
        main, hyper = self._both(x * self.r[k][:, None, None])
        out = self.s[k][:, None, None] * (main + e1 * hyper)
        if self.bias is None:
            return out
        return out + self.bias[k][:, None, None] + e2 * self.bias_hyper[k][:, None, None]


class HyperBatchEnsembleConvTranspose2d(HyperBatchEnsembleConv2d):
    """Hyper-BatchEnsemble transposed convolution."""

    transpose = True


__all__ = [
    "BatchEnsembleConv2d",
    "BatchEnsembleConvTranspose2d",
    "EnsembleConv2d",
    "EnsembleConvTranspose2d",
    "HyperBatchEnsembleConv2d",
    "HyperBatchEnsembleConvTranspose2d",
    "HyperBatchEnsembleLinear",
    "HyperDropout",
    "Hyperparameter",
    "LogUniformHyperparameters",
    "hyper_l2_penalty",
    "set_hyperparameters",
]
