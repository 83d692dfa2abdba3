"""Simulated counts with biological replicates (samples) and a known condition effect.

Real studies have several samples (donors, patients, mice) per condition, and genes vary
between samples beyond what cells show: a test that treats cells as replicates calls those
sample differences as changes (Squair et al. 2021). :func:`synthetic_replicates` draws
negative-binomial counts with

- a per-sample, per-gene random effect ``u[s, g] ~ N(0, sample_sd^2)`` on the natural-log
  scale (a log-normal multiplicative factor ``exp(u)``), shared by every cell of the sample;
- cell types shared by all samples (each type's log2 change against the first type);
- a condition: ``"between"`` assigns each sample to ``ctrl`` or ``stim`` (half each);
  ``"paired"`` puts both conditions in every sample (each cell's condition at random), and
  each sample's response to ``stim`` varies by ``response_sd`` (a sample x condition
  effect, so pairing does not remove all sample variation);
- the truth: ``var["lfc_stim_vs_ctrl"]`` is the generating log2 change of ``stim`` against
  ``ctrl`` (0 for genes that do not change), ``var["is_de_stim_vs_ctrl"]`` its non-zeros.

Counts are ``Poisson(l_n * mu_{g, type} * exp(u[s, g] + e[s, c, g]) * 2^(lfc_g [stim]) *
w_ng)`` with ``w ~ Gamma(theta, 1/theta)`` (negative binomial, dispersion ``1/theta``) and a
mean-one log-normal library factor ``l_n``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

UNS_KEY = "synthetic_replicates"
DESIGNS = ("between", "paired")
_LN2 = float(np.log(2.0))


def synthetic_replicates(
    *,
    n_cells: int = 1600,
    n_genes: int = 400,
    n_samples: int = 8,
    design: Literal["between", "paired"] = "between",
    sample_sd: float = 0.3,
    response_sd: float = 0.0,
    de_frac: float = 0.2,
    lfc_range: tuple[float, float] = (0.5, 2.0),
    n_types: int = 2,
    type_de_frac: float = 0.2,
    type_lfc: float = 1.5,
    base_mean_low: float = 0.05,
    base_mean_high: float = 5.0,
    theta: float = 5.0,
    library_sd: float = 0.2,
    seed: int = 0,
) -> AnnData:
    """Counts of ``n_samples`` samples with a known condition effect (module docstring).

    Parameters
    ----------
    n_cells, n_genes
        Size of the data set; cells are spread evenly over samples.
    n_samples
        Number of samples (donors); ``"between"`` needs an even number >= 2 (half ``ctrl``,
        half ``stim``), ``"paired"`` >= 1.
    design
        ``"between"``: each sample in one condition; ``"paired"``: both in every sample.
    sample_sd
        Standard deviation of the per-sample, per-gene log effect (natural log).
    response_sd
        Standard deviation of the per-sample, per-gene log effect on ``stim`` cells only
        (the samples' varying response); 0 for none.
    de_frac
        Fraction of genes changed by the condition (half up, half down).
    lfc_range
        ``|log2 change|`` of changed genes, uniform on this range.
    n_types
        Cell types shared by all samples (``obs["cell_type"]``: ``A``, ``B``, ...).
    type_de_frac, type_lfc
        Fraction of genes that differ between each type and ``A``, by ``+-type_lfc`` (log2).
    base_mean_low, base_mean_high
        Gene means per cell (before library size), log-uniform on this range.
    theta
        Negative-binomial inverse dispersion of the cells' counts.
    library_sd
        Standard deviation of the log library factor.
    seed
        Seed; the same arguments and seed give the same data.

    Returns
    -------
    AnnData: counts (CSR float32) in ``X`` and ``layers["counts"]``; ``obs["sample"]``,
    ``obs["condition"]`` (``ctrl``/``stim``), ``obs["cell_type"]``; ``var``: ``base_mean``,
    ``lfc_stim_vs_ctrl``, ``is_de_stim_vs_ctrl``; ``varm["sample_effect"]`` (genes x
    samples, natural log), ``varm["type_lfc"]`` (genes x types, log2 against ``A``) and
    ``uns["synthetic_replicates"]`` (the arguments and the samples' conditions).
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}.")
    if design == "between" and (n_samples < 2 or n_samples % 2):
        raise ValueError(f"design='between' needs an even n_samples >= 2, got {n_samples}.")
    if n_samples < 1 or n_cells < 2 * n_samples * max(n_types, 1):
        raise ValueError(
            f"need n_samples >= 1 and n_cells >= 2 * n_samples * n_types; got "
            f"{n_cells} cells, {n_samples} samples, {n_types} types."
        )
    lo, hi = map(float, lfc_range)
    if not 0 < lo <= hi or not 0 <= de_frac <= 1 or sample_sd < 0 or response_sd < 0:
        raise ValueError(
            "need 0 < lfc_range[0] <= lfc_range[1], 0 <= de_frac <= 1 and "
            "sample_sd, response_sd >= 0."
        )
    rng = np.random.default_rng(seed)
    base_mean = np.exp(rng.uniform(np.log(base_mean_low), np.log(base_mean_high), n_genes))

    # the condition's change: half of the changed genes up, half down
    n_de = round(de_frac * n_genes)
    de_genes = rng.permutation(n_genes)[:n_de]
    lfc = np.zeros(n_genes)
    lfc[de_genes] = np.where(np.arange(n_de) < n_de // 2, 1.0, -1.0) * rng.uniform(lo, hi, n_de)

    type_lfc_mat = np.zeros((n_types, n_genes))
    n_type_de = round(type_de_frac * n_genes)
    for t in range(1, n_types):
        genes = rng.permutation(n_genes)[:n_type_de]
        type_lfc_mat[t, genes] = rng.choice([-1.0, 1.0], n_type_de) * type_lfc

    sample_effect = rng.normal(0.0, sample_sd, (n_samples, n_genes))
    response = rng.normal(0.0, response_sd, (n_samples, n_genes))

    sample = np.arange(n_cells) % n_samples
    rng.shuffle(sample)
    cell_type = rng.integers(0, n_types, n_cells)
    if design == "between":
        stim_samples = np.sort(rng.permutation(n_samples)[: n_samples // 2])
        is_stim_sample = np.isin(np.arange(n_samples), stim_samples)
        stim = is_stim_sample[sample]
    else:
        stim = rng.random(n_cells) < 0.5
        is_stim_sample = None
    size_factor = np.exp(rng.normal(-(library_sd**2) / 2, library_sd, n_cells))

    log_rate = (
        np.log(base_mean)[None, :]
        + type_lfc_mat[cell_type] * _LN2
        + sample_effect[sample]
        + stim[:, None] * (lfc[None, :] * _LN2 + response[sample])
        + np.log(size_factor)[:, None]
    )
    w = rng.gamma(theta, 1.0 / theta, (n_cells, n_genes))
    counts = sp.csr_matrix(rng.poisson(np.exp(log_rate) * w).astype(np.float32))

    types = [chr(ord("A") + t) for t in range(n_types)]
    names = [f"s{s}" for s in range(n_samples)]
    obs = pd.DataFrame(
        {
            "sample": pd.Categorical.from_codes(sample, categories=names),
            "condition": pd.Categorical(
                np.where(stim, "stim", "ctrl"), categories=["ctrl", "stim"]
            ),
            "cell_type": pd.Categorical.from_codes(cell_type, categories=types),
            "size_factor": size_factor.astype(np.float32),
        },
        index=pd.Index([f"cell_{i:06d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(
        {
            "base_mean": base_mean.astype(np.float32),
            "lfc_stim_vs_ctrl": lfc,
            "is_de_stim_vs_ctrl": lfc != 0,
        },
        index=pd.Index([f"gene_{g:05d}" for g in range(n_genes)]),
    )
    adata = AnnData(counts, obs=obs, var=var)
    adata.layers["counts"] = counts.copy()
    adata.varm["sample_effect"] = sample_effect.T.astype(np.float32)
    adata.varm["type_lfc"] = type_lfc_mat.T.astype(np.float32)
    settings: dict[str, Any] = {
        "design": design,
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_samples": n_samples,
        "sample_sd": float(sample_sd),
        "response_sd": float(response_sd),
        "de_frac": float(de_frac),
        "lfc_range": [lo, hi],
        "n_types": n_types,
        "type_de_frac": float(type_de_frac),
        "type_lfc": float(type_lfc),
        "base_mean_low": float(base_mean_low),
        "base_mean_high": float(base_mean_high),
        "theta": float(theta),
        "library_sd": float(library_sd),
        "seed": int(seed),
        "truth": "var['lfc_stim_vs_ctrl']: the generating log2 change of stim vs ctrl",
    }
    if is_stim_sample is not None:
        settings["stim_samples"] = [names[s] for s in np.flatnonzero(is_stim_sample)]
    adata.uns[UNS_KEY] = settings
    return adata


__all__ = ["DESIGNS", "synthetic_replicates"]
