"""Ensemble layers: K members computed in one batched pass.

Written by hand because no maintained library has them: neither PyTorch nor scvi-tools
ships BatchEnsemble or vectorised deep-ensemble layers.

Layout. A member tensor has its member axis at position -3: ``(..., K, B, d)``, which for
three dimensions is the member-major layout ``(K, B, d)`` (rows ``[kB, (k+1)B)`` of the
flattened ``(K*B, d)`` belong to member ``k``). Two-dimensional input ``(K*B, d)`` is
accepted in that flattened layout and returned flattened. A *shared* input (the same
examples for every member, e.g. the counts entering the encoder) has no member axis and is
passed with ``shared_input=True``; the output then has one.

Single-member mode. When ``active_member`` is set on a layer (see
:func:`set_active_member`), it computes member ``k`` alone on member-free tensors, shaped
exactly as an ordinary ``torch.nn.Linear`` would see them. This is what lets scvi-tools'
own ``RNASeqMixin``/``VAEMixin`` code run one member at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

MEMBER_AXIS = -3


def split_members(x: torch.Tensor, n_members: int) -> torch.Tensor:
    """``(K*B, d)`` member-major rows to ``(K, B, d)``; a size that is not a multiple fails."""
    if x.shape[0] % n_members:
        raise ValueError(
            f"Batch of {x.shape[0]} rows is not a multiple of the {n_members} ensemble members. "
            f"Rows must be grouped member-major (rows [k*B, (k+1)*B) belong to member k); use a "
            f"batch size divisible by {n_members}."
        )
    return x.reshape(n_members, x.shape[0] // n_members, *x.shape[1:])


class EnsembleModule(nn.Module):
    """Base of the layers: member count, single-member switch, fast-weight bookkeeping."""

    def __init__(self, n_members: int):
        super().__init__()
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}.")
        self.n_members = n_members
        self.active_member: int | None = None
        # (offset, total): these members are members offset.. of a total-member ensemble
        self.member_stream: tuple[int, int] | None = None

    def fast_parameters(self) -> Iterator[nn.Parameter]:
        """Per-member cheap parameters that get their own optimiser group (none by default)."""
        return iter(())

    def _check_member(self) -> int:
        k = self.active_member
        assert k is not None
        if not 0 <= k < self.n_members:
            raise IndexError(f"member {k} out of range for {self.n_members} members.")
        return k


def set_active_member(module: nn.Module, member: int | None) -> None:
    """Switch every ensemble layer inside ``module`` to one member (or back to all: None)."""
    for m in module.modules():
        if isinstance(m, EnsembleModule):
            m.active_member = member


def set_member_stream(module: nn.Module, offset: int, total: int) -> None:
    """Mark ``module``'s members as members ``offset..`` of a ``total``-member ensemble.

    Their random draws in training (dropout masks, latent noise) are then taken from the
    draws of the whole ensemble (see :func:`member_draw`), so a shard trained alone with the
    same seed draws exactly what its members draw inside the whole ensemble.
    """
    for m in module.modules():
        if hasattr(m, "member_stream"):
            m.member_stream = None if (offset, total) == (0, m.n_members) else (offset, total)


def member_draw(
    shape: torch.Size | tuple[int, ...],
    n_members: int,
    stream: tuple[int, int] | None,
    sample,
) -> torch.Tensor:
    """``sample(shape)`` for ``n_members`` members on axis -3, as a slice of the whole ensemble.

    A shard (``stream = (offset, total)``) draws for all ``total`` members and keeps its
    own, so the random stream it consumes, and the values its members get, are those of
    the ensemble trained in one piece. The extra draws cost little next to the network.
    """
    if stream is None:
        return sample(tuple(shape))
    offset, total = stream
    full = list(shape)
    full[MEMBER_AXIS] = total
    return sample(tuple(full)).narrow(len(full) + MEMBER_AXIS, offset, n_members)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _init_uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    # torch.nn.Linear's default: kaiming_uniform(a=sqrt(5)) on the weight and U(+-1/sqrt(fan_in))
    # on the bias, both of which reduce to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return nn.init.uniform_(t, -bound, bound)


class _LinearBase(EnsembleModule):
    """Shape handling shared by the linear layers; subclasses define the three kernels."""

    def __init__(self, n_members: int, in_features: int, out_features: int):
        super().__init__(n_members)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        if self.active_member is not None:
            return self._single(x, self._check_member())
        if shared_input:
            return self._shared(x)
        if x.dim() == 2:
            out = self._members(split_members(x, self.n_members))
            return out.reshape(-1, self.out_features)
        if x.shape[MEMBER_AXIS] != self.n_members:
            raise ValueError(
                f"Expected {self.n_members} members on axis -3 of a {tuple(x.shape)} input; pass "
                "shared_input=True for an input without a member axis."
            )
        return self._members(x)

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        return self._members(x.unsqueeze(MEMBER_AXIS))

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, in={self.in_features}, out={self.out_features}"


class EnsembleLinear(_LinearBase):
    """K independent linear maps (a vectorised deep ensemble layer).

    ``weight`` is ``(K, d_in, d_out)`` and ``bias`` ``(K, d_out)``; every member is initialised
    independently as ``torch.nn.Linear`` would be, and no parameter is shared, so a member's
    gradient never touches another member's weights. All members run in one batched matmul.
    """

    def __init__(self, n_members: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__(n_members, in_features, out_features)
        self.weight = nn.Parameter(torch.empty(n_members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_members, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_uniform_(self.weight, self.in_features)
        if self.bias is not None:
            _init_uniform_(self.bias, self.in_features)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(x, self.weight)
        return out if self.bias is None else out + self.bias.unsqueeze(-2)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return F.linear(x, self.weight[k].T, None if self.bias is None else self.bias[k])


def fast_weight_init_(t: torch.Tensor, random_sign_init: float) -> torch.Tensor:
    """BatchEnsemble fast-weight init, with the reference's sign convention.

    A negative ``random_sign_init`` draws from N(1, |value|) (the reference default is -0.5);
    a positive value ``p`` draws random signs, +1 with probability ``p``.
    """
    with torch.no_grad():
        if random_sign_init < 0:
            return t.normal_(1.0, -random_sign_init)
        if random_sign_init > 0:
            return t.bernoulli_(random_sign_init).mul_(2).sub_(1)
        return t.fill_(1.0)


class BatchEnsembleLinear(_LinearBase):
    """BatchEnsemble dense layer (Wen, Tran & Ba 2020).

    ``y_k = s_k * (W^T (r_k * x)) + b_k``: a shared kernel ``W`` and per-member fast weights
    ``r_k`` (d_in), ``s_k`` (d_out) and bias ``b_k``, i.e. member weight ``W * (r_k s_k^T)``.
    The fast weights are returned by :meth:`fast_parameters` so the optimiser can give them
    their own learning rate and no weight decay.
    """

    def __init__(
        self,
        n_members: int,
        in_features: int,
        out_features: int,
        bias: bool = True,
        random_sign_init: float = -0.5,
    ):
        super().__init__(n_members, in_features, out_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.r = nn.Parameter(torch.empty(n_members, in_features))
        self.s = nn.Parameter(torch.empty(n_members, out_features))
        self.bias = nn.Parameter(torch.zeros(n_members, out_features)) if bias else None
        self.random_sign_init = random_sign_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_uniform_(self.weight, self.in_features)
        fast_weight_init_(self.r, self.random_sign_init)
        fast_weight_init_(self.s, self.random_sign_init)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def fast_parameters(self) -> Iterator[nn.Parameter]:
        yield self.r
        yield self.s
        if self.bias is not None:
            yield self.bias

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(x * self.r.unsqueeze(-2), self.weight) * self.s.unsqueeze(-2)
        return out if self.bias is None else out + self.bias.unsqueeze(-2)

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = torch.matmul(x * self.r[k], self.weight) * self.s[k]
        return out if self.bias is None else out + self.bias[k]


class SharedLinear(_LinearBase):
    """One ordinary linear map applied to every member (the MC-dropout network).

    A shared input is transformed once and broadcast to the members, so the members differ
    only through what comes after (their dropout masks).
    """

    def __init__(self, n_members: int, in_features: int, out_features: int, bias: bool = True):
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

    ``always_on=True`` is the MC-dropout kind: dropout stays active at prediction time, so
    the K members of a prediction see K different masks.
    """

    def __init__(self, n_members: int, p: float, always_on: bool = False):
        super().__init__(n_members)
        if not 0 <= p < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}.")
        self.p = p
        self.always_on = always_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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

    ``n_param_members=1`` makes it an ordinary BatchNorm over all members' rows (the shared
    MC-dropout network). Momentum and eps follow scvi-tools' FCLayers (0.01, 0.001).

    Under data-parallel training (``torch.distributed`` initialised with more than one
    process, e.g. Lightning's DDP) the batch statistics are those of the global minibatch,
    all-reduced over the processes (``sync_stats``, on by default), so every member's
    normalisation and running statistics are what one process would compute on the
    whole minibatch. Lightning's ``sync_batchnorm`` converts only ``torch.nn`` batch norms,
    so this layer does it itself.
    """

    sync_stats: bool = True

    def __init__(
        self,
        n_members: int,
        num_features: int,
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
        d = self.num_features
        if self.n_param_members == 1:
            return self._bn(x.reshape(-1, d), 0).reshape(x.shape)
        if self.active_member is not None:
            return self._bn(x.reshape(-1, d), self._check_member()).reshape(x.shape)
        if x.dim() == 2:
            return self.forward(split_members(x, self.n_members)).reshape(x.shape)
        # (..., K, B, d) -> (rows, K*d): one fused batch norm with per-member channels.
        moved = x.movedim(MEMBER_AXIS, -2)
        out = self._bn(moved.reshape(-1, self.n_members * d), slice(None))
        return out.reshape(moved.shape).movedim(-2, MEMBER_AXIS)

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, features={self.num_features}"
