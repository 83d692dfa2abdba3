"""Deep-ensemble layers: K independent networks' layers, computed in one batched call."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._base import ConvBase, LinearBase, init_uniform_, per_row


class EnsembleLinear(LinearBase):
    """K independent linear maps (a vectorised deep-ensemble layer).

    ``weight`` is ``(K, d_in, d_out)`` and ``bias`` ``(K, d_out)``; every member is initialised
    independently as ``torch.nn.Linear`` would be, and no parameter is shared, so a member's
    gradient never touches another member's weights. All members run in one batched matmul.

    Parameters
    ----------
    n_members
        K.
    in_features, out_features
        ``d_in``, ``d_out``.
    bias
        Whether each member has a bias.

    Shape
    -----
    - Input: ``(K*B, d_in)`` member-major, ``(..., K, B, d_in)``, or ``(..., B, d_in)``
      with ``shared_input=True`` or one active member.
    - Output: the input's layout with ``d_out`` features (a member axis added to a
      shared input).

    Reference
    ---------
    Lakshminarayanan, Pritzel & Blundell (2017), Simple and scalable predictive
    uncertainty estimation using deep ensembles, NeurIPS.

    Examples
    --------
    >>> layer = EnsembleLinear(4, 10, 3)
    >>> layer(torch.randn(8, 10), shared_input=True).shape
    torch.Size([4, 8, 3])
    """

    def __init__(self, n_members: int, in_features: int, out_features: int, *, bias: bool = True):
        super().__init__(n_members, in_features, out_features)
        self.weight = nn.Parameter(torch.empty(n_members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_members, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each member as ``torch.nn.Linear`` initialises itself."""
        init_uniform_(self.weight, self.in_features)
        if self.bias is not None:
            init_uniform_(self.bias, self.in_features)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() <= 3:  # (K, B, d_in) @ (K, d_in, d_out): one bmm
            out = torch.matmul(x, self.weight)
            return out if self.bias is None else out + self.bias.unsqueeze(-2)
        # Leading (sample) axes: torch.matmul would broadcast the weight over them by copying
        # it once per sample (36 members x 128 x 2,400 floats x 10 samples: 440 MB per call
        # of the uncertainty pass, 3x its matmul time); fold them into the cells axis instead.
        k, b, d = x.shape[-3:]
        lead = x.shape[:-3]
        xk = x.movedim(-3, 0).reshape(k, -1, d)
        if self.bias is None:
            out = torch.bmm(xk, self.weight)
        else:
            out = torch.baddbmm(self.bias.unsqueeze(1), xk, self.weight)
        return out.view(k, *lead, b, self.out_features).movedim(0, -3)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return F.linear(x, self.weight[k].T, None if self.bias is None else self.bias[k])


class EnsembleConv2d(ConvBase):
    """K independent convolutions (deep ensemble), run as one grouped convolution.

    Parameters
    ----------
    n_members
        K.
    in_channels, out_channels, kernel_size, stride, padding, output_padding
        As in ``torch.nn.Conv2d`` (square kernels).
    bias
        Whether each member has a bias.

    Shape
    -----
    - Input: ``(K*B, C_in, H, W)`` member-major, or ``(B, C_in, H, W)`` with
      ``shared_input=True`` or one active member.
    - Output: ``(K*B, C_out, H', W')`` (``(B, ...)`` for one active member).

    Reference
    ---------
    Lakshminarayanan, Pritzel & Blundell (2017), NeurIPS.

    Examples
    --------
    >>> conv = EnsembleConv2d(3, 1, 8, 3, stride=2, padding=1)
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
        self.weight = nn.Parameter(
            torch.empty(n_members, *self._kernel_shape(in_channels, out_channels))
        )
        self.bias = nn.Parameter(torch.empty(n_members, out_channels)) if bias else None
        init_uniform_(self.weight, self.fan_in)
        if self.bias is not None:
            init_uniform_(self.bias, self.fan_in)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        k = self.n_members
        b = x.shape[0] // k
        grouped = x.reshape(k, b, *x.shape[1:]).transpose(0, 1).reshape(b, -1, *x.shape[2:])
        out = self._conv(grouped, self.weight.flatten(0, 1), groups=k)
        out = out.reshape(b, k, self.out_channels, *out.shape[2:]).transpose(0, 1)
        out = out.reshape(k * b, *out.shape[2:])
        return out if self.bias is None else out + per_row(self.bias, out.shape[0])

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = self._conv(x, self.weight[k])
        return out if self.bias is None else out + self.bias[k][:, None, None]


class EnsembleConvTranspose2d(EnsembleConv2d):
    """K independent transposed convolutions (deep ensemble); arguments and shapes as
    :class:`EnsembleConv2d`, with ``torch.nn.ConvTranspose2d``'s ``output_padding``."""

    transpose = True
