"""The ensemble version of scvi-tools' ``EmbeddingMixin``: the learned batch embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData


class EnsembleEmbeddingMixin:
    """``get_batch_representation`` of one member (default member 0), or of all stacked.

    Follows :meth:`~ensemblevi.model.base.EnsembleVAEMixin.get_latent_representation`'s
    ``member=`` / ``return_members=`` convention; ``model.members[k]`` gives scvi-tools'
    own method on member ``k``. With ``batch``, ``hyperbatch`` and ``mcdropout`` the members
    share one table, so every member returns the same vectors.
    """

    def get_batch_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        member: int = 0,
        return_members: bool = False,
    ) -> np.ndarray:
        """Each cell's learned batch embedding, as ``scvi.model.SCVI.get_batch_representation``.

        Needs ``batch_representation="embedding"``; a ``KeyError`` once the embedding has
        been removed from the module (``module.remove_embedding``), as in scvi-tools.

        Parameters
        ----------
        adata, indices, batch_size
            As in ``scvi.model.SCVI.get_batch_representation``.
        member
            The member whose embedding is returned.
        return_members
            Return every member's, stacked ``(K, n_obs, embedding_dim)``; ``member`` is
            then ignored.

        Returns
        -------
        ``(n_obs, embedding_dim)`` (``(K, n_obs, embedding_dim)`` with ``return_members``).
        """
        if getattr(self.module, "batch_representation", "one-hot") != "embedding":
            raise ValueError(
                "get_batch_representation needs a model built with "
                "batch_representation='embedding'; this one codes batches one-hot (they have "
                "no learned representation)."
            )
        args = {"adata": adata, "indices": indices, "batch_size": batch_size}
        if not return_members:
            return self.members[self._check_member(member)].get_batch_representation(**args)
        return np.stack([view.get_batch_representation(**args) for view in self.members])
