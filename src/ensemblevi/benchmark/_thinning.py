"""Real counts with a known DE truth: binomial thinning of one cell type's counts.

The cells of one large cell type (PBMC 3k CD4 T cells) are split at random into two halves
``A`` and ``B``; the two halves are exchangeable, so no gene differs between them in the
population. :func:`thinning_dataset` then makes a fraction of the genes DE with a known
generating log2 fold change: for each DE gene, the counts of the half that is to be lower
are thinned, each count ``x`` replaced by ``Binomial(x, 2^-|LFC|)`` (up in B: thinned in
A; down in B: thinned in B); every other count stays as measured.
:func:`null_split` gives the same halves without thinning: every call on it is false.

Genes are chosen before the split and before thinning, on the untreated counts of the
whole cell type (:func:`ensemblevi.data.preprocess`: genes with at least ``min_counts``
counts, then ``n_top_genes`` seurat_v3 highly variable genes); the DE genes are drawn among
those, so the selection cannot depend on which genes are DE, and the truth is defined on
exactly the genes a model sees.

The truth (``var["lfc_B_vs_A"]``, ``var["is_de_B_vs_A"]``) is on normalised expected
expression, because thinning changes library sizes too. For every cell ``c`` of the cell
type (both halves, counterfactually) and each half ``h``, with ``x`` the untreated counts,
``q[h, g] = 2^-|LFC_g|`` when gene ``g`` is thinned in ``h`` (else 1),
``L[h, c] = sum_g q[h, g] x[c, g]`` the expected library size and
``rho[h, c, g] = q[h, g] x[c, g] / L[h, c]`` the expected normalised expression (a ratio
of expectations: the expectation of the ratio differs by O(1/L), L ~ 10^3 here):

    lfc_B_vs_A[g] = log2(mean_c rho[B, c, g]) - log2(mean_c rho[A, c, g])

and a gene is DE when ``|lfc_B_vs_A| >= delta``. The mean runs over all cells of the type,
so the truth has no split noise; genes not thinned get a small compositional LFC (the
other half lost counts elsewhere). Also stored: ``var["generating_lfc_B_vs_A"]`` (the
drawn LFC, 0 for non-DE genes) and ``var["median_lfc_B_vs_A"]``, the median over cells of
the per-cell ``log2(rho[B, c, g] / rho[A, c, g]) = log2(q[B, g] / q[A, g]) +
log2(L[A, c] / L[B, c])``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

#: the FDR suite's data sets built from ``pbmc3k.h5ad``
THINNING_DATASETS = ("pbmc_thinning", "pbmc_null")

TRUTH = (
    "log2 ratio of the mean over all cells of the type of the expected normalised "
    "expression q*x/sum(q*x) under B and under A (counterfactual, no split noise); "
    "DE when |lfc| >= delta"
)


def binomial_thin(
    counts: sp.csr_matrix,
    cell_half: np.ndarray,
    gene_half: np.ndarray,
    p: np.ndarray,
    rng: np.random.Generator,
) -> sp.csr_matrix:
    """Thin each count of a gene in the half it is thinned in: ``x -> Binomial(x, p_g)``.

    Parameters
    ----------
    counts
        Cells x genes integer counts.
    cell_half
        Per cell: 0 (``A``) or 1 (``B``).
    gene_half
        Per gene: the half it is thinned in (0 or 1), or -1 (never thinned).
    p
        Per gene: the probability that a count is kept (used where thinned).
    rng
        Random generator.

    Returns
    -------
    The thinned counts (a new CSR matrix, int64, explicit zeros removed).
    """
    x = sp.csr_matrix(counts, copy=True)
    x.data = np.asarray(np.rint(x.data), dtype=np.int64)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    hit = np.asarray(gene_half)[x.indices] == np.asarray(cell_half)[rows]
    keep = np.where(hit, np.asarray(p, dtype=np.float64)[x.indices], 1.0)
    x.data = rng.binomial(x.data, keep).astype(np.int64)
    x.eliminate_zeros()
    return x


def expected_truth(
    counts: sp.spmatrix | np.ndarray, gene_half: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The truth of the module docstring: (mean-based LFC, median per-cell LFC) per gene.

    Parameters
    ----------
    counts
        Untreated cells x genes counts of every cell of the type.
    gene_half
        Per gene: the half it is thinned in (0 = A, 1 = B) or -1.
    p
        Per gene: the thinning probability ``2^-|LFC|``.

    Returns
    -------
    ``lfc_B_vs_A`` and ``median_lfc_B_vs_A``, float64.
    """
    x = sp.csr_matrix(counts, dtype=np.float64)
    gene_half = np.asarray(gene_half)
    p = np.asarray(p, dtype=np.float64)
    q = np.ones((2, x.shape[1]))
    for h in (0, 1):
        q[h, gene_half == h] = p[gene_half == h]
    lib = np.stack([np.asarray(x @ q[h]).ravel() for h in (0, 1)])  # (2, cells)
    s = np.stack([np.asarray(x.T @ (1.0 / lib[h])).ravel() for h in (0, 1)])  # (2, genes)
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2(q[1] / q[0]) + np.log2(s[1] / s[0])
    lfc = np.where(np.isfinite(lfc), lfc, 0.0)  # genes without a count: no change
    med = np.log2(q[1] / q[0])[None, :] + np.log2(lib[0] / lib[1])[:, None]
    return lfc, np.median(med, axis=0)


def _pool(
    adata: AnnData,
    group_key: str,
    group: str,
    n_top_genes,
    min_counts,
    max_cells,
    rng: np.random.Generator,
) -> AnnData:
    from ensemblevi import data

    if group_key not in adata.obs:
        raise KeyError(f"obs has no column {group_key!r}; columns: {list(adata.obs.columns)}")
    cells = np.flatnonzero(adata.obs[group_key].astype(str).to_numpy() == group)
    if cells.size < 4:
        raise ValueError(f"{group!r} has {cells.size} cells in obs[{group_key!r}]; need >= 4.")
    if max_cells is not None and cells.size > max_cells:
        cells = np.sort(rng.choice(cells, size=max_cells, replace=False))
    pool = AnnData(sp.csr_matrix(adata.X[cells]), obs=adata.obs.iloc[cells][[group_key]].copy())
    pool.var_names = adata.var_names
    pool = data.preprocess(pool, n_top_genes=n_top_genes, min_counts=min_counts, copy=True)
    counts = sp.csr_matrix(pool.layers["counts"])
    ok = np.asarray(counts.sum(axis=1)).ravel() > 0  # scVI cannot use cells without counts
    return AnnData(
        counts[ok],
        obs=pool.obs.iloc[np.flatnonzero(ok)].copy(),
        var=pd.DataFrame(index=pool.var_names),
    )


def _split(n: int, rng: np.random.Generator) -> np.ndarray:
    half = np.zeros(n, dtype=np.int64)
    half[rng.permutation(n)[n // 2 :]] = 1
    return half


def _assemble(
    pool: AnnData,
    counts: sp.csr_matrix,
    half: np.ndarray,
    group_key: str,
    var: dict,
    settings: dict,
) -> AnnData:
    obs = pd.DataFrame(index=pool.obs_names)
    obs["cell_type"] = pd.Categorical(np.where(half == 1, "B", "A"), categories=["A", "B"])
    obs["batch"] = pd.Categorical(["0"] * pool.n_obs)
    obs["source_cell_type"] = pool.obs[group_key].astype(str).to_numpy()
    out = AnnData(counts.astype(np.float32), obs=obs, var=pd.DataFrame(var, index=pool.var_names))
    out.layers["counts"] = out.X.copy()
    out.uns["thinning"] = settings
    return out


def thinning_dataset(
    adata: AnnData,
    group_key: str = "cell_type",
    group: str = "CD4 T cells",
    de_fraction: float = 0.1,
    lfc_range: tuple[float, float] = (0.3, 2.0),
    seed: int = 0,
    delta: float = 0.5,
    n_top_genes: int | None = 1200,
    min_counts: int = 3,
    max_cells: int | None = None,
) -> AnnData:
    """Two random halves of one cell type, with DE made by binomial thinning (module doc).

    Parameters
    ----------
    adata
        Raw counts in ``X`` (e.g. ``pbmc3k.h5ad``).
    group_key
        ``obs`` column of the cell types.
    group
        The cell type whose cells are split.
    de_fraction
        Fraction of the (selected) genes made DE; half up in B, half down (one more down
        when the number is odd).
    lfc_range
        ``|log2 FC|`` of the DE genes is uniform on this range.
    seed
        Seed of the cell subsample, the split, the DE genes and the thinning.
    delta
        Smallest ``|lfc_B_vs_A|`` of the truth that counts as DE.
    n_top_genes
        Highly variable genes kept (on the untreated counts); ``None`` keeps all genes.
    min_counts
        Genes with fewer counts in the cell type are dropped first.
    max_cells
        Subsample the cell type to at most this many cells (small tests).

    Returns
    -------
    AnnData with thinned counts in ``X`` and ``layers["counts"]``, ``obs["cell_type"]`` in
    {A, B}, ``obs["batch"]`` (one batch), the truth in ``var`` and the settings in
    ``uns["thinning"]``.
    """
    lo, hi = map(float, lfc_range)
    if not 0 <= de_fraction <= 1 or not 0 < lo <= hi:
        raise ValueError(
            f"need 0 <= de_fraction <= 1 and 0 < lfc_range[0] <= lfc_range[1]; "
            f"got {de_fraction}, {lfc_range}"
        )
    split_seq, de_seq, thin_seq = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(split_seq)
    pool = _pool(adata, group_key, group, n_top_genes, min_counts, max_cells, rng)
    half = _split(pool.n_obs, rng)
    g = pool.n_vars
    de_rng = np.random.default_rng(de_seq)
    n_de = round(float(de_fraction) * g)
    n_up = n_de // 2
    genes = de_rng.choice(g, size=n_de, replace=False)
    size = de_rng.uniform(lo, hi, size=n_de)
    sign = np.where(np.arange(n_de) < n_up, 1.0, -1.0)
    gen_lfc = np.zeros(g)
    gen_lfc[genes] = sign * size
    gene_half = np.full(g, -1, dtype=np.int64)
    gene_half[genes] = np.where(sign > 0, 0, 1)  # up in B: A is the lower half
    p = np.exp2(-np.abs(gen_lfc))
    counts = binomial_thin(pool.X, half, gene_half, p, np.random.default_rng(thin_seq))
    lfc, med = expected_truth(pool.X, gene_half, p)
    var = {
        "is_de_B_vs_A": np.abs(lfc) >= delta,
        "lfc_B_vs_A": lfc,
        "median_lfc_B_vs_A": med,
        "generating_lfc_B_vs_A": gen_lfc,
        "thinned_in": np.array(["", "A", "B"])[gene_half + 1],
    }
    settings = {
        "kind": "thinning",
        "group_key": group_key,
        "group": group,
        "de_fraction": float(de_fraction),
        "lfc_range": [lo, hi],
        "seed": int(seed),
        "delta": float(delta),
        "n_top_genes": n_top_genes,
        "min_counts": min_counts,
        "max_cells": max_cells,
        "n_cells": int(pool.n_obs),
        "n_genes": int(g),
        "n_generating_de": n_de,
        "n_up": n_up,
        "n_down": n_de - n_up,
        "n_de": int(np.sum(var["is_de_B_vs_A"])),
        "truth": TRUTH,
    }
    return _assemble(pool, counts, half, group_key, var, settings)


def null_split(
    adata: AnnData,
    group_key: str = "cell_type",
    group: str = "CD4 T cells",
    seed: int = 0,
    delta: float = 0.5,
    n_top_genes: int | None = 1200,
    min_counts: int = 3,
    max_cells: int | None = None,
) -> AnnData:
    """The halves of :func:`thinning_dataset` (same ``seed``: same cells) without thinning.

    Parameters
    ----------
    adata
        Raw counts in ``X``.
    group_key
        ``obs`` column of the cell types.
    group
        The cell type whose cells are split.
    seed
        Seed of the cell subsample and the split.
    delta
        Recorded only: no gene is DE at any ``delta``.
    n_top_genes
        Highly variable genes kept; ``None`` keeps all genes.
    min_counts
        Genes with fewer counts in the cell type are dropped first.
    max_cells
        Subsample the cell type to at most this many cells.

    Returns
    -------
    AnnData as :func:`thinning_dataset`'s with the measured counts and an all-False truth.
    """
    split_seq = np.random.SeedSequence(seed).spawn(3)[0]
    rng = np.random.default_rng(split_seq)
    pool = _pool(adata, group_key, group, n_top_genes, min_counts, max_cells, rng)
    half = _split(pool.n_obs, rng)
    g = pool.n_vars
    zero = np.zeros(g)
    var = {
        "is_de_B_vs_A": np.zeros(g, dtype=bool),
        "lfc_B_vs_A": zero,
        "median_lfc_B_vs_A": zero,
        "generating_lfc_B_vs_A": zero,
        "thinned_in": np.array([""] * g),
    }
    settings = {
        "kind": "null",
        "group_key": group_key,
        "group": group,
        "seed": int(seed),
        "delta": float(delta),
        "n_top_genes": n_top_genes,
        "min_counts": min_counts,
        "max_cells": max_cells,
        "n_cells": int(pool.n_obs),
        "n_genes": int(g),
        "n_de": 0,
        "truth": "no gene is DE: the halves are a random split",
    }
    return _assemble(pool, sp.csr_matrix(pool.X, dtype=np.int64), half, group_key, var, settings)


def thin_by_group(
    counts: sp.spmatrix, cell_group: np.ndarray, keep: np.ndarray, rng: np.random.Generator
) -> sp.csr_matrix:
    """Thin every count by its cell's group and gene: ``x -> Binomial(x, keep[group, g])``.

    The general form of :func:`binomial_thin` (which is ``keep`` with one row per half).

    Parameters
    ----------
    counts
        Cells x genes integer counts.
    cell_group
        Per cell: its row of ``keep`` (0 .. n_groups - 1).
    keep
        ``(n_groups, n_genes)`` probabilities that a count is kept, in [0, 1].
    rng
        Random generator.

    Returns
    -------
    The thinned counts (a new CSR matrix, int64, explicit zeros removed).
    """
    keep = np.asarray(keep, dtype=np.float64)
    if keep.min() < 0 or keep.max() > 1:
        raise ValueError("keep probabilities must lie in [0, 1].")
    x = sp.csr_matrix(counts, copy=True)
    x.data = np.asarray(np.rint(x.data), dtype=np.int64)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    x.data = rng.binomial(x.data, keep[np.asarray(cell_group)[rows], x.indices]).astype(np.int64)
    x.eliminate_zeros()
    return x


def pseudo_samples(
    adata: AnnData,
    *,
    group_key: str = "cell_type",
    group: str = "CD4 T cells",
    n_samples: int = 8,
    design: str = "between",
    sample_sd: float = 0.3,
    de_fraction: float = 0.1,
    lfc_range: tuple[float, float] = (0.5, 2.0),
    seed: int = 0,
    n_top_genes: int | None = 1200,
    min_counts: int = 3,
    max_cells: int | None = None,
) -> AnnData:
    """Real counts with donor variation and a known truth: one cell type in pseudo-samples.

    The cells of ``group`` are split at random into ``n_samples`` pseudo-samples. Each
    sample ``s`` gets its own per-gene factor ``f[s, g] = exp(u[s, g])``, ``u ~ N(0,
    sample_sd^2)``, applied by binomial thinning with keep probability
    ``f[s, g] / max_s f[s, g]`` (so the log ratio of any two samples' expected counts is
    exactly ``u[s, g] - u[s', g]``: log-normal donor effects with sd ``sample_sd``).
    ``design="between"``: half of the samples are ``stim``; ``"paired"``: each sample's
    cells are split at random into ``ctrl`` and ``stim``. A fraction ``de_fraction`` of the
    genes changes with ``stim`` by a known log2 change, half up and half down, made by
    thinning the lower condition by ``2^-|lfc|`` on top of the sample's factor. With
    ``de_fraction=0`` nothing changes: every call is false.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (e.g. ``pbmc3k.h5ad``).
    group_key, group
        ``obs`` column of the cell types and the type that is split.
    n_samples
        Pseudo-samples (``"between"``: even, >= 2).
    design
        ``"between"`` or ``"paired"``.
    sample_sd
        Standard deviation of the per-sample log factors (natural log).
    de_fraction, lfc_range
        Fraction of genes changed by ``stim`` and the range of ``|log2 change|``.
    seed
        Seed of the subsample, the samples, the factors, the changed genes and the thinning.
    n_top_genes, min_counts, max_cells
        As in :func:`thinning_dataset`.

    Returns
    -------
    AnnData with thinned counts in ``X`` and ``layers["counts"]``, ``obs["sample"]``,
    ``obs["condition"]`` (``ctrl``/``stim``), ``obs["cell_type"]`` (the group), the truth
    ``var["lfc_stim_vs_ctrl"]`` (generating log2 change) and ``var["is_de_stim_vs_ctrl"]``,
    ``varm["sample_effect"]`` (genes x samples, the log factors ``u``) and the settings in
    ``uns["thinning"]``.
    """
    if design not in ("between", "paired"):
        raise ValueError(f"design must be 'between' or 'paired', got {design!r}.")
    if design == "between" and (n_samples < 2 or n_samples % 2):
        raise ValueError(f"design='between' needs an even n_samples >= 2, got {n_samples}.")
    lo, hi = map(float, lfc_range)
    if not 0 <= de_fraction <= 1 or not 0 < lo <= hi or sample_sd < 0:
        raise ValueError(
            f"need 0 <= de_fraction <= 1, 0 < lfc_range[0] <= lfc_range[1] and "
            f"sample_sd >= 0; got {de_fraction}, {lfc_range}, "
            f"{sample_sd}"
        )
    split_seq, de_seq, thin_seq = np.random.SeedSequence([seed, 34]).spawn(3)
    rng = np.random.default_rng(split_seq)
    pool = _pool(adata, group_key, group, n_top_genes, min_counts, max_cells, rng)
    n, g = pool.n_obs, pool.n_vars
    if n < 4 * n_samples:
        raise ValueError(f"{n} cells are too few for {n_samples} samples (need >= 4 each).")
    sample = np.arange(n) % n_samples
    rng.shuffle(sample)
    if design == "between":
        stim_sample = np.zeros(n_samples, dtype=bool)
        stim_sample[rng.permutation(n_samples)[: n_samples // 2]] = True
        stim = stim_sample[sample]
    else:
        stim = _split(n, rng).astype(bool)
    de_rng = np.random.default_rng(de_seq)
    u = de_rng.normal(0.0, sample_sd, (n_samples, g))
    n_de = round(float(de_fraction) * g)
    genes = de_rng.choice(g, size=n_de, replace=False)
    lfc = np.zeros(g)
    lfc[genes] = np.where(np.arange(n_de) < n_de // 2, 1.0, -1.0) * de_rng.uniform(lo, hi, n_de)
    # keep[sample, condition, gene]: the sample's factor times the condition's thinning
    keep_sample = np.exp(u - u.max(axis=0, keepdims=True))
    keep_cond = np.ones((2, g))
    keep_cond[0, lfc > 0] = np.exp2(-lfc[lfc > 0])  # up in stim: ctrl is thinned
    keep_cond[1, lfc < 0] = np.exp2(lfc[lfc < 0])
    keep = (keep_sample[:, None, :] * keep_cond[None, :, :]).reshape(2 * n_samples, g)
    counts = thin_by_group(pool.X, 2 * sample + stim, keep, np.random.default_rng(thin_seq))
    names = [f"s{s}" for s in range(n_samples)]
    obs = pd.DataFrame(index=pool.obs_names)
    obs["sample"] = pd.Categorical.from_codes(sample, categories=names)
    obs["condition"] = pd.Categorical(np.where(stim, "stim", "ctrl"), categories=["ctrl", "stim"])
    obs["cell_type"] = pd.Categorical([str(group)] * n)
    var = pd.DataFrame(
        {"lfc_stim_vs_ctrl": lfc, "is_de_stim_vs_ctrl": lfc != 0}, index=pool.var_names
    )
    out = AnnData(counts.astype(np.float32), obs=obs, var=var)
    out.layers["counts"] = out.X.copy()
    out.varm["sample_effect"] = u.T.astype(np.float32)
    out.uns["thinning"] = {
        "kind": "pseudo_samples",
        "group_key": group_key,
        "group": group,
        "n_samples": int(n_samples),
        "design": design,
        "sample_sd": float(sample_sd),
        "de_fraction": float(de_fraction),
        "lfc_range": [lo, hi],
        "seed": int(seed),
        "n_top_genes": n_top_genes,
        "min_counts": min_counts,
        "max_cells": max_cells,
        "n_cells": int(n),
        "n_genes": int(g),
        "n_de": int(n_de),
        "truth": "var['lfc_stim_vs_ctrl']: the generating log2 change (by thinning)",
    }
    return out


def load_thinning(
    name: str, path: str | Path | None, seed: int, delta: float, **kwargs
) -> AnnData | None:
    """The FDR suite's ``pbmc_thinning`` / ``pbmc_null`` from ``pbmc3k.h5ad``, or None.

    Parameters
    ----------
    name
        ``"pbmc_thinning"`` or ``"pbmc_null"``.
    path
        ``pbmc3k.h5ad`` (None or a missing file: None).
    seed
        Seed of the data set (the suite's repetition).
    delta
        Smallest |LFC| that counts as DE.
    **kwargs
        Passed to :func:`thinning_dataset` / :func:`null_split`.
    """
    import anndata as ad

    if name not in THINNING_DATASETS:
        raise ValueError(f"Unknown data set {name!r}; choose one of {THINNING_DATASETS}.")
    if path is None or not Path(path).exists():
        return None
    raw = ad.read_h5ad(path)
    if name == "pbmc_null":
        kwargs.pop("de_fraction", None)
        kwargs.pop("lfc_range", None)
        return null_split(raw, seed=seed, delta=delta, **kwargs)
    return thinning_dataset(raw, seed=seed, delta=delta, **kwargs)


__all__ = [
    "THINNING_DATASETS",
    "binomial_thin",
    "expected_truth",
    "load_thinning",
    "null_split",
    "pseudo_samples",
    "thin_by_group",
    "thinning_dataset",
]
