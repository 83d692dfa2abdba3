"""scvi-tools' minified mode, refused by name for ensembles.

``scvi.model.SCVI.minify_adata`` replaces the counts by one latent posterior per cell and
makes the module decode from it. An ensemble has K latent posteriors per cell that are not
aligned with each other, and its network has no minified path, so a minified ensemble would
decode member 0's posterior through every member, or silently read missing counts.
"""

from __future__ import annotations


class MinificationMixin:
    """``minify_adata`` that raises, and ``minified_data_type`` that is always ``None``."""

    @property
    def minified_data_type(self) -> None:
        """Always ``None``: an ensemble model's AnnData is never minified."""
        return None

    def minify_adata(
        self,
        minified_data_type: str = "latent_posterior_parameters",
        use_latent_qzm_key: str = "X_latent_qzm",
        use_latent_qzv_key: str = "X_latent_qzv",
    ) -> None:
        """Refused: an ensemble has no single latent posterior to store.

        Parameters
        ----------
        minified_data_type, use_latent_qzm_key, use_latent_qzv_key
            scvi-tools' arguments; any call raises.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.minify_adata is not available: scvi-tools' minified mode "
            "stores one latent posterior per cell, and an ensemble has one per member, not "
            "aligned with each other, which its network cannot decode from. Keep the counts "
            "(save the model with a sparse AnnData), and store the members' posteriors with "
            "model.get_latent_representation(return_members=True, return_dist=True) where "
            "you need them. A member view (model.members[k]) shares the model's AnnData and "
            "is not minified either."
        )
