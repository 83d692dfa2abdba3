"""Member sharding: train members i..j of one ensemble as an independent job, then merge.

Written by hand: scvi-tools has no notion of an ensemble split across jobs. The contract
(tested): shards built with the same ``seed`` and ``n_members_total``, trained with the
same ``train(seed=...)`` on the same data, merge into exactly the ensemble trained in one
piece. That holds for deep ensembles, whose members share no parameter and whose loss is
a sum of per-member losses; a shard draws its random numbers as slices of the whole
ensemble's draws (:func:`ensemblevi.nn.member_draw`), so it consumes the same random
stream (data order included) as the whole ensemble does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# merging lives in model.base (AssemblyMixin.merge), which cannot import this layer
from .base._assembly import SHARD_ARGS, merge_models  # noqa: F401  (re-exported)


def check_shard(
    ensemble: str,
    n_members: int,
    member_offset: int,
    n_members_total: int | None,
    seed: int | None,
) -> tuple[int, int] | None:
    """``(offset, total)`` of a shard, ``None`` for a whole ensemble; clear errors otherwise.

    Parameters
    ----------
    ensemble
        The ensemble kind (sharding needs ``deep``).
    n_members
        Members held by this model.
    member_offset, n_members_total
        Position of its first member in, and size of, the whole ensemble.
    seed
        The initialisation seed (sharding needs one).
    """
    total = n_members if n_members_total is None else int(n_members_total)
    offset = int(member_offset)
    if (offset, total) == (0, n_members):
        return None
    if ensemble != "deep":
        raise ValueError(
            f"Member sharding needs independent members (ensemble='deep'); {ensemble!r} "
            "members share weights, so they must be trained together."
        )
    if total < 1 or offset < 0 or offset + n_members > total:
        raise ValueError(
            f"Members {offset}..{offset + n_members - 1} do not fit an ensemble of "
            f"n_members_total={total}: need 0 <= member_offset and member_offset + n_members "
            "<= n_members_total."
        )
    if seed is None:
        raise ValueError(
            "Member sharding needs seed= (the same for every shard), so that every shard "
            "initialises the same ensemble."
        )
    return offset, total


def member_slice(
    full: dict[str, torch.Tensor], small: dict[str, torch.Tensor], offset: int
) -> dict[str, torch.Tensor]:
    """The whole ensemble's state restricted to ``small``'s members (axis 0 from ``offset``).

    Parameters
    ----------
    full
        State dict of the whole ensemble's module.
    small
        State dict of the shard's module (the target shapes).
    offset
        The shard's first member.
    """
    out = {}
    for key, ref in small.items():
        value = full[key]
        if value.shape == ref.shape:
            out[key] = value
        elif value.dim() == ref.dim() and value.shape[1:] == ref.shape[1:]:
            out[key] = value.narrow(0, offset, ref.shape[0]).clone()
        else:
            raise RuntimeError(f"{key}: cannot slice {tuple(value.shape)} to {tuple(ref.shape)}.")
    return out


def missing_members(ranges: Sequence[Sequence[int]], total: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` runs of members of a ``total``-member ensemble no range covers.

    Parameters
    ----------
    ranges
        ``[start, stop)`` member ranges of the shards at hand.
    total
        Members of the whole ensemble.
    """
    covered = [False] * total
    for start, stop in ranges:
        covered[start:stop] = [True] * (min(stop, total) - start)
    gaps, start = [], None
    for i, done in enumerate([*covered, True]):
        if not done and start is None:
            start = i
        elif done and start is not None:
            gaps.append((start, i))
            start = None
    return gaps
