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
from ensemblevi._constants import DE_KEY

from . import _de_core
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

    def differential_expression(
        self,
        adata: AnnData | None = None,
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
        estimand: Literal["counts", "population", "cell_pairs"] = "counts",
        n_samples: int | None = None,
        max_cells: int | None = None,
        pseudocounts: float | None = None,
        seed: int = 0,
        key_added: str | None = DE_KEY,
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
        posterior probability of a change, called at a posterior expected FDR;
        ``estimand="population"`` is the model alone (the LFC of the groups' median log2
        expression per posterior draw); ``mode="change"``/``"vanilla"`` are scvi-tools' own
        modes on the ensemble posterior (``change``: LFCs of random single-cell pairs).
        scvi-tools' single-member result is ``model.members[k].differential_expression(...)``.

        Parameters
        ----------
        adata, groupby, group1, group2, idx1, idx2, mode, delta, batch_size, all_stats
            As in :func:`ensemblevi.model.base.ensemble_de` (scvi-tools' arguments).
        batch_correction, batchid1, batchid2, fdr_target, silent, weights
            As in :func:`ensemblevi.model.base.ensemble_de` (scvi-tools' arguments).
        filter_outlier_cells, importance_weighting_kwargs
            As in :func:`ensemblevi.model.base.ensemble_de` (scvi-tools' arguments).
        estimand, n_samples, max_cells, pseudocounts, seed, key_added, progress
            As in :func:`ensemblevi.model.base.ensemble_de`.
        null_check, n_null
            Check the test on random halves of ``group1`` (no true change) and warn on calls
            there; as in :func:`ensemblevi.model.base.ensemble_de`.
        sample_key, method, design, lfc_threshold
            Biological replicates: compare samples, not cells; as in
            :func:`ensemblevi.model.base.ensemble_de`.
        **kwargs
            scvi-tools' ``get_bayes_factors`` keywords, where they apply (see
            :func:`ensemblevi.model.base.ensemble_de`).

        Returns
        -------
        The DE table, one row per gene and comparison (see
        :func:`ensemblevi.model.base.ensemble_de`).
        """
        return _de_core.ensemble_de(
            self,
            adata,
            groupby=groupby,
            group1=group1,
            group2=group2,
            idx1=idx1,
            idx2=idx2,
            mode=mode,
            delta=delta,
            batch_size=batch_size,
            all_stats=all_stats,
            batch_correction=batch_correction,
            batchid1=batchid1,
            batchid2=batchid2,
            fdr_target=fdr_target,
            silent=silent,
            weights=weights,
            filter_outlier_cells=filter_outlier_cells,
            importance_weighting_kwargs=importance_weighting_kwargs,
            estimand=estimand,
            n_samples=n_samples,
            max_cells=max_cells,
            pseudocounts=pseudocounts,
            seed=seed,
            key_added=key_added,
            progress=progress,
            null_check=null_check,
            n_null=n_null,
            sample_key=sample_key,
            method=method,
            design=design,
            lfc_threshold=lfc_threshold,
            **kwargs,
        )
