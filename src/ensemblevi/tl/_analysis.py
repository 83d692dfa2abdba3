"""The run's uncertainty analysis in one streamed pass through the decoders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from ._embedding import UMAP_KEY, umap
from ._novelty import _check_novelty, cell_count_terms, flag_novel_cells, novelty_scores
from ._novelty_rule import MIN_VALIDATION_CELLS
from ._spread import KEY, SpreadReducer, _settings, gene_summary, write_gene_uncertainty
from ._stream import ElboReducer, SummaryReducer, stream


class _LogExpression:
    """``log1p`` of every cell's member-averaged denoised expression (float32), for a UMAP."""

    cells = None
    genes = None

    def __init__(self, n_obs: int, n_vars: int) -> None:
        self.values = np.empty((n_obs, n_vars), dtype=np.float32)

    def add(self, pos: np.ndarray, parts, members: torch.Tensor) -> None:
        self.values[pos] = parts.mean.float().log1p().cpu().numpy()


def uncertainty_analysis(
    model,
    adata: AnnData | None = None,
    markers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    *,
    groupby: str | None = None,
    n_samples: int = 10,
    library_size: float = 1e4,
    cv_threshold: float = 0.1,
    alpha: float = 0.05,
    genes: bool = True,
    novelty: bool | None = None,
    embedding: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    key_added: str = KEY,
    progress: bool = True,
    sample_key: str | None = None,
) -> dict[str, Any]:
    """Marker spread, gene uncertainty, cell novelty and a UMAP from one pass over the cells.

    Each analysis is a reducer of the same streamed chunks (``EnsembleSCVI.
    iter_uncertainty`` over all cells), so the members decode every cell once: the
    results and what is written into ``adata`` are those of
    :func:`~ensemblevi.tl.gene_uncertainty` and :func:`~ensemblevi.tl.cell_novelty` with
    the same ``n_samples``, ``library_size`` (``cell_novelty`` uses 1e4) and ``seed``, and
    those of :func:`~ensemblevi.tl.expression_spread` on the latent draws of the full pass
    (identical to a separate call when the marker groups hold every cell; otherwise a
    separate call draws other latent samples for the same estimates).

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata
        AnnData registered with the model (default: the model's).
    markers
        Marker set ``{group: [genes]}`` or gene list for the expression spread
        (``None``: no spread).
    groupby
        ``obs`` column of the cell groups (spread groups, per-group gene scores).
    n_samples
        Latent samples per member and cell, for every analysis.
    library_size
        Counts per cell the denoised expression is expressed in.
    cv_threshold
        The spread's threshold of an uncertain cell (stored for the figures).
    alpha
        Target false-positive rate of the novelty rule.
    genes
        Score every gene (:func:`~ensemblevi.tl.gene_uncertainty`).
    novelty
        Score and flag every cell (:func:`~ensemblevi.tl.cell_novelty`); ``None``: when
        the model has at least 2 members and 40 validation cells.
    embedding
        Store a UMAP of ``log1p`` of the pass' mean denoised expression in
        ``adata.obsm["X_umap_ensemblevi"]`` (:func:`~ensemblevi.tl.umap`; holds one
        float32 cells x genes matrix while the pass runs).
    seed
        Seed of the latent samples (and of the novelty calibration half and the UMAP).
    batch_size
        Cells per chunk (``None``: ``iter_uncertainty``'s memory-bounded default).
    key_added
        Prefix of everything written, as in the separate functions.
    progress
        Show a progress bar.
    sample_key
        ``obs`` column of the samples: with whole samples kept out of training
        (:func:`~ensemblevi.tl.sample_split`), the novelty thresholds are set on their
        cells, as :func:`~ensemblevi.tl.cell_novelty`'s ``sample_key`` does.

    Returns
    -------
    ``{"spread", "genes", "novelty"}``: the separate functions' return values (``None``
    for an analysis not run).
    """
    adata = model._validate_anndata(adata)
    if novelty is None:  # the rule needs disagreement and held-out cells to calibrate on
        val = getattr(model, "validation_indices", None)
        n_val = 0 if val is None else len(val)
        novelty = model.n_members > 1 and n_val >= MIN_VALIDATION_CELLS
    if novelty:
        _check_novelty(model, alpha)
    spread = None if markers is None else SpreadReducer(adata, markers, groupby)
    summary, names = gene_summary(adata, groupby) if genes or novelty else (None, [])
    expression = _LogExpression(adata.n_obs, adata.n_vars) if embedding else None
    # the novelty ELBOs come from the same pass (its first latent sample)
    elbo = ElboReducer(model.n_members, adata.n_obs) if novelty else None
    reducers = [
        r
        for r in (spread, None if summary is None else SummaryReducer(summary), expression, elbo)
        if r is not None
    ]
    stream(model, adata, reducers, n_samples, library_size, seed, batch_size, progress)
    settings = _settings(model, groupby, n_samples, library_size, seed)
    out: dict[str, Any] = {"spread": None, "genes": None, "novelty": None}
    if spread is not None:
        out["spread"] = spread.finish(adata, cv_threshold, settings, key_added)
    if genes:
        out["genes"] = write_gene_uncertainty(adata, summary, names, groupby, settings, key_added)
    if novelty:
        terms = cell_count_terms(model, adata)
        scores = novelty_scores(summary, elbo.values, adata.obs_names, terms)
        info = {"n_samples": int(n_samples), "seed": int(seed)}
        out["novelty"] = flag_novel_cells(
            model, adata, scores, alpha, info, key_added, progress=progress, sample_key=sample_key
        )
    if expression is not None:
        umap(adata, expression.values, UMAP_KEY, seed=seed)
        del expression
    return out
