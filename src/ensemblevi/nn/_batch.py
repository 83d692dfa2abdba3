"""BatchEnsemble layers (Wen, Tran & Ba 2020): a shared kernel and per-member fast weights."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ._base import ConvBase, LinearBase, init_uniform_, per_row


def fast_weight_init_(t: torch.Tensor, random_sign_init: float) -> torch.Tensor:
    """BatchEnsemble fast-weight init, in place, with the reference's sign convention.

    Parameters
    ----------
    t
        The fast weights to fill (``r`` or ``s``).
    random_sign_init
        Negative: ``N(1, |value|)`` (the reference default is -0.5); positive ``p``: random
        signs, +1 with probability ``p``; 0: all ones.
    """
    with torch.no_grad():
        if random_sign_init < 0:
            return t.normal_(1.0, -random_sign_init)
        if random_sign_init > 0:
            return t.bernoulli_(random_sign_init).mul_(2).sub_(1)
        return t.fill_(1.0)


class FastWeights:
    """The per-member ``r`` (inputs), ``s`` (outputs) and bias of a BatchEnsemble layer."""

    r: nn.Parameter
    s: nn.Parameter
    bias: nn.Parameter | None

    def _init_fast(self, n_in: int, n_out: int, bias: bool, random_sign_init: float) -> None:
        k = self.n_members
        self.random_sign_init = float(random_sign_init)
        self.r = nn.Parameter(fast_weight_init_(torch.empty(k, n_in), random_sign_init))
        self.s = nn.Parameter(fast_weight_init_(torch.empty(k, n_out), random_sign_init))
        self.bias = nn.Parameter(torch.zeros(k, n_out)) if bias else None

    def fast_parameters(self) -> Iterator[nn.Parameter]:
        """``r``, ``s`` and the bias: the fast learning rate and no weight decay."""
        yield self.r
        yield self.s
        if self.bias is not None:
            yield self.bias


class BatchEnsembleLinear(FastWeights, LinearBase):
    """BatchEnsemble dense layer.

    ``y_k = s_k * (W^T (r_k * x)) + b_k``: a shared kernel ``W`` and per-member fast weights
    ``r_k`` (d_in), ``s_k`` (d_out) and bias ``b_k``, i.e. member weight ``W * (r_k s_k^T)``.
    The fast weights are returned by :meth:`fast_parameters` so the optimiser can give them
    their own learning rate and no weight decay.

    Parameters
    ----------
    n_members
        K.
    in_features, out_features
        ``d_in``, ``d_out``.
    bias
        Whether each member has a bias (initialised to 0).
    random_sign_init
        Init of ``r`` and ``s`` (see :func:`fast_weight_init_`).

    Shape
    -----
    As :class:`~ensemblevi.nn.EnsembleLinear`.

    Reference
    ---------
    Wen, Tran & Ba (2020), BatchEnsemble: an alternative approach to efficient ensemble
    and lifelong learning, ICLR.

    Examples
    --------
    >>> layer = BatchEnsembleLinear(4, 10, 3, random_sign_init=0.5)  # +-1 fast weights
    >>> layer(torch.randn(4, 8, 10)).shape
    torch.Size([4, 8, 3])
    """

    def __init__(
        self,
        n_members: int,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        random_sign_init: float = -0.5,
    ):
        super().__init__(n_members, in_features, out_features)
        self.weight = nn.Parameter(
            init_uniform_(torch.empty(in_features, out_features), in_features)
        )
        self._init_fast(in_features, out_features, bias, random_sign_init)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(x * self.r.unsqueeze(-2), self.weight) * self.s.unsqueeze(-2)
        return out if self.bias is None else out + self.bias.unsqueeze(-2)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = torch.matmul(x * self.r[k], self.weight) * self.s[k]
        return out if self.bias is None else out + self.bias[k]


class BatchEnsembleConv2d(FastWeights, ConvBase):
    """BatchEnsemble convolution: a shared kernel; ``r_k`` scales input channels, ``s_k``
    and ``b_k`` output channels, broadcast over space.

    Parameters
    ----------
    n_members
        K.
    in_channels, out_channels, kernel_size, stride, padding, output_padding
        As in ``torch.nn.Conv2d`` (square kernels).
    bias
        Whether each member has a bias (initialised to 0).
    random_sign_init
        Init of ``r`` and ``s`` (see :func:`fast_weight_init_`).

    Shape
    -----
    As :class:`~ensemblevi.nn.EnsembleConv2d`.

    Reference
    ---------
    Wen, Tran & Ba (2020), ICLR.

    Examples
    --------
    >>> conv = BatchEnsembleConv2d(3, 1, 8, 3, stride=2, padding=1)
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
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        bias: bool = True,
        random_sign_init: float = -0.5,
    ):
        super().__init__(
            n_members,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
        )
        self.weight = nn.Parameter(torch.empty(self._kernel_shape(in_channels, out_channels)))
        init_uniform_(self.weight, self.fan_in)
        self._init_fast(in_channels, out_channels, bias, random_sign_init)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = self._conv(x * per_row(self.r, n), self.weight) * per_row(self.s, n)
        return out if self.bias is None else out + per_row(self.bias, n)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = self._conv(x * self.r[k][:, None, None], self.weight) * self.s[k][:, None, None]
        return out if self.bias is None else out + self.bias[k][:, None, None]


class BatchEnsembleConvTranspose2d(BatchEnsembleConv2d):
    """BatchEnsemble transposed convolution; arguments and shapes as
    :class:`BatchEnsembleConv2d`, with ``torch.nn.ConvTranspose2d``'s ``output_padding``."""

    transpose = True
