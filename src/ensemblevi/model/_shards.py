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

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

if TYPE_CHECKING:
    from ._ensemble_scvi import EnsembleSCVI

SHARD_ARGS = ("n_members", "member_offset", "n_members_total")


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


def _spec(model: EnsembleSCVI) -> dict[str, Any]:
    extra = {k: v for kw in model.init_params_["kwargs"].values() for k, v in kw.items()}
    params = {**model.init_params_["non_kwargs"], **extra}
    return {k: v for k, v in params.items() if k not in SHARD_ARGS}


def merge_models(cls: type[EnsembleSCVI], shards: Sequence[EnsembleSCVI], adata=None):
    """Concatenate the members of ``shards`` (see :meth:`EnsembleSCVI.merge`).

    Parameters
    ----------
    cls
        The model class to build the merged model with.
    shards
        Trained shards of one ensemble specification.
    adata
        AnnData of the merged model (default: the first shard's).
    """
    if not shards:
        raise ValueError("merge needs at least one shard.")
    shards = sorted(shards, key=lambda m: m.member_range[0])
    first = shards[0]
    spec, total = _spec(first), first.n_members_total
    setup = first.adata_manager.registry["setup_args"]
    for m in shards[1:]:
        if not m.adata.var_names.equals(first.adata.var_names):
            raise ValueError("The shards were set up on different genes; they cannot be merged.")
        if m.adata_manager.registry["setup_args"] != setup:
            raise ValueError(
                "The shards registered their data differently (setup_anndata arguments "
                f"{m.adata_manager.registry['setup_args']} vs {setup})."
            )
        if _spec(m) != spec or m.n_members_total != total:
            raise ValueError(
                "The shards come from different ensemble specifications (architecture, seed "
                "or n_members_total differ); only shards of one ensemble can be merged."
            )
    for a, b in itertools.pairwise(shards):
        if a.member_range[1] != b.member_range[0]:
            raise ValueError(
                f"The shards' members are not contiguous: {a.member_range} then "
                f"{b.member_range} (member ranges are [start, stop))."
            )
    if any(not m.is_trained for m in shards):
        raise ValueError("Every shard must be trained before merging.")
    start, stop = shards[0].member_range[0], shards[-1].member_range[1]
    merged = cls(
        first.adata if adata is None else adata,
        n_members=stop - start,
        member_offset=start,
        n_members_total=total,
        **spec,
    )
    state = merged.module.state_dict()
    parts = [m.module.cpu().state_dict() for m in shards]
    for key, ref in state.items():
        values = [p[key] for p in parts]
        if values[0].shape == ref.shape:
            if not all(torch.equal(values[0], v) for v in values[1:]):
                raise ValueError(f"Shared state {key!r} differs between the shards.")
            state[key] = values[0]
        else:
            state[key] = torch.cat(values, dim=0)
    merged.module.load_state_dict(state)
    merged.module.eval()
    merged.is_trained_ = True
    histories = [getattr(m, "history_", None) for m in shards]
    if all(isinstance(h, dict) for h in histories):
        merged.history_ = {
            key: pd.concat(
                [h[key].add_suffix(f"_members_{m.member_range[0]}_{m.member_range[1] - 1}")
                 for h, m in zip(histories, shards, strict=True) if key in h],
                axis=1,
            )
            for key in histories[0]
        }  # fmt: skip
    return merged
