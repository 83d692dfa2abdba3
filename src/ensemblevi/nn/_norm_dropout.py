"""Normalisation and dropout with a member axis, and MC dropout's one shared network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._base import MEMBER_AXIS, EnsembleModule, LinearBase, member_draw, split_members


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SharedLinear(LinearBase):
    """One ordinary linear map applied to every member (the MC-dropout network).

    A shared input is transformed once and broadcast to the members, so the members differ
    only through what comes after (their dropout masks).

    Parameters
    ----------
    n_members
        K (the number of dropout masks downstream).
    in_features, out_features
        ``d_in``, ``d_out``.
    bias
        Whether the map has a bias.

    Shape
    -----
    As :class:`~ensemblevi.nn.EnsembleLinear`.

    Reference
    ---------
    Gal & Ghahramani (2016), Dropout as a Bayesian approximation: representing model
    uncertainty in deep learning, ICML.

    Examples
    --------
    >>> layer = SharedLinear(4, 10, 3)
    >>> layer(torch.randn(8, 10), shared_input=True).shape
    torch.Size([4, 8, 3])
    """

    def __init__(self, n_members: int, in_features: int, out_features: int, *, bias: bool = True):
        super().__init__(n_members, in_features, out_features)
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x).unsqueeze(MEMBER_AXIS)
        shape = list(out.shape)
        shape[MEMBER_AXIS] = self.n_members
        return out.expand(shape)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.linear(x)


class MemberDropout(EnsembleModule):
    """Dropout with an independent mask per member and example.

    Parameters
    ----------
    n_members
        K.
    p
        Dropout rate, in [0, 1).
    always_on
        The MC-dropout kind: dropout stays active at prediction time, so the K members of
        a prediction see K different masks.

    Shape
    -----
    - Input: ``(..., K, B, d)``, or member-free ``(B, d)`` (one mask for all rows).
    - Output: same shape.

    Reference
    ---------
    Srivastava et al. (2014), Dropout, JMLR; Gal & Ghahramani (2016), ICML.

    Examples
    --------
    >>> drop = MemberDropout(4, 0.5, always_on=True).eval()
    >>> drop(torch.ones(4, 8, 3)).shape
    torch.Size([4, 8, 3])
    """

    def __init__(self, n_members: int, p: float, *, always_on: bool = False):
        super().__init__(n_members)
        if not 0 <= p < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}.")
        self.p = p
        self.always_on = always_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop units of ``x`` (in training, or always with ``always_on``).

        Parameters
        ----------
        x
            Activations.
        """
        if self.p == 0 or not (self.training or self.always_on):
            return x
        if self.active_member is not None or x.dim() < 3:
            return F.dropout(x, self.p, training=True)
        # the mask F.dropout draws (bernoulli, then / (1 - p)), drawn per member slice
        keep = 1.0 - self.p
        mask = member_draw(
            x.shape, self.n_members, self.member_stream, lambda s: x.new_empty(s).bernoulli_(keep)
        )
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}, always_on={self.always_on}"


class EnsembleBatchNorm(EnsembleModule):
    """BatchNorm1d with separate statistics and affine parameters per member.

    Under data-parallel training (``torch.distributed`` initialised with more than one
    process, e.g. Lightning's DDP) the batch statistics are those of the global minibatch,
    all-reduced over the processes (``sync_stats``, on by default), so every member's
    normalisation and running statistics are what one process would compute on the
    whole minibatch. Lightning's ``sync_batchnorm`` converts only ``torch.nn`` batch norms,
    so this layer does it itself.

    Parameters
    ----------
    n_members
        K.
    num_features
        Features ``d``.
    momentum, eps
        As in ``torch.nn.BatchNorm1d``; the defaults are scvi-tools' FCLayers' (0.01,
        0.001).
    n_param_members
        Members with their own statistics and affine parameters; 1 makes it an ordinary
        BatchNorm over all members' rows (the shared MC-dropout network). Default K.

    Shape
    -----
    - Input: ``(K*B, d)`` member-major, ``(..., K, B, d)``, or one member's ``(..., B, d)``.
    - Output: same shape.

    Reference
    ---------
    Ioffe & Szegedy (2015), Batch normalization, ICML.

    Examples
    --------
    >>> bn = EnsembleBatchNorm(4, 3)
    >>> bn(torch.randn(4, 8, 3)).shape
    torch.Size([4, 8, 3])
    """

    sync_stats: bool = True

    def __init__(
        self,
        n_members: int,
        num_features: int,
        *,
        momentum: float = 0.01,
        eps: float = 1e-3,
        n_param_members: int | None = None,
    ):
        super().__init__(n_members)
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.n_param_members = n_members if n_param_members is None else n_param_members
        m = self.n_param_members
        self.weight = nn.Parameter(torch.ones(m, num_features))
        self.bias = nn.Parameter(torch.zeros(m, num_features))
        self.register_buffer("running_mean", torch.zeros(m, num_features))
        self.register_buffer("running_var", torch.ones(m, num_features))

    def _bn(self, x2d: torch.Tensor, idx: int | slice) -> torch.Tensor:
        if self.training and self.sync_stats and _world_size() > 1:
            return self._synced_bn(x2d, idx)
        return F.batch_norm(
            x2d,
            self.running_mean[idx].reshape(-1),
            self.running_var[idx].reshape(-1),
            self.weight[idx].reshape(-1),
            self.bias[idx].reshape(-1),
            self.training,
            self.momentum,
            self.eps,
        )

    def _synced_bn(self, x2d: torch.Tensor, idx: int | slice) -> torch.Tensor:
        """Batch norm with the statistics of all processes' rows (differentiable all-reduce).

        Two passes (sum, then sum of squared deviations) for accuracy in float32; the
        all-reduce's backward sums the gradients of all processes, as SyncBatchNorm does.
        """
        from torch.distributed.nn.functional import all_reduce

        count = x2d.new_tensor([float(x2d.shape[0])])
        total = all_reduce(torch.cat([x2d.sum(0), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x2d - mean
        var = all_reduce(centred.pow(2).sum(0)) / n
        out = centred * torch.rsqrt(var + self.eps)
        out = out * self.weight[idx].reshape(-1) + self.bias[idx].reshape(-1)
        with torch.no_grad():
            m = self.momentum
            rm, rv = self.running_mean[idx].reshape(-1), self.running_var[idx].reshape(-1)
            rm.mul_(1 - m).add_(m * mean.detach())
            rv.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each member's features with its own statistics.

        Parameters
        ----------
        x
            Activations, in any layout of the Shape section.
        """
        d = self.num_features
        if self.n_param_members == 1:
            return self._bn(x.reshape(-1, d), 0).reshape(x.shape)
        if self.active_member is not None:
            return self._bn(x.reshape(-1, d), self.active_member).reshape(x.shape)
        if x.dim() == 2:
            return self.forward(split_members(x, self.n_members)).reshape(x.shape)
        # (..., K, B, d) -> (rows, K*d): one fused batch norm with per-member channels.
        moved = x.movedim(MEMBER_AXIS, -2)
        out = self._bn(moved.reshape(-1, self.n_members * d), slice(None))
        return out.reshape(moved.shape).movedim(-2, MEMBER_AXIS)

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, features={self.num_features}"
