"""Ensemble versions of scvi-tools' ``RNASeqMixin`` outputs: expression and DE.

Data-space outputs are the ensemble's: normalised expression averaged over members (or
stacked), denoised samples and posterior predictive counts from the member mixture, and
differential expression with the pooled members' posterior (:mod:`._de_core`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi.model.base import RNASeqMixin

from ensemblevi._compat import batch_codes

from . import _de_core, _de_settings
from ._de_settings import de_docs
from ._ensemblemixin import EnsembleMixin
from ._members import MemberOnly
from ._refused import REFUSED


class EnsembleRNASeqMixin(EnsembleMixin, RNASeqMixin):
    """Normalised expression, denoised samples and differential expression of an ensemble;
    the methods about one member's count distribution or posterior are per member."""

    get_likelihood_parameters = MemberOnly()
    get_importance_weights = MemberOnly()

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Sequence[int | str] | int | str | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        n_samples_overall: int | None = None,
        weights: Literal["uniform", "importance"] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        silent: bool = True,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        data_loader_kwargs: dict | None = None,
        member: int | None = None,
        return_members: bool = False,
        seed: int | None = None,
        **importance_weighting_kwargs: Any,
    ) -> np.ndarray | pd.DataFrame:
        """Normalised expression: the member average (how an ensemble predicts), or members.

        Parameters
        ----------
        adata, indices, gene_list, n_samples, batch_size, return_mean, return_numpy
            As in ``scvi.model.SCVI.get_normalized_expression``.
        transform_batch
            Decode as if from this batch category (its name in ``obs``); a list averages over
            those batches, as scvi-tools does.
        library_size
            Counts per cell the expression is scaled to, or ``"latent"`` for the modelled
            mean counts of each cell.
        n_samples_overall
            As scvi-tools: ``(n_samples_overall, n_genes)`` draws of the expression of random
            cells of ``indices``, here from the member mixture (each draw's member uniform).
        weights
            ``"uniform"`` (or ``None``). ``"importance"`` weighs one member's latent draws
            by that member's posterior: pass ``member=k`` (scvi-tools' own on member k).
        silent
            Hide the progress bar.
        dataloader, data_loader_kwargs
            As in scvi-tools: a custom loader replaces ``adata``/``indices``/``batch_size``
            (a numpy array is returned, as scvi-tools does).
        member
            Only this member, through scvi-tools' own implementation (``model.members[k]``):
            exactly what ``scvi.model.SCVI`` returns, importance weighting included.
        return_members
            Every member stacked: ``(K, n_obs, n_genes)``, or ``(K, n_samples, n_obs,
            n_genes)`` with ``n_samples > 1`` and ``return_mean=False``.
        seed
            Seed of the latent samples (``None``: the global torch generator).
        **importance_weighting_kwargs
            scvi-tools' importance-weighting options: only with ``member=k`` and
            ``weights="importance"``.

        Returns
        -------
        The member average as an ``n_obs x n_genes`` DataFrame (numpy with
        ``return_numpy=True`` or a ``dataloader``, or ``(n_samples, n_obs, n_genes)`` numpy
        when samples are kept, as scvi-tools), or the stacked members.
        """
        if member is not None and not return_members:
            return self.members[self._check_member(member)].get_normalized_expression(
                adata=adata,
                indices=indices,
                transform_batch=transform_batch,
                gene_list=gene_list,
                library_size=library_size,
                n_samples=n_samples,
                n_samples_overall=n_samples_overall,
                weights=weights,
                batch_size=batch_size,
                return_mean=return_mean,
                return_numpy=return_numpy,
                silent=silent,
                dataloader=dataloader,
                data_loader_kwargs=data_loader_kwargs,
                **importance_weighting_kwargs,
            )
        if weights not in (None, "uniform"):
            raise ValueError(
                f"get_normalized_expression(weights={weights!r}): "
                f"{REFUSED[('get_normalized_expression', 'weights')]}."
            )
        if importance_weighting_kwargs:
            raise TypeError(
                "get_normalized_expression got unexpected keyword arguments "
                f"{sorted(importance_weighting_kwargs)}; if they are importance-weighting options: "
                f"{REFUSED[('get_normalized_expression', '**importance_weighting_kwargs')]}."
            )
        self._check_dataloader(
            "get_normalized_expression",
            adata,
            dataloader,
            indices=indices,
            batch_size=batch_size,
            data_loader_kwargs=data_loader_kwargs,
        )
        if n_samples_overall is not None:
            if n_samples != 1 or return_members:
                raise ValueError(
                    "n_samples_overall draws n_samples itself (as scvi-tools): leave "
                    "n_samples at 1 and return_members False."
                )
            n_cells = self._validate_anndata(adata).n_obs if indices is None else len(indices)
            n_samples = n_samples_overall // max(n_cells, 1) + 1
        self._check_if_trained(warn=True)
        adata_ = self._validate_anndata(adata) if dataloader is None else self.adata
        mask = torch.from_numpy(self._gene_mask(adata_, gene_list))
        codes = batch_codes(self.get_anndata_manager(adata_, required=True), transform_batch)
        chunks = []
        batches = self._seeded_batches(
            None if dataloader is not None else adata_,
            indices,
            batch_size,
            seed,
            None if silent else "normalised expression",
            dataloader,
            data_loader_kwargs,
        )
        for tensors in batches:
            per_batch = []
            for code in codes:
                pred = self.module.predictive(tensors, n_samples=n_samples, transform_batch=code)
                values = pred.rate if library_size == "latent" else pred.scale * library_size
                per_batch.append(values[..., mask])
            chunks.append(torch.stack(per_batch).mean(0).cpu())  # (S, K, B, G)
        values = torch.cat(chunks, dim=2).numpy()
        if n_samples_overall is not None:
            rng = np.random.default_rng(seed)
            pooled = values.reshape(-1, values.shape[-1])  # every (sample, member, cell)
            return pooled[rng.choice(len(pooled), n_samples_overall, replace=True)]
        if return_mean or n_samples == 1:
            values = values.mean(0)  # (K, n, G)
        else:
            values = values.swapaxes(0, 1)  # (K, S, n, G)
        if return_members:
            return values
        mean = values.mean(0)
        if return_numpy or mean.ndim != 2 or dataloader is not None:
            return mean
        return pd.DataFrame(
            mean, index=self._cell_names(adata_, indices), columns=adata_.var_names[mask.numpy()]
        )

    @torch.inference_mode()
    def _get_denoised_samples(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 25,
        batch_size: int = 64,
        rna_size_factor: int = 1000,
        transform_batch: int | None = None,
    ) -> np.ndarray:
        """scvi-tools' denoised samples (Gamma around the NB mean), from the member mixture.

        Used by the inherited ``get_feature_correlation_matrix``: each cell's each sample
        comes from a member drawn uniformly at random.
        """
        if self.module.gene_likelihood in ("poisson", "normal"):
            raise ValueError(
                "Denoised samples (and get_feature_correlation_matrix) need a count "
                f"dispersion, which gene_likelihood={self.module.gene_likelihood!r} has not: "
                "train with gene_likelihood='nb' or 'zinb'."
            )
        adata = self._validate_anndata(adata)
        out = []
        for tensors in self._seeded_batches(adata, indices, batch_size, seed=None):
            pred = self.module.predictive(tensors, n_samples, transform_batch=transform_batch)
            choose = pred.mixture_draw()
            rate, theta = choose(rna_size_factor * pred.scale), choose(pred.theta)
            data = torch.distributions.Gamma(theta, theta / rate).sample().cpu().numpy()
            out.append(data[0] if n_samples == 1 else np.transpose(data, (1, 2, 0)))
        return np.concatenate(out, axis=0)

    @de_docs.dedent
    def differential_expression(
        self,
        adata: AnnData | None = None,
        *,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["change", "vanilla"] | None = None,
        delta: float | None = 0.5,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        weights: Literal["uniform", "importance"] | None = "uniform",
        filter_outlier_cells: bool = False,
        importance_weighting_kwargs: dict | None = None,
        estimand: Literal["counts", "population"] = "counts",
        n_samples: int | None = None,
        max_cells: int | None = None,
        pseudocounts: float | None = None,
        seed: int = 0,
        key_added: str | None = None,
        progress: bool = True,
        null_check: bool = False,
        n_null: int = 3,
        sample_key: str | None = None,
        method: Literal["counts", "ensemble", "pseudobulk"] | None = None,
        design: Literal["auto", "between", "paired"] = "auto",
        lfc_threshold: float = 0.0,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Differential expression with the ensemble posterior, in scvi-tools' call forms.

        The default is the ``counts`` estimand: each gene's LFC from the groups' mean
        normalised counts, calibrated by empirical Bayes within strata of the ensemble's
        posterior probability of a change, called at a posterior expected FDR. With samples
        (``sample_key``, or registered by ``setup_anndata``) the test compares samples.
        scvi-tools' single-member result is ``model.members[k].differential_expression(...)``.
        Writes nothing into ``adata`` unless ``key_added`` is given (as scvi-tools);
        ``ensemblevi.tl.differential_expression`` is the same call, writing by default.

        Parameters
        ----------
        %(de_params)s

        Returns
        -------
        %(de_returns)s
        """
        settings = _de_settings.DESettings.from_call(locals())
        return _de_core.ensemble_de(
            self,
            adata,
            groupby=groupby,
            group1=group1,
            group2=group2,
            idx1=idx1,
            idx2=idx2,
            settings=settings,
            key_added=key_added,
        )
