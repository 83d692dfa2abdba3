"""Ensembles assembled from trained parts: separately trained scVI models, or shards."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Self

import pandas as pd
import torch
from anndata import AnnData

from ensemblevi.module._from_scvi import load_scvi_member

#: init arguments that differ between shards of one ensemble
SHARD_ARGS = ("n_members", "member_offset", "n_members_total")


class AssemblyMixin:
    """``from_scvi`` and ``merge``: one ensemble model from trained models or shards."""

    @classmethod
    def merge(cls, shards: Sequence[Self], adata: AnnData | None = None) -> Self:
        """One model holding the members of trained shards (``member_offset=`` models).

        The shards must come from one ensemble specification (same architecture, ``seed``
        and ``n_members_total``), share genes and data registration, and hold contiguous
        members (in any order here). Shards trained with the same ``train(seed=...)`` on
        the same data merge into exactly the ensemble trained in one piece (tested).

        Parameters
        ----------
        shards
            Trained shards, e.g. ``[EnsembleSCVI.load(d, adata) for d in shard_dirs]``.
        adata
            AnnData for the merged model (default: the first shard's).
        """
        return merge_models(cls, shards, adata)

    @classmethod
    def from_scvi(cls, models: Sequence[Any], adata: AnnData | None = None) -> Self:
        """A deep ensemble whose member ``k`` holds the weights of ``models[k]``.

        Puts separately trained ``scvi.model.SCVI`` models (e.g. one per seed, the original
        experiment) behind the ensemble API, so every ensemble output and analysis applies
        to them. The models must share genes, data registration and architecture.

        Parameters
        ----------
        models
            Trained ``scvi.model.SCVI`` models.
        adata
            AnnData registered with ``EnsembleSCVI.setup_anndata`` using the same arguments
            as the scVI models (default: the first model's AnnData, registered here).
        """
        if not models:
            raise ValueError("from_scvi needs at least one trained scvi.model.SCVI.")
        first = models[0]
        names = first.adata.var_names
        for i, m in enumerate(models):
            if not m.is_trained:
                raise ValueError(f"models[{i}] is not trained; train it first.")
            if not m.adata.var_names.equals(names):
                raise ValueError(f"models[{i}] was set up on other genes than models[0].")
        params = dict(first.init_params_["non_kwargs"])
        extra = dict(first.init_params_["kwargs"].get("kwargs", {}))
        if adata is None:
            adata = first.adata
            setup = dict(first.adata_manager.registry["setup_args"])
            cls.setup_anndata(adata, **setup)
        ensemble = cls(adata, n_members=len(models), ensemble="deep", **params, **extra)
        for k, m in enumerate(models):
            load_scvi_member(ensemble.module, k, m.module.cpu())
        ensemble.module.eval()
        ensemble.is_trained_ = True
        return ensemble


def _spec(model: Any) -> dict[str, Any]:
    extra = {k: v for kw in model.init_params_["kwargs"].values() for k, v in kw.items()}
    params = {**model.init_params_["non_kwargs"], **extra}
    return {k: v for k, v in params.items() if k not in SHARD_ARGS}


def merge_models(cls: type, shards: Sequence[Any], adata: AnnData | None = None) -> Any:
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
                [
                    h[key].add_suffix(f"_members_{m.member_range[0]}_{m.member_range[1] - 1}")
                    for h, m in zip(histories, shards, strict=True)
                    if key in h
                ],
                axis=1,
            )
            for key in histories[0]
        }
    return merged
