"""Learned batch embeddings for EnsembleVAE: scvi-tools' ``batch_representation="embedding"``.

scvi-tools 1.4 can represent the batch by a learned vector instead of its one-hot code: the
vector is appended to the decoder's input (and, with ``encode_covariates``, to the
encoder's), and the batch leaves the one-hot covariates. :class:`BatchEmbeddingMixin`
gives :class:`~ensemblevi.module.EnsembleVAE` scvi-tools' module embedding API
(``scvi.module.base.EmbeddingModuleMixin``: ``embeddings_dict``, ``init_embedding``,
``compute_embedding``, ``remove_embedding``, ...) with tables that have a member axis.

Which members own a table. ``deep`` (and ``single``): each member has its own table, as
its members are independent models, each with its own batch geometry (and
``EnsembleSCVI.from_scvi`` puts each scVI's table in its member). ``batch``, ``hyperbatch``
and ``mcdropout``: one table shared by the members. MC dropout is one network. BatchEnsemble
shares every slow weight and lets members differ through rank-1 fast weights; the first
layer's per-member fast weights already rescale each coordinate of the shared embedding per
member, which is how BatchEnsemble treats any input feature, so a shared table keeps its
parameter budget and gives every member the same batch representation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import EmbeddingModuleMixin
from torch import nn

from ensemblevi.nn._base import EnsembleModule

BATCH_REPRESENTATIONS = ("one-hot", "embedding")
# what the member tables implement of torch.nn.Embedding's arguments
EMBEDDING_ARGS = ("embedding_dim",)
PER_MEMBER_KINDS = ("deep", "single")


class MemberEmbedding(EnsembleModule):
    """An embedding table per member (or one shared by all), ``torch.nn.Embedding``-like.

    Parameters
    ----------
    n_members
        K.
    num_embeddings, embedding_dim
        As in ``torch.nn.Embedding`` (rows initialised ``N(0, 1)`` as there).
    shared
        One table for all members instead of one per member.

    Shape
    -----
    - Input: integer codes of any shape (flattened to ``(B,)``).
    - Output: ``(B, d)`` for a shared table or inside one active member; ``(K, B, d)``
      for per-member tables with all members active.
    """

    def __init__(self, n_members: int, num_embeddings: int, embedding_dim: int, shared: bool):
        super().__init__(n_members)
        for name, value in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        n_tables = 1 if shared else n_members
        self.weight = nn.Parameter(torch.randn(n_tables, self.num_embeddings, self.embedding_dim))

    @property
    def shared(self) -> bool:
        """Whether all members read one table."""
        return self.weight.shape[0] == 1

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """The rows of ``indices``; see the class docstring for the shapes.

        Parameters
        ----------
        indices
            Category codes.
        """
        idx = indices.reshape(-1).long()
        if self.shared:
            return F.embedding(idx, self.weight[0])
        if self.active_member is not None:
            return F.embedding(idx, self.weight[self.active_member])
        return self.weight[:, idx]

    def extra_repr(self) -> str:
        tables = "shared" if self.shared else f"{self.weight.shape[0]} tables"
        return f"{self.num_embeddings}, {self.embedding_dim}, {tables}"


def append_rep(x: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    """``x`` (``(..., [K,] B, d_x)``) with ``rep`` (``([K,] B, d)``) appended on the last axis.

    Both are broadcast to the larger of their leading shapes: a per-member embedding gives a
    shared encoder input a member axis, a shared one is repeated over members and samples.

    Parameters
    ----------
    x
        Encoder or decoder input.
    rep
        The batch embedding of its cells.
    """
    lead = torch.broadcast_shapes(x.shape[:-1], rep.shape[:-1])
    rep = rep.to(x.dtype)
    return torch.cat([x.expand(*lead, x.shape[-1]), rep.expand(*lead, rep.shape[-1])], dim=-1)


class BatchEmbeddingMixin(EmbeddingModuleMixin):
    """scvi-tools' module embedding API with member tables, and the batch representation.

    Inherits ``embeddings_dict``, ``add_embedding``, ``get_embedding``,
    ``remove_embedding`` and ``compute_embedding`` (a ``KeyError`` on a second table under
    one key or on a missing key) from ``scvi.module.base.EmbeddingModuleMixin``, so
    scvi-tools' ``EmbeddingMixin.get_batch_representation`` runs on it. The host defines
    ``n_members`` and ``ensemble``.
    """

    def _init_batch_representation(
        self, batch_representation: str, n_batch: int, batch_embedding_kwargs: dict | None
    ) -> int:
        """Set ``batch_representation`` up; the batch embedding's width (0 for one-hot)."""
        if batch_representation not in BATCH_REPRESENTATIONS:
            raise ValueError(
                f"batch_representation must be 'one-hot' or 'embedding', got "
                f"{batch_representation!r}."
            )
        self.batch_representation = batch_representation
        if batch_representation == "one-hot":
            if batch_embedding_kwargs:
                raise ValueError(
                    "batch_embedding_kwargs applies to batch_representation='embedding' only; "
                    "pass batch_representation='embedding' or drop batch_embedding_kwargs."
                )
            return 0
        self.init_embedding(REGISTRY_KEYS.BATCH_KEY, n_batch, **(batch_embedding_kwargs or {}))
        return self.get_embedding(REGISTRY_KEYS.BATCH_KEY).embedding_dim

    @property
    def batch_embedded(self) -> bool:
        """Whether the batch enters as a learned embedding (else as a one-hot code)."""
        return getattr(self, "batch_representation", "one-hot") == "embedding"

    def init_embedding(
        self, key: str, num_embeddings: int, embedding_dim: int = 5, **kwargs: Any
    ) -> None:
        """Add a :class:`MemberEmbedding` under ``key`` (per member for ``deep``/``single``).

        Parameters
        ----------
        key
            Name of the embedding (``REGISTRY_KEYS.BATCH_KEY`` for the batch).
        num_embeddings
            Number of categories.
        embedding_dim
            Width of each category's vector (scvi-tools' default, 5).
        **kwargs
            Other ``torch.nn.Embedding`` arguments: none is implemented by the member
            tables, so any raises a ``ValueError``.
        """
        if kwargs:
            raise ValueError(
                f"Embedding arguments {sorted(kwargs)} are not supported by ensemblevi's member "
                f"embedding tables (supported: {list(EMBEDDING_ARGS)}); remove them from "
                "batch_embedding_kwargs."
            )
        shared = self.ensemble not in PER_MEMBER_KINDS
        table = MemberEmbedding(self.n_members, num_embeddings, embedding_dim, shared=shared)
        self.add_embedding(key, table)

    def _batch_codes(self, batch_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch among the one-hot covariates: ``(batch_index,)``, or none if embedded."""
        return () if self.batch_embedded else (batch_index,)

    def _with_batch_rep(self, x: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """``x`` with the cells' batch embedding appended (``x`` itself for one-hot)."""
        if not self.batch_embedded:
            return x
        return append_rep(x, self.compute_embedding(REGISTRY_KEYS.BATCH_KEY, batch_index))
