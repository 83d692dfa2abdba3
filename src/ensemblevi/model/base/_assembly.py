"""Ensembles assembled from trained parts: separately trained scVI models, or shards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

from anndata import AnnData

from ensemblevi.module import load_scvi_member

from .._shards import merge_models


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
