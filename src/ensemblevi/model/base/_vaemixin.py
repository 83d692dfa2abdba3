"""Ensemble versions of scvi-tools' ``VAEMixin`` outputs: latents and likelihoods.

Latent codes are one member's or stacked, never averaged (members' latent spaces are not
aligned); likelihoods are the equal-weight member mixture's, ``log((1/K) sum_k p_k(x))``,
or one member's, or a member/mixture table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.model.base import VAEMixin

from ensemblevi._constants import logmeanexp

from .._members import MemberOnly
from ._ensemblemixin import EnsembleMixin


class EnsembleVAEMixin(EnsembleMixin, VAEMixin):
    """Latent representation, ELBO, marginal likelihood and reconstruction error per member
    and for the member mixture; the latent-space-only methods are per member."""

    get_aggregated_posterior = MemberOnly()
    differential_abundance = MemberOnly()

    @torch.inference_mode()
    def _stream(
        self,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        adata: AnnData,
        indices: Sequence[int] | None,
        batch_size: int | None,
        seed: int | None,
        member: int | None,
    ) -> torch.Tensor:
        """Concatenate ``fn(tensors)`` (``(M, B)``) over minibatches: ``(M, n_cells)``.

        With ``member`` only that member is computed (``M = 1``); ``adata`` is validated.
        """
        self._check_if_trained(warn=True)
        with self._only(member):
            out = [
                fn(tensors).reshape(1 if member is not None else self.n_members, -1).cpu()
                for tensors in self._seeded_batches(adata, indices, batch_size, seed)
            ]
        return torch.cat(out, dim=1).double()

    def _likelihood_output(
        self,
        values: torch.Tensor,
        adata: AnnData,
        indices,
        return_mean: bool,
        member: int | None,
        return_table: bool,
    ):
        """A float or per-cell array (scvi-tools' types), or the member/mixture table."""
        if member is not None:
            row = values[0].numpy()
            return float(row.mean()) if return_mean else row
        mixture = logmeanexp(values, dim=0).numpy()
        if not return_table:
            return float(mixture.mean()) if return_mean else mixture
        cols = [f"member_{k}" for k in range(self.n_members)]
        frame = pd.DataFrame(
            np.vstack([values.numpy(), mixture[None]]).T,
            columns=[*cols, "mixture"],
            index=self._cell_names(adata, indices),
        )
        return frame.mean(0) if return_mean else frame

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5_000,
        batch_size: int | None = None,
        return_dist: bool = False,
        member: int = 0,
        return_members: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Latent representation of one member (default member 0), or of all members stacked.

        Members' latent spaces are not aligned with each other: never average them. One
        member's codes go into ``adata.obsm`` and into any scvi-tools/scib code that
        expects ``(n_obs, n_latent)``; compare members through data-space outputs.

        Parameters
        ----------
        adata, indices, give_mean, mc_samples, batch_size, return_dist
            As in ``scvi.model.SCVI.get_latent_representation``.
        member
            The member whose latent space is returned.
        return_members
            Return every member's codes stacked, ``(K, n_obs, n_latent)`` (and the
            variances likewise with ``return_dist``); ``member`` is then ignored.

        Returns
        -------
        ``(n_obs, n_latent)`` (``(K, n_obs, n_latent)`` with ``return_members``), or a tuple
        of means and variances with ``return_dist=True``.
        """
        args = {
            "adata": adata,
            "indices": indices,
            "give_mean": give_mean,
            "mc_samples": mc_samples,
            "batch_size": batch_size,
            "return_dist": return_dist,
        }
        if not return_members:
            return self.members[self._check_member(member)].get_latent_representation(**args)
        outs = [view.get_latent_representation(**args) for view in self.members]
        if return_dist:
            return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
        return np.stack(outs)

    def get_elbo(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        member: int | None = None,
        return_table: bool = False,
        seed: int | None = 0,
    ) -> float | np.ndarray | pd.Series | pd.DataFrame:
        """ELBO (higher is better) of the ensemble, of one member, or of each member.

        The ensemble's value for a cell is ``log((1/K) sum_k exp(ELBO_k))``, a lower bound on
        the log-likelihood of the equal-weight member mixture.

        Parameters
        ----------
        adata, indices, batch_size, return_mean
            As in ``scvi.model.SCVI.get_elbo``.
        member
            Compute only this member (its ELBO, as ``model.members[k].get_elbo``).
        return_table
            Return every member and the mixture: a ``Series`` of means over cells, or a
            cells x (``member_0`` ... ``mixture``) ``DataFrame`` with ``return_mean=False``.
        seed
            Seed of the latent sample (``None``: the global torch generator).

        Returns
        -------
        A float (mean over cells), a per-cell array with ``return_mean=False``, or the table.
        """
        adata = self._validate_anndata(adata)
        values = self._stream(self.module.member_elbo, adata, indices, batch_size, seed, member)
        return self._likelihood_output(values, adata, indices, return_mean, member, return_table)

    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1_000,
        batch_size: int | None = None,
        return_mean: bool = True,
        member: int | None = None,
        return_table: bool = False,
        seed: int | None = 0,
        n_mc_samples_per_pass: int = 25,
    ) -> float | np.ndarray | pd.Series | pd.DataFrame:
        """Importance-sampled log p(x) of the ensemble, of one member, or of each member.

        The ensemble's value is ``log((1/K) sum_k p_k(x))``: the log-likelihood of its
        predictive distribution, the number to compare with one scVI model.

        Parameters
        ----------
        adata, indices, n_mc_samples, batch_size, return_mean
            As in ``scvi.model.SCVI.get_marginal_ll``.
        member, return_table, seed
            As in :meth:`get_elbo`.
        n_mc_samples_per_pass
            Importance samples decoded at once (memory: samples x members x cells x genes).

        Returns
        -------
        Same types as :meth:`get_elbo`.
        """

        def fn(tensors):
            return self.module.marginal_ll(
                tensors, n_mc_samples=n_mc_samples, n_mc_samples_per_pass=n_mc_samples_per_pass
            )

        adata = self._validate_anndata(adata)
        values = self._stream(fn, adata, indices, batch_size, seed, member)
        return self._likelihood_output(values, adata, indices, return_mean, member, return_table)

    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        member: int | None = None,
        seed: int | None = 0,
    ) -> dict[str, float | np.ndarray]:
        """``-log p(x | z)`` from one latent sample, of the ensemble (mixture) or one member.

        The ensemble's value is ``-log((1/K) sum_k p_k(x | z_k))``.

        Parameters
        ----------
        adata, indices, batch_size, return_mean
            As in ``scvi.model.SCVI.get_reconstruction_error``.
        member
            Compute only this member.
        seed
            Seed of the latent sample (``None``: the global torch generator).

        Returns
        -------
        ``{"reconstruction_loss": value}`` as scvi-tools (a mean, or per cell).
        """

        def fn(tensors):
            x = tensors[REGISTRY_KEYS.X_KEY]
            return self.module.predictive(tensors).log_prob_sum(x, self.module.gene_likelihood)

        adata = self._validate_anndata(adata)
        values = self._stream(fn, adata, indices, batch_size, seed, member)
        log_p = values[0] if member is not None else logmeanexp(values, dim=0)
        rec = -log_p.numpy()
        return {"reconstruction_loss": float(rec.mean()) if return_mean else rec}

    def get_latent_library_size(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        member: int | None = None,
    ) -> np.ndarray:
        """Library size (counts) of each cell: the member average, or one member's.

        With the observed library size (the default) every member returns the cell's total
        count.

        Parameters
        ----------
        adata, indices, give_mean, batch_size
            As in ``scvi.model.SCVI.get_latent_library_size``.
        member
            Only this member's (``model.members[k].get_latent_library_size``).

        Returns
        -------
        ``(n_obs, 1)``, as scvi-tools.
        """
        args = {"adata": adata, "indices": indices, "give_mean": give_mean}
        if member is not None:
            return self.members[self._check_member(member)].get_latent_library_size(
                **args, batch_size=batch_size
            )
        return np.mean(
            [m.get_latent_library_size(**args, batch_size=batch_size) for m in self.members], 0
        )
