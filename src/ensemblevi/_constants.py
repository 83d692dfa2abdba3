"""Facts used across the package, defined once."""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

EnsembleKind = Literal["single", "deep", "batch", "hyperbatch", "mcdropout"]
#: The ensemble kinds, in the order the docs list them.
ENSEMBLE_KINDS: tuple[str, ...] = get_args(EnsembleKind)

#: Parts of the predictive variance of normalised expression (see ``model._uncertainty``).
VARIANCE_PARTS: tuple[str, ...] = ("mean", "var_between", "var_within", "var_noise")


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is an ensemble kind, else raise a ``ValueError`` naming them."""
    if kind not in ENSEMBLE_KINDS:
        raise ValueError(f"ensemble must be one of {ENSEMBLE_KINDS}, got {kind!r}.")
    return kind


def logmeanexp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log(mean(exp(x)))`` along ``dim``, stably: the log of an equal-weight mixture."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])
