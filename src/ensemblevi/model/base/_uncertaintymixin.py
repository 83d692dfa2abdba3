"""Ensemble uncertainty of normalised expression: the three variance parts, dense or streamed.

The formulas are in :mod:`ensemblevi.model._uncertainty`; this mixin feeds them the
members' predictive per minibatch and writes the results into the AnnData on request.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from ensemblevi._constants import VARIANCE_PARTS, chunk_size
from ensemblevi.data._validate import is_collection
from ensemblevi.module._predictive import Predictive

from ._ensemblemixin import EnsembleMixin
from ._uncertainty import UncertaintySummary, decompose_members


class UncertaintyMixin(EnsembleMixin):
    """``get_uncertainty`` and ``iter_uncertainty`` of an ensemble model."""

    @torch.inference_mode()
    def get_uncertainty(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        gene_list: Sequence[str] | None = None,
        n_samples: int = 25,
        library_size: float = 1e4,
        batch_size: int | None = None,
        seed: int = 0,
        key_added: str | None = None,
        store_layers: bool = True,
        progress: bool = True,
        return_frames: bool = True,
    ) -> dict[str, pd.DataFrame]:
        """Posterior mean of normalised expression and the three parts of its variance.

        For each cell and gene, ``n_samples`` latent samples of each of the K members give
        the mean normalised expression (per ``library_size`` counts) and the variance of
        the cell's normalised count split by the law of total variance into
        ``var_between`` (between members: model uncertainty), ``var_within`` (within a
        member: latent-posterior uncertainty) and ``var_noise`` (the count model's noise);
        see :mod:`ensemblevi.model._uncertainty` for the formulas.

        Parameters
        ----------
        adata, indices, gene_list, batch_size
            Cells and genes to compute, as in ``get_normalized_expression``.
        n_samples
            Latent samples per member and cell.
        library_size
            Counts per cell the expression is expressed in.
        seed
            Seed of the latent samples; the global random state is not touched.
        key_added
            Write the results into ``adata`` under this prefix (nothing is written when
            ``None``, the default): per-gene summaries to ``adata.var`` (``<key>_mean``,
            ``<key>_var_between``, ``<key>_var_within``, ``<key>_var_noise``: means over
            cells; ``<key>_cv_between``: mean over cells of ``sqrt(var_between) / mean``;
            ``<key>_frac_between``: between-member share of between + within), per-cell
            summaries to ``adata.obs`` (``<key>_cv_between``: mean over genes of
            ``sqrt(var_between) / mean``; ``<key>_frac_between``), the settings to
            ``adata.uns[key]["uncertainty"]`` and, with ``store_layers``, the four cells x
            genes parts to ``adata.layers["<key>_<part>"]`` (NaN outside the computed cells
            and genes).
        store_layers
            With ``key_added``: also write the four dense cells x genes layers (4 x 4 bytes
            per cell and gene: 32 GB for 1M cells x 2,000 genes; turn off for large data).
        progress
            Show a progress bar.
        return_frames
            Return the four cells x genes DataFrames (default). ``False`` returns only the
            per-gene and per-cell summaries, accumulated chunk by chunk: with
            ``store_layers=False`` too, memory stays O(cells + genes) at any data size.

        Returns
        -------
        ``{"mean", "var_between", "var_within", "var_noise"}``: cells x genes DataFrames; or,
        with ``return_frames=False``, ``{"genes", "cells"}``: the summaries (genes x
        ``mean, var_between, var_within, var_noise, cv_between, frac_between``; cells x
        ``cv_between, frac_between``).
        """
        if key_added is not None and is_collection(adata):
            raise ValueError(
                "key_added writes into adata.var/obs, which an AnnCollection does not have: "
                "call get_uncertainty(..., return_frames=False) without key_added and keep "
                "the returned per-gene and per-cell summaries."
            )
        adata, idx, mask = self._uncertainty_cells_genes(adata, indices, gene_list, n_samples)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in VARIANCE_PARTS}
        summary = UncertaintySummary(len(idx), int(mask.sum()))
        chunks = self._uncertainty_chunks(
            adata, idx, mask, n_samples, library_size, batch_size, seed, progress
        )
        start = 0
        for _, res, _, _ in chunks:
            n = res.mean.shape[0]
            summary.add(np.arange(start, start + n), res)
            start += n
            if return_frames or (key_added is not None and store_layers):
                for name, value in zip(VARIANCE_PARTS, res, strict=True):
                    parts[name].append(value.float().cpu())
        obs_names, var_names = adata.obs_names[idx], adata.var_names[mask]
        frames = {
            name: pd.DataFrame(torch.cat(v).numpy(), index=obs_names, columns=var_names)
            for name, v in parts.items()
            if v
        }
        genes, cells = summary.genes(var_names), summary.cells(obs_names)
        if key_added is not None:
            settings = {"n_samples": int(n_samples), "library_size": float(library_size)}
            settings["seed"] = int(seed)
            self._store_uncertainty(
                adata,
                idx,
                mask,
                frames if store_layers else {},
                genes,
                cells,
                key_added,
                settings,
            )
        return frames if return_frames else {"genes": genes, "cells": cells}

    def iter_uncertainty(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        gene_list: Sequence[str] | None = None,
        n_samples: int = 25,
        library_size: float = 1e4,
        batch_size: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> Iterator[tuple[np.ndarray, Any, torch.Tensor]]:
        """Stream :meth:`get_uncertainty` over cell chunks, for reductions in bounded memory.

        Yields ``(cell_positions, parts, member_means)`` per minibatch: the positions in
        ``adata`` of the chunk's cells, the :class:`~ensemblevi.model.VarianceParts` of the
        chunk (each ``(B, G)``) and the members' means over latent samples ``(K, B, G)``
        (normalised expression per ``library_size``), for the genes of ``gene_list``.

        Parameters
        ----------
        adata, indices, gene_list, n_samples, library_size, batch_size, seed, progress
            As in :meth:`get_uncertainty`.
        """
        adata, idx, mask = self._uncertainty_cells_genes(adata, indices, gene_list, n_samples)
        chunks = self._uncertainty_chunks(
            adata, idx, mask, n_samples, library_size, batch_size, seed, progress
        )
        return (chunk[:3] for chunk in chunks)

    def _uncertainty_cells_genes(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        gene_list: Sequence[str] | None,
        n_samples: int,
    ) -> tuple[AnnData, np.ndarray, np.ndarray]:
        """The checked AnnData, the cells' positions and the gene mask of one request."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
        self._check_if_trained(warn=True)
        adata = self._validate_anndata(adata)
        mask = self._gene_mask(adata, gene_list)
        idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        return adata, idx, mask

    @torch.inference_mode()
    def _uncertainty_chunks(
        self,
        adata: AnnData,
        idx: np.ndarray,
        mask: np.ndarray,
        n_samples: int,
        library_size: float,
        batch_size: int | None,
        seed: int,
        progress: bool,
        elbo: bool = False,
    ) -> Iterator[tuple[np.ndarray, Any, torch.Tensor, torch.Tensor | None]]:
        """:meth:`iter_uncertainty` on cells and genes already checked.

        Yields a fourth item: with ``elbo``, the members' ELBO of the chunk's cells
        ``(K, B)`` from the first latent sample (``module.elbo_of``), else ``None``.
        """
        if batch_size is None:
            # bound the (samples, members, cells, genes) tensor to the float budget
            batch_size = chunk_size(n_samples * self.n_members * adata.n_vars, 1, 256)
        batches = self._seeded_batches(
            adata, idx, batch_size, seed, "ensemble uncertainty" if progress else None
        )
        # all genes: no index (an index_select would copy the (S, K, B, G) tensors)
        gene_idx = None if mask.all() else torch.from_numpy(np.flatnonzero(mask))
        start = 0
        for tensors in batches:
            pred = self.module.predictive(tensors, n_samples=n_samples)
            member_elbo = None
            if elbo:  # read before the decomposition overwrites the prediction's buffers
                x = tensors[REGISTRY_KEYS.X_KEY]
                member_elbo = self.module.elbo_of(pred, x)
            inputs = _variance_inputs(pred, gene_idx)
            # the noise goes into the rate's buffer (the ELBO above was its last reader)
            out = pred.rate if gene_idx is None and pred.std is None else None
            if out is not None and (out.shape != pred.scale.shape or not out.is_contiguous()):
                out = None
            del pred  # its scale, zero-inflation logits and rate are overwritten below
            res, members = decompose_members(
                **inputs, library_size=library_size, overwrite=True, out=out
            )
            n = res.mean.shape[0]
            yield idx[start : start + n], res, members, member_elbo
            start += n

    def _store_uncertainty(
        self,
        adata: AnnData,
        idx: np.ndarray,
        mask: np.ndarray,
        frames: dict[str, pd.DataFrame],
        genes: pd.DataFrame,
        cells: pd.DataFrame,
        key: str,
        settings: dict[str, Any],
    ) -> None:
        """Write the parts (NaN outside the computed cells and genes) and the summaries."""
        cols = np.flatnonzero(mask)
        for name, frame in frames.items():
            layer = np.full(adata.shape, np.nan, dtype=np.float32)
            layer[np.ix_(idx, cols)] = frame.to_numpy()
            adata.layers[f"{key}_{name}"] = layer
        for column, values in genes.items():
            full = np.full(adata.n_vars, np.nan)
            full[cols] = values.to_numpy()
            adata.var[f"{key}_{column}"] = full
        for column, values in cells.items():
            full = np.full(adata.n_obs, np.nan)
            full[idx] = values.to_numpy()
            adata.obs[f"{key}_{column}"] = full
        adata.uns.setdefault(key, {})["uncertainty"] = {
            "ensemble": self.ensemble,
            "n_members": self.n_members,
            **settings,
            "n_cells": len(idx),
            "n_genes": len(cols),
            "layers": [f"{key}_{n}" for n in frames],
        }


def _variance_inputs(
    pred: Predictive, genes: torch.Tensor | None
) -> dict[str, torch.Tensor | None]:
    """The inputs of :func:`decompose_variance` for the selected genes (``None``: all)."""

    def sel(t):
        return t if t is None or genes is None else t.index_select(-1, genes.to(t.device))

    return {
        "scale": sel(pred.scale),
        "library": pred.library.exp(),
        "theta": sel(pred.theta),
        "zi_logits": sel(pred.zi_logits),
        "std": sel(pred.std),  # a Normal likelihood's noise (theta is then None)
    }
