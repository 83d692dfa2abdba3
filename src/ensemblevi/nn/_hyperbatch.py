"""Hyper-BatchEnsemble: per-member hyperparameter distributions and the layers they condition.

Written by hand (Wenzel, Snoek, Tran & Jenatton 2020, "Hyperparameter ensembles for
robustness and uncertainty quantification", NeurIPS): neither PyTorch nor scvi-tools has
self-tuning or Hyper-BatchEnsemble layers.

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
from torch import nn

from ._base import EnsembleModule, LinearBase, init_uniform_, per_row
from ._batch import BatchEnsembleConv2d, FastWeights


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
        """Centre of the initial intervals (``init``, or the log-uniform mean of the range)."""
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
        """J, the number of tuned hyperparameters."""
        return len(self.specs)

    def index(self, name: str) -> int:
        """Position ``j`` of a hyperparameter on the last axis of draws and bounds.

        Parameters
        ----------
        name
            A tuned hyperparameter's name.
        """
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
        """``(K, n, J)`` values, ``n`` reparameterised draws per member.

        Parameters
        ----------
        n
            Draws per member (one per example of a minibatch).
        """
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
        """Normalised logs ``(log lambda - log lo) / (log hi - log lo)``, in [0, 1] in range.

        Parameters
        ----------
        values
            Hyperparameter values ``(..., J)``.
        """
        return (values.log() - self.range_low) / (self.range_high - self.range_low)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` of each member's interval, ``(K, J)`` each (not log)."""
        return self.log_low.exp(), self.log_high.exp()


def set_hyperparameters(module: nn.Module, normalised: torch.Tensor | None) -> None:
    """Give every hyper layer in ``module`` the normalised hyperparameters of the next pass.

    Parameters
    ----------
    module
        Any module holding Hyper-BatchEnsemble layers.
    normalised
        ``(K, B|1, J)`` normalised logs (see :meth:`LogUniformHyperparameters.normalise`),
        or ``None`` to clear them.
    """
    for m in module.modules():
        if isinstance(m, HyperEmbedding):
            m.hyper = normalised


class HyperEmbedding:
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

    def kernels(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(W, W')`` with the output units on axis 0, for :func:`hyper_l2_penalty`."""
        # a hook of the base class: each technique (subclass) defines it
        raise NotImplementedError(f"{type(self).__name__} does not define kernels()")


class HyperBatchEnsembleLinear(HyperEmbedding, FastWeights, LinearBase):
    """Hyper-BatchEnsemble dense layer (the formula is in this module's docstring).

    Shared: ``weight`` W and ``weight_hyper`` W' (``(d_in, d_out)``) and the embedding; per
    member (fast): ``r``, ``s``, ``bias`` b and ``bias_hyper`` b'. The embedding is a shared
    network weight; the fast weights get the fast learning rate and no weight decay.

    Parameters
    ----------
    n_members
        K.
    in_features, out_features
        ``d_in``, ``d_out``.
    n_hyper
        J, the hyperparameters the embedding reads.
    bias
        Whether each member has the biases ``b`` (0 at init) and ``b'`` (``torch.nn.Linear``'s
        init: with ``b' = 0``, ``e2`` would get no gradient at all).
    random_sign_init
        Init of ``r`` and ``s`` (see :func:`~ensemblevi.nn.fast_weight_init_`).
    embedding_init_std
        Std of the embedding's normal init (near 0: the layer starts as BatchEnsemble).
    tied
        ``W' = W`` (no second kernel; see the module docstring).

    Shape
    -----
    As :class:`~ensemblevi.nn.EnsembleLinear`; the hyperparameters set with
    :func:`set_hyperparameters` are ``(K, B|1, J)``.

    Reference
    ---------
    Wenzel, Snoek, Tran & Jenatton (2020), Hyperparameter ensembles for robustness and
    uncertainty quantification, NeurIPS.

    Examples
    --------
    >>> layer = HyperBatchEnsembleLinear(4, 10, 3, n_hyper=2)
    >>> set_hyperparameters(layer, torch.rand(4, 8, 2))
    >>> layer(torch.randn(8, 10), shared_input=True).shape
    torch.Size([4, 8, 3])
    """

    def __init__(
        self,
        n_members: int,
        in_features: int,
        out_features: int,
        *,
        n_hyper: int,
        bias: bool = True,
        random_sign_init: float = -0.5,
        embedding_init_std: float = 1e-4,
        tied: bool = False,
    ):
        super().__init__(n_members, in_features, out_features)
        self.tied = bool(tied)
        # draws in the order of the layer's first version, so seeded inits are unchanged
        self._init_embedding(n_hyper, out_features, embedding_init_std)
        self.weight = nn.Parameter(
            init_uniform_(torch.empty(in_features, out_features), in_features)
        )
        self.weight_hyper = None
        if not self.tied:
            w = torch.empty(in_features, out_features)
            self.weight_hyper = nn.Parameter(init_uniform_(w, in_features))
        self._init_fast(in_features, out_features, bias, random_sign_init)
        self.bias_hyper = None
        if bias:
            w = torch.empty(n_members, out_features)
            self.bias_hyper = nn.Parameter(init_uniform_(w, in_features))

    def fast_parameters(self) -> Iterator[nn.Parameter]:
        """``r``, ``s``, ``b`` and ``b'``."""
        yield from super().fast_parameters()
        if self.bias_hyper is not None:
            yield self.bias_hyper

    def kernels(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        w = self.weight.T
        return [(w, w if self.tied else self.weight_hyper.T)]

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


class HyperBatchEnsembleConv2d(HyperEmbedding, BatchEnsembleConv2d):
    """Hyper-BatchEnsemble convolution: BatchEnsemble plus
    ``e1(l) * s_k * conv(r_k * x, W') + e2(l) * b'_k``, with ``e1, e2`` per output channel.

    Parameters
    ----------
    n_members
        K.
    in_channels, out_channels, kernel_size, stride, padding, output_padding
        As in ``torch.nn.Conv2d`` (square kernels).
    n_hyper
        J, the hyperparameters the embedding reads.
    bias, random_sign_init, embedding_init_std
        As in :class:`HyperBatchEnsembleLinear`.

    Shape
    -----
    As :class:`~ensemblevi.nn.EnsembleConv2d`; hyperparameters ``(K, B|1, J)``.

    Reference
    ---------
    Wenzel, Snoek, Tran & Jenatton (2020), NeurIPS.

    Examples
    --------
    >>> conv = HyperBatchEnsembleConv2d(3, 1, 8, 3, n_hyper=2, stride=2, padding=1)
    >>> set_hyperparameters(conv, torch.rand(3, 5, 2))
    >>> conv(torch.randn(5, 1, 8, 8), shared_input=True).shape
    torch.Size([15, 8, 4, 4])
    """

    def __init__(
        self,
        n_members: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        n_hyper: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        bias: bool = True,
        random_sign_init: float = -0.5,
        embedding_init_std: float = 1e-4,
    ):
        super().__init__(
            n_members,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            bias=bias,
            random_sign_init=random_sign_init,
        )
        self.weight_hyper = nn.Parameter(init_uniform_(torch.empty_like(self.weight), self.fan_in))
        self.bias_hyper = None
        if bias:
            w = torch.empty(n_members, out_channels)
            self.bias_hyper = nn.Parameter(init_uniform_(w, self.fan_in))
        self._init_embedding(n_hyper, out_channels, embedding_init_std)

    def fast_parameters(self) -> Iterator[nn.Parameter]:
        """``r``, ``s``, ``b`` and ``b'``."""
        yield from super().fast_parameters()
        if self.bias_hyper is not None:
            yield self.bias_hyper

    def kernels(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        o = 1 if self.transpose else 0  # the output channels' axis
        return [(self.weight.movedim(o, 0), self.weight_hyper.movedim(o, 0))]

    def _both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.cat([self.weight, self.weight_hyper], dim=1 if self.transpose else 0)
        return self._conv(x, w).split(self.out_channels, dim=1)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        e1, e2 = self._embed()  # (K, B|1, C_out)
        e1 = e1.expand(self.n_members, n // self.n_members, -1).reshape(n, -1)[:, :, None, None]
        e2 = e2.expand(self.n_members, n // self.n_members, -1).reshape(n, -1)[:, :, None, None]
        main, hyper = self._both(x * per_row(self.r, n))
        out = per_row(self.s, n) * (main + e1 * hyper)
        if self.bias is None:
            return out
        return out + per_row(self.bias, n) + e2 * per_row(self.bias_hyper, n)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        e1, e2 = (e[:, :, None, None] for e in self._embed(k))  # (B|1, C_out, 1, 1)
        main, hyper = self._both(x * self.r[k][:, None, None])
        out = self.s[k][:, None, None] * (main + e1 * hyper)
        if self.bias is None:
            return out
        return out + self.bias[k][:, None, None] + e2 * self.bias_hyper[k][:, None, None]


class HyperBatchEnsembleConvTranspose2d(HyperBatchEnsembleConv2d):
    """Hyper-BatchEnsemble transposed convolution; arguments and shapes as
    :class:`HyperBatchEnsembleConv2d`, with ``torch.nn.ConvTranspose2d``'s
    ``output_padding``."""

    transpose = True


def hyper_l2_penalty(layer: HyperEmbedding, strength: torch.Tensor) -> torch.Tensor:
    """``mean_(k,i) lambda_ki ||W + W' diag(e1(l_ki))||^2`` of one HBE layer, cheaply.

    The square is expanded, ``||W||^2 + 2 sum_o e_o <W_o, W'_o> + sum_o e_o^2 ||W'_o||^2``
    (``o``: output unit), and since the embedding is linear and bias-free (``e1 = E1 l``),
    the batch means it needs are ``mean lambda``, ``E1 mean(lambda l)`` and
    ``diag(E1 mean(lambda l l^T) E1^T)``: O(d_out J^2) instead of one ``(K, B, d_out)``
    embedding (or, as in the reference, one matrix per example).

    Parameters
    ----------
    layer
        A Hyper-BatchEnsemble layer whose hyperparameters are set.
    strength
        The L2 strength ``(K, B|1)`` of the layer's group, matching the layer's current
        hyperparameters.
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
        w, wh = w.flatten(1), wh.flatten(1)  # (d_out, rest)
        sq, cross, sq_h = w.square().sum(), (w * wh).sum(1), wh.square().sum(1)
        total = total + strength.mean() * sq + 2 * (lam_e * cross).sum() + (lam_e2 * sq_h).sum()
    return total


class HyperDropout(EnsembleModule):
    """Dropout whose rate is a tuned hyperparameter: one rate per member and example.

    The module sets ``rate`` (``(K, B|1, 1)``) before each pass (see
    :class:`~ensemblevi.module.EnsembleVAE`); in training mode each example of each member
    gets a Bernoulli mask with its own rate (inverted scaling ``1 / (1 - p)``), in evaluation
    mode (prediction and the tune step) dropout is off, as in the reference.

    Parameters
    ----------
    n_members
        K.

    Shape
    -----
    - Input: ``(..., K, B, d)``, or one member's ``(..., B, d)``.
    - Output: same shape.

    Reference
    ---------
    Wenzel, Snoek, Tran & Jenatton (2020), NeurIPS.

    Examples
    --------
    >>> drop = HyperDropout(2)
    >>> drop.rate = torch.full((2, 1, 1), 0.3)
    >>> drop(torch.ones(2, 4, 5)).shape
    torch.Size([2, 4, 5])
    """

    def __init__(self, n_members: int):
        super().__init__(n_members)
        self.rate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop units of ``x`` at the set rates (training mode only).

        Parameters
        ----------
        x
            Activations, laid out as the rate is.
        """
        if not self.training:
            return x
        if self.rate is None:
            raise RuntimeError("HyperDropout needs its rate set before a training pass.")
        p = self.rate if self.active_member is None else self.rate[self.active_member]
        p = p.to(x.dtype).detach()  # the rate is tuned through the embedding, not the mask
        keep = torch.rand_like(x) >= p
        return x * keep / (1 - p)
