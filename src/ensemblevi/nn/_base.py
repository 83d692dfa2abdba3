"""What every ensemble layer shares: the member layout, the layer spec, the base classes.

Written by hand because no maintained library has these layers: neither PyTorch nor
scvi-tools ships BatchEnsemble or vectorised deep-ensemble layers.

Layout. A member tensor has its member axis at position -3: ``(..., K, B, d)``, which for
three dimensions is the member-major layout ``(K, B, d)`` (rows ``[kB, (k+1)B)`` of the
flattened ``(K*B, d)`` belong to member ``k``). Two-dimensional input ``(K*B, d)`` is
accepted in that flattened layout and returned flattened. A *shared* input (the same
examples for every member, e.g. the counts entering the encoder) has no member axis and is
passed with ``shared_input=True``; the output then has one. Images are ``(K*B, C, H, W)``,
member-major.

Single-member mode. When ``active_member`` is set on a layer (see
:func:`set_active_member`, which validates it once for the whole network), it computes
member ``k`` alone on member-free tensors, shaped exactly as an ordinary
``torch.nn.Linear`` would see them. This is what lets scvi-tools' own
``RNASeqMixin``/``VAEMixin`` code run one member at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ensemblevi._constants import EnsembleKind, check_kind

MEMBER_AXIS = -3


@dataclass(frozen=True)
class LayerSpec:
    """Which ensemble layers a network is built from: one value passed down every level.

    Parameters
    ----------
    ensemble
        The ensemble kind, named as everywhere else in the package: ``single`` (built as a
        one-member ``deep`` ensemble), ``deep``, ``batch``, ``hyperbatch`` or
        ``mcdropout`` (one shared network; dropout kept on at prediction).
    n_members
        K.
    n_hyper
        ``hyperbatch`` only: the number J of tuned hyperparameters the layers read.
    tuned_dropout
        ``hyperbatch`` only: dropout layers are :class:`~ensemblevi.nn.HyperDropout`, whose
        rate is a tuned hyperparameter.
    random_sign_init
        BatchEnsemble fast-weight init (see :func:`~ensemblevi.nn.fast_weight_init_`):
        negative: ``r, s ~ N(1, |value|)``; positive ``p``: random signs, +1 with
        probability ``p``; 0: all ones.
    tied
        ``hyperbatch`` only: the layer's hyper kernel is its main kernel (``W' = W``; see
        :class:`~ensemblevi.nn.HyperBatchEnsembleLinear`). Set per layer with
        ``dataclasses.replace(spec, tied=True)``.

    Examples
    --------
    >>> from ensemblevi.nn._blocks import make_linear
    >>> spec = LayerSpec(ensemble="batch", n_members=4, random_sign_init=0.5)
    >>> layer = make_linear(spec=spec, d_in=10, d_out=3)
    """

    ensemble: EnsembleKind
    n_members: int
    n_hyper: int = 0
    tuned_dropout: bool = False
    random_sign_init: float = -0.5
    tied: bool = False

    def __post_init__(self) -> None:
        check_kind(self.ensemble)
        if self.n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {self.n_members}.")
        if self.ensemble == "hyperbatch" and self.n_hyper < 1:
            raise ValueError("A hyperbatch layer needs n_hyper >= 1 tuned hyperparameters.")

    @property
    def mc_dropout(self) -> bool:
        """Whether dropout stays on at prediction (the MC-dropout kind)."""
        return self.ensemble == "mcdropout"


def split_members(x: torch.Tensor, n_members: int) -> torch.Tensor:
    """``(K*B, ...)`` member-major rows to ``(K, B, ...)``.

    Parameters
    ----------
    x
        Rows grouped member-major; a row count that is not a multiple of ``n_members``
        raises a ``ValueError``.
    n_members
        K.
    """
    if x.shape[0] % n_members:
        raise ValueError(
            f"Batch of {x.shape[0]} rows is not a multiple of the {n_members} ensemble members. "
            f"Rows must be grouped member-major (rows [k*B, (k+1)*B) belong to member k); use a "
            f"batch size divisible by {n_members}."
        )
    return x.reshape(n_members, x.shape[0] // n_members, *x.shape[1:])


class EnsembleModule(nn.Module):
    """Base of the layers: member count, single-member switch, fast-weight bookkeeping.

    Parameters
    ----------
    n_members
        K.
    """

    def __init__(self, n_members: int):
        super().__init__()
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}.")
        self.n_members = n_members
        # validated by set_active_member, so forward passes read it unchecked
        self.active_member: int | None = None
        # (offset, total): these members are members offset.. of a total-member ensemble
        self.member_stream: tuple[int, int] | None = None

    def fast_parameters(self) -> Iterator[nn.Parameter]:
        """Per-member cheap parameters that get their own optimiser group (none by default)."""
        return iter(())


def set_active_member(module: nn.Module, member: int | None) -> None:
    """Switch every ensemble layer inside ``module`` to one member (or back to all).

    The one place the member index is checked: the layers' forward passes trust it.

    Parameters
    ----------
    module
        Any module holding ensemble layers.
    member
        The member index, or ``None`` for all members.
    """
    layers = [m for m in module.modules() if isinstance(m, EnsembleModule)]
    if member is not None:
        n = min((m.n_members for m in layers), default=0)
        if not 0 <= int(member) < n:
            raise IndexError(f"member {member} out of range: the ensemble has {n}.")
        member = int(member)
    for m in layers:
        m.active_member = member


def set_member_stream(module: nn.Module, offset: int, total: int) -> None:
    """Mark ``module``'s members as members ``offset..`` of a ``total``-member ensemble.

    Their random draws in training (dropout masks, latent noise) are then taken from the
    draws of the whole ensemble (see :func:`member_draw`), so a shard trained alone with the
    same seed draws exactly what its members draw inside the whole ensemble.

    Parameters
    ----------
    module
        The shard's network.
    offset
        Index of its first member in the whole ensemble.
    total
        Members of the whole ensemble.
    """
    for m in module.modules():
        if hasattr(m, "member_stream"):
            m.member_stream = None if (offset, total) == (0, m.n_members) else (offset, total)


def member_draw(
    shape: torch.Size | tuple[int, ...],
    n_members: int,
    stream: tuple[int, int] | None,
    sample: Callable[[tuple[int, ...]], torch.Tensor],
) -> torch.Tensor:
    """``sample(shape)`` for ``n_members`` members on axis -3, as a slice of the whole ensemble.

    A shard (``stream = (offset, total)``) draws for all ``total`` members and keeps its
    own, so the random stream it consumes, and the values its members get, are those of
    the ensemble trained in one piece. The extra draws cost little next to the network.

    Parameters
    ----------
    shape
        Shape of the draw, with ``n_members`` on axis -3.
    n_members
        Members of this network.
    stream
        ``(offset, total)`` of a shard, or ``None``.
    sample
        Draws a tensor of a given shape.
    """
    if stream is None:
        return sample(tuple(shape))
    offset, total = stream
    full = list(shape)
    full[MEMBER_AXIS] = total
    return sample(tuple(full)).narrow(len(full) + MEMBER_AXIS, offset, n_members)


def init_uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """torch.nn.Linear's default init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, in place.

    kaiming_uniform(a=sqrt(5)) on the weight and ``U(+-1/sqrt(fan_in))`` on the bias both
    reduce to this bound.

    Parameters
    ----------
    t
        Tensor to fill.
    fan_in
        Inputs per output unit.
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return nn.init.uniform_(t, -bound, bound)


class LinearBase(EnsembleModule):
    """Shape handling shared by the linear layers; subclasses define the kernels.

    ``_members`` computes ``(..., K, B, d_in)`` input, ``_single`` one member's
    ``(..., B, d_in)``; ``_shared`` (a member-free input) defaults to broadcasting.

    Parameters
    ----------
    n_members
        K.
    in_features, out_features
        ``d_in``, ``d_out``.
    """

    def __init__(self, n_members: int, in_features: int, out_features: int):
        super().__init__(n_members)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """Apply the layer; see the module docstring for the layouts.

        Parameters
        ----------
        x
            ``(K*B, d_in)``, ``(..., K, B, d_in)``, or ``(..., B, d_in)`` with
            ``shared_input`` or a single active member.
        shared_input
            ``x`` has no member axis: every member gets the same input.
        """
        if self.active_member is not None:
            return self._single(x, self.active_member)
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

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        # a hook of the base class: each technique (subclass) defines it
        raise NotImplementedError(f"{type(self).__name__} does not define _members()")

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        # a hook of the base class: each technique (subclass) defines it
        raise NotImplementedError(f"{type(self).__name__} does not define _single()")

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        return self._members(x.unsqueeze(MEMBER_AXIS))

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, in={self.in_features}, out={self.out_features}"


class ConvBase(EnsembleModule):
    """Convolutions with a member axis on images laid out ``(K*B, C, H, W)`` member-major.

    A shared input ``(B, C, H, W)`` (the same images for every member) is passed with
    ``shared_input=True``. Subclasses with ``transpose = True`` are transposed
    convolutions.

    Parameters
    ----------
    n_members
        K.
    in_channels, out_channels, kernel_size, stride, padding, output_padding
        As in ``torch.nn.Conv2d`` / ``torch.nn.ConvTranspose2d`` (square kernels;
        ``output_padding`` for transposed convolutions only).
    """

    transpose: bool = False

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
        """Inputs per output unit, torch's convention (output channels for transposed)."""
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
        """Apply the convolution.

        Parameters
        ----------
        x
            ``(K*B, C, H, W)`` member-major images, or ``(B, C, H, W)`` with
            ``shared_input`` or a single active member.
        shared_input
            ``x`` has no member axis: every member gets the same images.
        """
        if x.dim() != 4:
            raise ValueError(f"Expected images (N, C, H, W), got shape {tuple(x.shape)}.")
        if self.active_member is not None:
            return self._single(x, self.active_member)
        if shared_input:
            x = x.unsqueeze(0).expand(self.n_members, *x.shape).reshape(-1, *x.shape[1:])
        else:
            split_members(x, self.n_members)  # fails clearly on a bad batch size
        return self._members(x)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        # a hook of the base class: each technique (subclass) defines it
        raise NotImplementedError(f"{type(self).__name__} does not define _members()")

    def _single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        # a hook of the base class: each technique (subclass) defines it
        raise NotImplementedError(f"{type(self).__name__} does not define _single()")

    def extra_repr(self) -> str:
        return (
            f"n_members={self.n_members}, {self.in_channels}->{self.out_channels}, "
            f"kernel={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        )


def per_row(v: torch.Tensor, n: int) -> torch.Tensor:
    """``(K, C)`` per-member channel vector to ``(K*B, C, 1, 1)`` rows (``B = n / K``).

    Parameters
    ----------
    v
        One value per member and channel, ``(K, C)``.
    n
        Rows ``K*B`` of the member-major images.
    """
    k = v.shape[0]
    return v.repeat_interleave(n // k, dim=0)[:, :, None, None]
