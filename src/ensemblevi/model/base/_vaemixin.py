"""Ensemble versions of scvi-tools' ``VAEMixin`` outputs: latents and likelihoods.

Latent codes are one member's or stacked, never averaged (members' latent spaces are not
aligned); likelihoods are the equal-weight member mixture's, ``log((1/K) sum_k p_k(x))``,
or one member's, or a member/mixture table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.model.base import VAEMixin

from ensemblevi._constants import logmeanexp

from ._ensemblemixin import EnsembleMixin
from ._members import MemberOnly
from ._refused import refuse_kwargs


class EnsembleVAEMixin(EnsembleMixin, VAEMixin):
    """Latent representation, ELBO, marginal likelihood and reconstruction error per member
    and for the member mixture; the latent-space-only methods are per member."""

    get_aggregated_posterior = MemberOnly()
    differential_abundance = MemberOnly()

    @torch.inference_mode()
    def _stream(
        self,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        seed: int | None,
        member: int | None,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        data_loader_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Concatenate ``fn(tensors)`` (``(M, B)``) over minibatches: ``(M, n_cells)``.

        With ``member`` only that member is computed (``M = 1``); ``adata`` is validated.
        """
        self._check_if_trained(warn=True)
        batches = self._seeded_batches(
            adata,
            indices,
            batch_size,
            seed,
            dataloader=dataloader,
            data_loader_kwargs=data_loader_kwargs,
        )
        with self._only(member):
            out = [
                fn(tensors).reshape(1 if member is not None else self.n_members, -1).cpu()
                for tensors in batches
            ]
        if not out:
            raise ValueError("the dataloader yielded no minibatch: there are no cells to score.")
        return torch.cat(out, dim=1).double()

    def _likelihood_output(
        self,
        values: torch.Tensor,
        adata: AnnData | None,
        indices,
        return_mean: bool,
        member: int | None,
        return_table: bool,
        mean_type: Callable[[torch.Tensor], Any],
    ):
        """scvi-tools' types (``mean_type`` of the mean, or a per-cell float32 tensor), or the
        member/mixture table.

        The mixture and the means are taken in float64 (a mean over many cells, a log-sum-
        exp over members), then given scvi-tools' float32 like its own outputs.
        """
        if member is not None:
            row = values[0]
            return mean_type(row.mean()) if return_mean else row.float()
        mixture = logmeanexp(values, dim=0)
        if not return_table:
            return mean_type(mixture.mean()) if return_mean else mixture.float()
        cols = [f"member_{k}" for k in range(self.n_members)]
        frame = pd.DataFrame(
            np.vstack([values.numpy(), mixture.numpy()[None]]).T,
            columns=[*cols, "mixture"],
            index=self._cell_names(adata, indices) if adata is not None else None,
        )
        return frame.mean(0) if return_mean else frame

    def _loader_inputs(self, method: str, adata, indices, batch_size, dataloader, kwargs):
        """Check a custom ``dataloader`` against the other inputs; validate ``adata`` if none."""
        self._check_dataloader(
            method,
            adata,
            dataloader,
            indices=indices,
            batch_size=batch_size,
            data_loader_kwargs=kwargs,
        )
        return self._validate_anndata(adata) if dataloader is None else None

    def _per_member_view(self, method: str, dataloader, member: int | None) -> None:
        """Refuse a one-pass ``dataloader`` where every member's view reads it in turn."""
        if member is None and dataloader is not None and iter(dataloader) is dataloader:
            raise ValueError(
                f"{method} over all members reads the dataloader once per member, but this "
                "one is a one-pass iterator; pass a re-iterable loader (a torch DataLoader, "
                "e.g. model._make_data_loader(adata)) or one member with member=k."
            )

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5_000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        member: int = 0,
        return_members: bool = False,
        **data_loader_kwargs: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Latent representation of one member (default member 0), or of all members stacked.

        Members' latent spaces are not aligned with each other: never average them. One
        member's codes go into ``adata.obsm`` and into any scvi-tools/scib code that
        expects ``(n_obs, n_latent)``; compare members through data-space outputs.

        Parameters
        ----------
        adata, indices, give_mean, mc_samples, batch_size, return_dist, dataloader
            As in ``scvi.model.SCVI.get_latent_representation``; with a custom
            ``dataloader``, ``adata``, ``indices``, ``batch_size`` and loader keyword
            arguments are refused (the loader fixes the cells).
        member
            The member whose latent space is returned.
        return_members
            Return every member's codes stacked, ``(K, n_obs, n_latent)`` (and the
            variances likewise with ``return_dist``); ``member`` is then ignored. A custom
            ``dataloader`` is read once per member, so it must be re-iterable.
        **data_loader_kwargs
            Keyword arguments of the data loader built from ``adata``.

        Returns
        -------
        ``(n_obs, n_latent)`` (``(K, n_obs, n_latent)`` with ``return_members``), or a tuple
        of means and variances with ``return_dist=True``.
        """
        self._check_dataloader(
            "get_latent_representation",
            adata,
            dataloader,
            indices=indices,
            batch_size=batch_size,
            data_loader_kwargs=data_loader_kwargs,
        )
        args = {
            "adata": adata,
            "indices": indices,
            "give_mean": give_mean,
            "mc_samples": mc_samples,
            "batch_size": batch_size,
            "return_dist": return_dist,
            "dataloader": dataloader,
            **data_loader_kwargs,
        }
        if not return_members:
            return self.members[self._check_member(member)].get_latent_representation(**args)
        if dataloader is None and give_mean and self.module.latent_distribution == "normal":
            return self._all_member_latents(
                adata, indices, batch_size, return_dist, data_loader_kwargs
            )
        self._per_member_view("get_latent_representation", dataloader, None)
        outs = [view.get_latent_representation(**args) for view in self.members]
        if return_dist:
            return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
        return np.stack(outs)

    @torch.inference_mode()
    def _all_member_latents(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        return_dist: bool,
        data_loader_kwargs: dict[str, Any],
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Every member's posterior means (and variances) in one batched encoder pass.

        The module encodes all members of a minibatch at once, so the data are read once
        instead of once per member (``scvi-tools``' ``get_latent_representation`` on each
        member view, which this equals: tested for every ensemble kind).
        """
        adata = self._validate_anndata(adata)
        one = self.module.active_member is not None
        means, variances = [], []
        for tensors in self._seeded_batches(
            adata, indices, batch_size, None, data_loader_kwargs=data_loader_kwargs
        ):
            qz = self.module.inference(**self.module._get_inference_input(tensors))["qz"]
            loc = qz.loc if not one else qz.loc.unsqueeze(0)  # (K, B, L)
            means.append(loc.float().cpu())
            if return_dist:
                scale = qz.scale if not one else qz.scale.unsqueeze(0)
                variances.append(scale.float().square().cpu())
        mean = torch.cat(means, dim=1).numpy()
        if return_dist:
            return mean, torch.cat(variances, dim=1).numpy()
        return mean

    def get_elbo(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        return_mean: bool = True,
        data_loader_kwargs: dict | None = None,
        member: int | None = None,
        return_table: bool = False,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> torch.Tensor | pd.Series | pd.DataFrame:
        """ELBO (higher is better) of the ensemble, of one member, or of each member.

        The ensemble's value for a cell is ``log((1/K) sum_k exp(ELBO_k))``, a lower bound on
        the log-likelihood of the equal-weight member mixture.

        Parameters
        ----------
        adata, indices, batch_size, dataloader, return_mean, data_loader_kwargs
            As in ``scvi.model.SCVI.get_elbo``; with a custom ``dataloader``, ``adata``,
            ``indices``, ``batch_size`` and ``data_loader_kwargs`` are refused (the loader
            fixes the cells).
        member
            Compute only this member (its ELBO, as ``model.members[k].get_elbo``).
        return_table
            Return every member and the mixture: a ``Series`` of means over cells, or a
            cells x (``member_0`` ... ``mixture``) ``DataFrame`` with ``return_mean=False``.
        seed
            Seed of the latent sample (``None``: the global torch generator).
        **kwargs
            Refused (scvi-tools passes them to the module's forward pass): the error says
            what to use instead.

        Returns
        -------
        As scvi-tools: a 0-d float32 tensor (mean over cells), a per-cell ``(n_obs,)``
        tensor with ``return_mean=False`` (on the CPU); or the table.
        """
        refuse_kwargs("get_elbo", kwargs)
        adata = self._loader_inputs(
            "get_elbo", adata, indices, batch_size, dataloader, data_loader_kwargs
        )
        values = self._stream(
            self.module.member_elbo,
            adata,
            indices,
            batch_size,
            seed,
            member,
            dataloader,
            data_loader_kwargs,
        )
        return self._likelihood_output(
            values, adata, indices, return_mean, member, return_table, _tensor_mean
        )

    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1_000,
        batch_size: int | None = None,
        return_mean: bool = True,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        data_loader_kwargs: dict | None = None,
        member: int | None = None,
        return_table: bool = False,
        seed: int | None = 0,
        n_mc_samples_per_pass: int = 25,
        **kwargs: Any,
    ) -> np.float64 | torch.Tensor | pd.Series | pd.DataFrame:
        """Importance-sampled log p(x) of the ensemble, of one member, or of each member.

        The ensemble's value is ``log((1/K) sum_k p_k(x))``: the log-likelihood of its
        predictive distribution, the number to compare with one scVI model.

        Parameters
        ----------
        adata, indices, n_mc_samples, batch_size, return_mean, dataloader, data_loader_kwargs
            As in ``scvi.model.SCVI.get_marginal_ll`` (a custom ``dataloader`` as in
            :meth:`get_elbo`).
        member, return_table, seed
            As in :meth:`get_elbo`.
        n_mc_samples_per_pass
            Importance samples decoded at once (memory: samples x members x cells x genes).
        **kwargs
            Refused (scvi-tools passes them to the module's ``marginal_ll``).

        Returns
        -------
        As scvi-tools: a ``numpy.float64`` (mean over cells; scvi-tools' own is the mean of
        its minibatch means), a per-cell ``(n_obs,)`` float32 tensor with
        ``return_mean=False``; or the table.
        """
        refuse_kwargs("get_marginal_ll", kwargs)

        def fn(tensors):
            return self.module.marginal_ll(
                tensors, n_mc_samples=n_mc_samples, n_mc_samples_per_pass=n_mc_samples_per_pass
            )

        adata = self._loader_inputs(
            "get_marginal_ll", adata, indices, batch_size, dataloader, data_loader_kwargs
        )
        values = self._stream(
            fn, adata, indices, batch_size, seed, member, dataloader, data_loader_kwargs
        )
        return self._likelihood_output(
            values, adata, indices, return_mean, member, return_table, _numpy_mean
        )

    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        return_mean: bool = True,
        data_loader_kwargs: dict | None = None,
        member: int | None = None,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """``-log p(x | z)`` from one latent sample, of the ensemble (mixture) or one member.

        The ensemble's value is ``-log((1/K) sum_k p_k(x | z_k))``.

        Parameters
        ----------
        adata, indices, batch_size, dataloader, return_mean, data_loader_kwargs
            As in ``scvi.model.SCVI.get_reconstruction_error`` (a custom ``dataloader`` as
            in :meth:`get_elbo`).
        member
            Compute only this member.
        seed
            Seed of the latent sample (``None``: the global torch generator).
        **kwargs
            Refused (scvi-tools passes them to the module's forward pass).

        Returns
        -------
        ``{"reconstruction_loss": value}`` as scvi-tools: a 0-d float32 tensor (mean over
        cells) or a per-cell ``(n_obs,)`` tensor.
        """
        refuse_kwargs("get_reconstruction_error", kwargs)

        def fn(tensors):
            x = tensors[REGISTRY_KEYS.X_KEY]
            return self.module.predictive(tensors).log_prob_sum(x, self.module.gene_likelihood)

        adata = self._loader_inputs(
            "get_reconstruction_error",
            adata,
            indices,
            batch_size,
            dataloader,
            data_loader_kwargs,
        )
        values = self._stream(
            fn, adata, indices, batch_size, seed, member, dataloader, data_loader_kwargs
        )
        rec = -(values[0] if member is not None else logmeanexp(values, dim=0))
        return {"reconstruction_loss": _tensor_mean(rec.mean()) if return_mean else rec.float()}

    def get_latent_library_size(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        member: int | None = None,
        **data_loader_kwargs: Any,
    ) -> np.ndarray:
        """Library size (counts) of each cell: the member average, or one member's.

        With the observed library size (the default) every member returns the cell's total
        count.

        Parameters
        ----------
        adata, indices, give_mean, batch_size, dataloader
            As in ``scvi.model.SCVI.get_latent_library_size`` (a custom ``dataloader`` as
            in :meth:`get_latent_representation`).
        member
            Only this member's (``model.members[k].get_latent_library_size``).
        **data_loader_kwargs
            Keyword arguments of the data loader built from ``adata``.

        Returns
        -------
        ``(n_obs, 1)``, as scvi-tools.
        """
        self._check_dataloader(
            "get_latent_library_size",
            adata,
            dataloader,
            indices=indices,
            batch_size=batch_size,
            data_loader_kwargs=data_loader_kwargs,
        )
        args = {
            "adata": adata,
            "indices": indices,
            "give_mean": give_mean,
            "batch_size": batch_size,
            "dataloader": dataloader,
            **data_loader_kwargs,
        }
        if member is not None:
            return self.members[self._check_member(member)].get_latent_library_size(**args)
        self._per_member_view("get_latent_library_size", dataloader, member)
        return np.mean([m.get_latent_library_size(**args) for m in self.members], 0)


def _tensor_mean(mean: torch.Tensor) -> torch.Tensor:
    """A mean as scvi-tools' ``get_elbo`` returns it: a 0-d float32 tensor."""
    return mean.float()


def _numpy_mean(mean: torch.Tensor) -> np.float64:
    """A mean as scvi-tools' ``get_marginal_ll`` returns it: ``numpy.float64``."""
    return np.float64(mean.item())
