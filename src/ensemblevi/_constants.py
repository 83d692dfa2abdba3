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
    """Return ``kind`` if it is an ensemble kind, else raise a ``ValueError`` naming them.

    Parameters
    ----------
    kind
        The ``ensemble=`` argument to check.
    """
    if kind not in ENSEMBLE_KINDS:
        raise ValueError(f"ensemble must be one of {ENSEMBLE_KINDS}, got {kind!r}.")
    return kind


def logmeanexp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log(mean(exp(x)))`` along ``dim``, stably: the log of an equal-weight mixture.

    Parameters
    ----------
    x
        Log-values (e.g. members' log-likelihoods).
    dim
        The axis averaged over.
    """
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


#: Default prefix (scanpy style ``key_added``) of what ensemblevi writes into an AnnData:
#: ``layers["ensemblevi_mean"]``, ``var["ensemblevi_cv_between"]``, ``uns["ensemblevi"]``.
DEFAULT_KEY = "ensemblevi"

#: Default ``key_added`` of differential expression (``uns["ensemblevi_de"]``).
DE_KEY = f"{DEFAULT_KEY}_de"

#: Memory budget, in floats, of one dense (samples, members, cells, genes) block that an
#: evaluation loop holds at once (24 MB in float32); chunk sizes derive from it. It stays
#: below glibc's largest dynamic mmap threshold (32 MiB): a bigger block is mmapped afresh
#: and page-faulted in on every chunk, where a smaller one reuses the heap. At 80 MB blocks
#: the streamed analysis spent most of its element-wise time in page faults (2,000 cells x
#: 36 members x 10 samples: 12.9-13.3 s at 80 MB, 8.7-9.1 s at 24 MB,
#: benchmarks/probe_analysis_allocations.py; at atlas size 24 MB was 3-8 s faster than
#: 32 MB; docs/benchmarks/speed.md).
FLOAT_BUDGET = 6_000_000


def chunk_size(per_item: int, low: int, high: int) -> int:
    """How many items of ``per_item`` floats fit :data:`FLOAT_BUDGET`, clipped to ``[low, high]``.

    Parameters
    ----------
    per_item
        Floats held per item (per cell, per posterior draw, ...).
    low, high
        Bounds of the result (``low`` wins if the bounds cross).
    """
    return max(int(low), min(int(high), FLOAT_BUDGET // max(int(per_item), 1)))
