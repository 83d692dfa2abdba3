"""The preprocessing recipe of the project's science, on scanpy's own functions."""

from __future__ import annotations

import warnings

from anndata import AnnData

from ._validate import get_counts, validate_counts

#: smaller batches make scanpy's per-batch seurat_v3 loess fail (a 1-cell batch crashes it)
MIN_BATCH_CELLS = 50


def preprocess(
    adata: AnnData,
    n_top_genes: int | None = 1200,
    batch_key: str | None = None,
    min_counts: int = 3,
    layer: str | None = None,
    copy: bool = False,
    keep_genes: list[str] | None = None,
) -> AnnData | None:
    """Filter genes, keep counts, log-normalise and select seurat_v3 highly variable genes.

    The recipe: drop genes with fewer than ``min_counts`` counts; keep the raw counts in
    ``layers["counts"]``; normalise each cell to 1e4 and ``log1p`` into ``X``; freeze the
    full log-normalised matrix in ``raw``; select ``n_top_genes`` highly variable genes with
    scanpy's ``seurat_v3`` flavour computed on the counts (per batch when ``batch_key`` is
    given) and subset to them.

    Parameters
    ----------
    adata
        Data with raw counts in ``X`` or ``layers[layer]``. Files on disk are never touched.
    n_top_genes
        Number of highly variable genes (>= 1); ``None`` keeps all genes.
    batch_key
        ``obs`` column for batch-aware HVG selection. Batches of fewer than
        :data:`MIN_BATCH_CELLS` cells, or a per-batch fit that fails, fall back to selection
        over all cells with a warning naming the batches.
    min_counts
        Minimum total count of a gene across cells.
    layer
        Where the raw counts are (``None``: ``X``).
    copy
        Return a processed copy instead of changing ``adata`` in place.
    keep_genes
        Genes kept in the subset even when not highly variable (e.g. marker genes).

    Returns
    -------
    The processed AnnData when ``copy=True``, else ``None`` (as scanpy does).
    """
    import scanpy as sc

    if n_top_genes is not None and (int(n_top_genes) != n_top_genes or n_top_genes < 1):
        raise ValueError(
            f"n_top_genes must be a positive number of genes (or None to keep all), got "
            f"{n_top_genes!r}: 0 would leave a matrix without genes."
        )
    validate_counts(adata, layer=layer, obs_keys=[batch_key], warn_zeros=False)
    ad = adata.copy() if copy else adata
    if layer is not None:
        ad.X = get_counts(ad, layer).copy()

    sc.pp.filter_genes(ad, min_counts=min_counts)
    if ad.n_vars == 0:
        raise ValueError(
            f"No genes left after filtering with min_counts={min_counts}: every gene has "
            "fewer counts. Lower min_counts or check that the matrix holds raw counts."
        )
    # Cells left without counts cannot be normalised; scVI cannot use them either.
    sc.pp.filter_cells(ad, min_counts=1)
    if ad.n_obs == 0:
        raise ValueError(
            "No cells left: no cell has a count in the genes kept after filtering. Lower "
            "min_counts or check the input."
        )
    ad.layers["counts"] = ad.X.copy()
    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad)
    ad.raw = ad

    if n_top_genes is not None:
        if n_top_genes >= ad.n_vars:
            warnings.warn(
                f"n_top_genes={n_top_genes} >= the {ad.n_vars} genes left; keeping all of them.",
                UserWarning,
                stacklevel=2,
            )
        else:
            _highly_variable(ad, n_top_genes, batch_key)
            # genes the analysis needs (markers) stay even when not highly variable
            keep = ad.var["highly_variable"].to_numpy() | ad.var_names.isin(keep_genes or [])
            ad._inplace_subset_var(keep)
    return ad if copy else None


def _highly_variable(ad: AnnData, n_top_genes: int, batch_key: str | None) -> None:
    """seurat_v3 selection per batch, over all cells where the batches are too small for it.

    Parameters
    ----------
    ad
        Data with counts in ``layers["counts"]``; ``var["highly_variable"]`` is written.
    n_top_genes
        Genes to select.
    batch_key
        ``obs`` column of the batch, or ``None``.
    """
    import scanpy as sc

    def select(key: str | None) -> None:
        sc.pp.highly_variable_genes(
            ad, n_top_genes=n_top_genes, flavor="seurat_v3", layer="counts", batch_key=key
        )

    if batch_key is None:
        select(None)
        return
    sizes = ad.obs[batch_key].value_counts()
    small = sizes[sizes < MIN_BATCH_CELLS]
    shown = ", ".join(f"{k!r} ({v} cells)" for k, v in small.items())
    if len(small):
        warnings.warn(
            f"Batch(es) {shown} of obs[{batch_key!r}] have fewer than {MIN_BATCH_CELLS} "
            "cells, too few for per-batch highly variable gene selection; genes are selected "
            "over all cells instead (the model still corrects for the batch).",
            UserWarning,
            stacklevel=3,
        )
        select(None)
        return
    try:
        select(batch_key)
    except ValueError as err:  # scikit-misc's loess: "svddc failed in l2fit", singularities
        sizes_text = ", ".join(f"{k!r} {v}" for k, v in sizes.items())
        warnings.warn(
            f"Per-batch highly variable gene selection failed ({err}); it needs batches with "
            f"enough cells (sizes here: {sizes_text}). Genes are selected over all cells "
            "instead (the model still corrects for the batch).",
            UserWarning,
            stacklevel=3,
        )
        select(None)
