"""Differential expression with biological replicates: samples, not cells, are the unit.

Cells of one sample (donor, patient, mouse) share that sample's deviations from the
population, so a test that treats cells as replicates calls those deviations as changes
(Squair et al. 2021). With ``sample_key``, :func:`sample_de` compares samples:

1. Each (sample, side) unit with at least ``min_cells`` cells is summarised by its
   pseudobulk: summed counts ``X_ug`` and summed library ``L_u``, on a log-CPM scale
   ``y_ug = log2((X_ug + 0.5) / (L_u + 1) * 1e6)`` (voom's transform).
2. ``method="ensemble"`` replaces ``X_ug`` by each member's denoised counts (the sum over
   the unit's cells of the member's normalised expression times the cell's library), so
   there is one ``y`` per member; ``method="counts"`` is the same estimator on the raw
   counts (the model-free variant, reported beside it).
3. Design. ``between``: every sample is on one side; the LFC is the difference of the
   sides' mean ``y`` and its variance ``s^2 (1/n1 + 1/n2)`` with ``s^2`` the pooled
   between-sample variance (``n1 + n2 - 2`` df). ``paired``: both sides occur in every
   sample; per sample ``d_s = y_s1 - y_s2``, LFC the mean ``d``, variance ``s^2 / n``
   (``n - 1`` df).
4. Empirical Bayes (Smyth 2004, limma-trend): the genes' ``s^2`` are shrunk towards a prior
   ``s0^2`` that follows the mean log expression, with prior df ``d0`` estimated from the
   spread of ``log s^2``; the moderated ``t = LFC / sqrt(s_post^2 v + m)`` has ``df + d0``
   df, where ``m`` (ensemble only) is the variance of the members' LFCs (their
   disagreement, added as extra variance). ``delta > 0`` tests ``|LFC| > delta``
   (McCarthy & Smyth 2009's TREAT p-value); then Benjamini-Hochberg times Storey's
   estimate of the unchanged genes' share (:data:`P_ADJUST`).

``method="pseudobulk"`` is the reference the field uses: the same summed counts into
PyDESeq2 (``~condition`` or ``~sample + condition``), an optional dependency.
"""

from __future__ import annotations

import itertools
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ._de_calls import de_table
from ._de_moderated import adjust, design_stats, moderated_test

#: the sample-aware methods; the default is chosen in docs/de_replicates.md from measurement
SAMPLE_METHODS = ("counts", "ensemble", "pseudobulk")
DEFAULT_SAMPLE_METHOD = "counts"
DESIGNS = ("auto", "between", "paired")
#: fewer samples (or pairs) per side than this: measured not calibrated, the code warns
MIN_CALIBRATED_SAMPLES = 3
#: method="ensemble" with one member over-called from this many samples per side on, even
#: with the raw counts' variance as its floor (benchmarks): it warns
ONE_MEMBER_CALIBRATED_BELOW = 4
#: the p-value adjustment of counts/ensemble: Storey's adaptive BH, which targets the FDR
#: itself where BH holds it at (null share) x target (measured: benchmarks/de_sample_fdr.py)
P_ADJUST = "storey"
#: (sample, side) units with fewer cells are left out
MIN_CELLS = 10
PRIOR_COUNT = 0.5
#: what the calls describe, by unit of replication (table attrs, uns, CLI, report)
UNIT_STATEMENT = {
    "samples": "the calls compare samples: they describe the population the samples came "
    "from (between-sample variance is the uncertainty)",
    "cells": "the calls treat cells as replicates: they describe these cells, not the "
    "population they came from (no biological replicates were used; pass sample_key= "
    "with at least 2 samples per side)",
}
#: obs column names that look like samples (matched case-insensitively, as whole words)
SAMPLE_LIKE = (
    "donor",
    "sample",
    "patient",
    "individual",
    "orig.ident",
    "subject",
    "replicate",
    "mouse",
    "animal",
)


def sample_like_columns(
    obs: pd.DataFrame, cells1: np.ndarray, cells2: np.ndarray, exclude: tuple = ()
) -> list[str]:
    """``obs`` columns that look like biological samples among the compared cells.

    A column qualifies when its name contains one of :data:`SAMPLE_LIKE` and it has at
    least 2 values among the cells, or when it is named ``batch`` (or ``*batch*``) and has
    several values within each side.

    Parameters
    ----------
    obs
        The AnnData's ``obs``.
    cells1, cells2
        Positions of the two sides.
    exclude
        Columns not to report (e.g. the groupby column).
    """
    found = []
    for col in obs.columns:
        if col in exclude or str(col).startswith("_"):  # scvi-tools' own registry columns
            continue
        name = str(col).lower()
        values = obs[col]
        if values.dtype.kind == "f":  # continuous covariates are not samples
            continue
        v1 = values.iloc[cells1].astype(str)
        v2 = values.iloc[cells2].astype(str)
        if any(re.search(rf"(^|[^a-z]){re.escape(w)}", name) for w in SAMPLE_LIKE):
            if pd.concat([v1, v2]).nunique() >= 2 and pd.concat([v1, v2]).nunique() < len(obs):
                found.append(str(col))
        elif "batch" in name and v1.nunique() >= 2 and v2.nunique() >= 2:
            found.append(str(col))
    return found


def warn_unused_samples(
    obs: pd.DataFrame, cells1: np.ndarray, cells2: np.ndarray, exclude: tuple = ()
) -> list[str]:
    """Warn, naming the columns, when the data has sample-like columns that DE ignores.

    Parameters
    ----------
    obs, cells1, cells2, exclude
        As :func:`sample_like_columns`.

    Returns
    -------
    The columns warned about.
    """
    cols = sample_like_columns(obs, cells1, cells2, exclude)
    if cols:
        warnings.warn(
            f"DE without samples: obs has {', '.join(repr(c) for c in cols)}, which look(s) "
            "like biological samples (donors), but the test treats cells as replicates, so "
            "its calls describe these cells, not the population, and sample-to-sample "
            f"differences are called as changes. Pass sample_key={cols[0]!r} (CLI: "
            f"--sample-key {cols[0]}) to compare samples.",
            UserWarning,
            stacklevel=3,
        )
    return cols


@dataclass
class Units:
    """The (sample, side) units of a sample-aware comparison.

    Parameters
    ----------
    design
        ``"between"`` or ``"paired"``.
    samples1, samples2
        Sample names of the units on each side (``paired``: the same names, in order).
    cells1, cells2
        Per unit: the cell positions.
    dropped
        ``{sample: n_cells}`` of units dropped for having fewer than ``min_cells`` cells
        (and, paired, samples left without a partner).
    """

    design: str
    samples1: list[str]
    samples2: list[str]
    cells1: list[np.ndarray]
    cells2: list[np.ndarray]
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n1(self) -> int:
        return len(self.samples1)

    @property
    def n2(self) -> int:
        return len(self.samples2)

    @property
    def n_min(self) -> int:
        """Replicates per side: pairs (paired) or the smaller side (between)."""
        return self.n1 if self.design == "paired" else min(self.n1, self.n2)


def make_units(
    samples: np.ndarray,
    cells1: np.ndarray,
    cells2: np.ndarray,
    *,
    design: str = "auto",
    min_cells: int = 10,
) -> Units:
    """Group the two sides' cells by sample and decide the design.

    ``auto``: ``paired`` when some samples have cells on both sides (those with at least
    ``min_cells`` on each are the pairs; the others are dropped, with a warning), else
    ``between``.

    Parameters
    ----------
    samples
        Per cell of the AnnData: its sample (strings).
    cells1, cells2
        Positions of the two sides.
    design
        ``"auto"``, ``"between"`` or ``"paired"``.
    min_cells
        Units with fewer cells are dropped.
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}.")
    s1 = pd.Series(cells1).groupby(samples[cells1], sort=True).apply(np.asarray).to_dict()
    s2 = pd.Series(cells2).groupby(samples[cells2], sort=True).apply(np.asarray).to_dict()
    shared = sorted(set(s1) & set(s2))
    if design == "auto":
        design = "paired" if shared else "between"
    dropped: dict[str, int] = {}
    if design == "paired" and not shared:
        raise ValueError(
            "design='paired' needs samples with cells on both sides; no sample "
            "has both here (each is in one group): use design='between' or "
            "'auto'."
        )
    if design == "paired":
        keep = [s for s in shared if len(s1[s]) >= min_cells and len(s2[s]) >= min_cells]
        for s in sorted(set(s1) | set(s2)):
            if s not in keep:
                dropped[s] = len(s1.get(s, ())) + len(s2.get(s, ()))
        return Units("paired", keep, keep, [s1[s] for s in keep], [s2[s] for s in keep], dropped)
    if shared:
        raise ValueError(
            f"design='between' needs each sample on one side, but {len(shared)} sample(s) "
            f"have cells on both (e.g. {shared[0]!r}); use design='paired' (or 'auto')."
        )
    k1 = [s for s in s1 if len(s1[s]) >= min_cells]
    k2 = [s for s in s2 if len(s2[s]) >= min_cells]
    dropped = {s: len(c) for d, k in ((s1, k1), (s2, k2)) for s, c in d.items() if s not in k}
    return Units("between", k1, k2, [s1[s] for s in k1], [s2[s] for s in k2], dropped)


def log_cpm(
    counts: np.ndarray, library: np.ndarray, prior_count: float = PRIOR_COUNT
) -> np.ndarray:
    """voom's ``log2((x + prior) / (L + 2 prior) * 1e6)`` of pseudobulk counts.

    Parameters
    ----------
    counts
        ``(..., units, genes)`` summed (or denoised) counts.
    library
        ``(..., units)`` summed library sizes.
    prior_count
        Added to every count (and twice to the library).
    """
    return np.log2((counts + prior_count) / (library[..., None] + 2 * prior_count) * 1e6)


def pseudobulk(counts: Any, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Summed counts ``(units, genes)`` and libraries ``(units,)`` of cell groups.

    Parameters
    ----------
    counts
        Cells x genes counts (dense or sparse).
    groups
        Per unit: cell positions.
    """
    x = sparse.csr_matrix(counts)
    sums = np.stack([np.asarray(x[c].sum(axis=0), dtype=np.float64).ravel() for c in groups])
    return sums, sums.sum(axis=1)


def effective_library(sums: np.ndarray, libs: np.ndarray) -> np.ndarray:
    """Libraries corrected for composition by the median-of-ratios rule (DESeq2's, TMM's aim).

    When some genes change a lot, the others' share of the library moves with them; the
    median over genes (expressed in every unit) of a unit's ratio to the genes' geometric
    mean is that shift. ``sums`` may carry a leading member axis.

    Parameters
    ----------
    sums
        ``(..., units, genes)`` pseudobulk counts.
    libs
        ``(..., units)`` summed libraries.
    """
    with np.errstate(divide="ignore"):
        logp = np.log(sums) - np.log(libs[..., None])
    ok = np.all(np.isfinite(logp), axis=tuple(range(logp.ndim - 1)))
    if ok.sum() < 10:  # too few genes seen everywhere: keep the plain libraries
        return libs
    ratio = logp[..., ok] - logp[..., ok].mean(-2, keepdims=True)
    nf = np.median(ratio, axis=-1)
    nf = nf - nf.mean(-1, keepdims=True)
    return libs * np.exp(nf)


def member_denoised(
    model: Any,
    adata: Any,
    units: Units,
    *,
    n_samples: int = 5,
    batch_size: int | None = None,
    seed: int = 0,
    counts: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each member's denoised pseudobulk counts ``(K, units, genes)`` and the libraries.

    A cell's denoised counts are the member's normalised expression (mean of ``n_samples``
    latent draws) times the cell's observed library; a unit's are their sum.

    Parameters
    ----------
    model
        A trained ensemble.
    adata
        The AnnData of the cells.
    units
        The comparison's units; their cells are sides 1 then 2.
    n_samples, batch_size, seed
        Latent draws per cell, minibatch size, seed.
    counts
        The registered counts (cells x genes) of ``adata``.
    """
    groups = units.cells1 + units.cells2
    allc = np.concatenate(groups)
    lib = np.asarray(sparse.csr_matrix(counts)[allc].sum(axis=1), dtype=np.float64).ravel()
    rho = model.get_normalized_expression(
        adata,
        indices=allc,
        n_samples=n_samples,
        return_mean=True,
        return_members=True,
        library_size=1,
        batch_size=batch_size,
        seed=seed,
    )
    rho = np.asarray(rho, dtype=np.float64)  # (K, cells, genes)
    den = rho * lib[None, :, None]
    bounds = np.cumsum([0] + [len(c) for c in groups])
    sums = np.stack([den[:, a:b].sum(1) for a, b in itertools.pairwise(bounds)], axis=1)
    libs = np.array([lib[a:b].sum() for a, b in itertools.pairwise(bounds)])
    return sums, libs


def sample_test(
    sums: np.ndarray,
    libs: np.ndarray,
    n1: int,
    design: str,
    *,
    delta: float = 0.0,
    prior: bool = True,
    prior_count: float = PRIOR_COUNT,
    raw: np.ndarray | None = None,
) -> dict:
    """The moderated test from pseudobulk counts: ``(units, G)`` or ``(K, units, G)``.

    With a leading member axis the members' LFCs are averaged, their residual variances
    averaged, and the variance of their LFCs added as extra variance. With ``raw`` (the
    units' observed pseudobulk counts) each gene's residual variance is at least the raw
    counts' one: the model knows no samples, so its denoised pseudobulks shrink the
    samples' own deviations, and the test must not claim less between-sample variance
    than the data show.

    Parameters
    ----------
    sums
        Pseudobulk counts, units of side 1 first (``n1`` of them), then side 2.
    libs
        Their libraries ``(units,)``.
    n1
        Units of side 1.
    design
        ``"between"`` or ``"paired"``.
    delta, prior
        As :func:`moderated_test`.
    prior_count
        As :func:`log_cpm`.
    raw
        ``(units, G)`` observed pseudobulk counts: the floor of the residual variance.
    """
    y = log_cpm(sums, effective_library(sums, libs), prior_count)
    lfc, s2, df, v = design_stats(y[..., :n1, :], y[..., n1:, :], design)
    extra: np.ndarray | float = 0.0
    mean_y = y.mean(-2)
    if y.ndim == 3:
        extra = lfc.var(0, ddof=1) if lfc.shape[0] > 1 else 0.0
        member_std = np.sqrt(extra) if lfc.shape[0] > 1 else np.zeros(lfc.shape[-1])
        lfc, s2, mean_y = lfc.mean(0), s2.mean(0), mean_y.mean(0)
    else:
        member_std = None
    if raw is not None:
        y_raw = log_cpm(raw, effective_library(raw, libs), prior_count)
        s2 = np.maximum(s2, design_stats(y_raw[:n1], y_raw[n1:], design)[1])
    res = moderated_test(
        lfc, s2, df, v, extra_var=extra, prior=prior, covariate=mean_y, delta=delta
    )
    res["mean_log_cpm"] = mean_y
    res["member_std"] = member_std
    return res


def pydeseq2_test(sums: np.ndarray, units: Units, *, seed: int = 0) -> dict:
    """Pseudobulk PyDESeq2: ``~condition`` (between) or ``~sample + condition`` (paired).

    Parameters
    ----------
    sums
        Summed counts of the units (side 1 first).
    units
        The comparison's units.
    seed
        Unused by PyDESeq2's fit; kept for a uniform call.
    """
    try:
        from pydeseq2.dds import DeseqDataSet
        from pydeseq2.ds import DeseqStats
    except ImportError as err:  # optional dependency
        raise ImportError(
            "method='pseudobulk' needs PyDESeq2: pip install 'ensemblevi[pseudobulk]' (or "
            "pip install pydeseq2), or use method='counts' (no extra dependency)."
        ) from err
    names = [f"u{i}" for i in range(sums.shape[0])]
    meta = pd.DataFrame(
        {
            "condition": ["g1"] * units.n1 + ["g2"] * units.n2,
            "sample": [f"s_{s}" for s in units.samples1 + units.samples2],
        },
        index=names,
    )
    counts = pd.DataFrame(
        np.rint(sums).astype(np.int64), index=names, columns=[f"g{j}" for j in range(sums.shape[1])]
    )
    design = "~sample + condition" if units.design == "paired" else "~condition"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=counts, metadata=meta, design=design, quiet=True, n_cpus=1)
        dds.deseq2()
        ds = DeseqStats(dds, contrast=["condition", "g1", "g2"], quiet=True, n_cpus=1)
        ds.summary()
    r = ds.results_df
    pval = r["pvalue"].to_numpy(dtype=np.float64)
    padj = r["padj"].to_numpy(dtype=np.float64)
    return {
        "lfc": r["log2FoldChange"].to_numpy(dtype=np.float64),
        "se": r["lfcSE"].to_numpy(dtype=np.float64),
        "t": r["stat"].to_numpy(np.float64),
        "pval": np.where(np.isfinite(pval), pval, 1.0),
        "padj": np.where(np.isfinite(padj), padj, 1.0),
    }


def sample_de(
    model: Any,
    adata: Any,
    counts: Any,
    cells1: np.ndarray,
    cells2: np.ndarray,
    samples: np.ndarray,
    var_names: Any,
    *,
    method: str = DEFAULT_SAMPLE_METHOD,
    design: str = "auto",
    delta: float = 0.0,
    fdr_target: float = 0.05,
    min_cells: int = 10,
    n_samples: int = 5,
    batch_size: int | None = None,
    seed: int = 0,
    units: Units | None = None,
) -> pd.DataFrame:
    """One sample-aware comparison: the table (module docstring).

    Parameters
    ----------
    model
        The ensemble (``method="ensemble"`` only).
    adata
        Its AnnData.
    counts
        The registered counts of ``adata``.
    cells1, cells2
        Positions of the two sides.
    samples
        Per cell of ``adata``: its sample.
    var_names
        Gene names.
    method
        One of :data:`SAMPLE_METHODS`.
    design
        One of :data:`DESIGNS`.
    delta
        Smallest |LFC| (log2) tested (TREAT); 0 tests any change. PyDESeq2 tests any change.
    fdr_target
        Target of ``is_de_fdr_<target>`` on the adjusted p-values.
    min_cells
        Units with fewer cells are dropped.
    n_samples, batch_size, seed
        Latent draws per cell, minibatch size and seed of the ensemble's denoising.
    units
        Precomputed units (else made from the rest).

    Returns
    -------
    Per gene, sorted by p-value: ``lfc``, ``lfc_se``, ``t``, ``df``, ``pval``, ``padj``,
    ``is_de_fdr_<target>``, ``mean_log_cpm``, ``lfc_member_std`` (ensemble), ``n_samples1``,
    ``n_samples2``, ``design``, ``inference_unit`` (``"samples"``); its ``attrs`` hold the
    units.
    """
    if method not in SAMPLE_METHODS:
        raise ValueError(f"method must be one of {SAMPLE_METHODS}, got {method!r}.")
    if units is None:
        units = make_units(
            np.asarray(samples).astype(str), cells1, cells2, design=design, min_cells=min_cells
        )
    groups = units.cells1 + units.cells2
    sums, libs = pseudobulk(counts, groups)
    if method == "pseudobulk":
        res = pydeseq2_test(sums, units, seed=seed)
        mean_y = log_cpm(sums, libs).mean(0)
        member_std = None
        df = np.full(sums.shape[1], np.nan)
    else:
        if method == "ensemble":
            sums_m, libs_m = member_denoised(
                model,
                adata,
                units,
                n_samples=n_samples,
                batch_size=batch_size,
                seed=seed,
                counts=counts,
            )
            res = sample_test(sums_m, libs_m, units.n1, units.design, delta=delta, raw=sums)
        else:
            res = sample_test(sums, libs, units.n1, units.design, delta=delta)
        res["padj"] = adjust(res["pval"], P_ADJUST)
        mean_y, member_std, df = res["mean_log_cpm"], res["member_std"], res["df"]
    columns = {
        "lfc": res["lfc"],
        "lfc_se": res["se"],
        "t": res["t"],
        "df": df,
        "pval": res["pval"],
    }
    trailing = {"mean_log_cpm": mean_y}
    if member_std is not None:
        trailing["lfc_member_std"] = member_std
    trailing.update(
        n_samples1=units.n1, n_samples2=units.n2, design=units.design, inference_unit="samples"
    )
    return de_table(
        columns, var_names, fdr_target, padj=res["padj"], trailing=trailing, sort="pval"
    )


def describe_units(units: Units) -> dict:
    """What the replicates were, for ``uns``, the settings and the report.

    Parameters
    ----------
    units
        The comparison's units.
    """
    return {
        "design": units.design,
        "n_samples1": units.n1,
        "n_samples2": units.n2,
        "samples1": list(units.samples1),
        "samples2": list(units.samples2),
        "dropped_samples": {str(k): int(v) for k, v in units.dropped.items()},
        "calibrated": units.n_min >= MIN_CALIBRATED_SAMPLES,
    }


__all__ = [
    "DEFAULT_SAMPLE_METHOD",
    "DESIGNS",
    "SAMPLE_METHODS",
    "UNIT_STATEMENT",
    "Units",
    "describe_units",
    "make_units",
    "moderated_test",
    "sample_de",
    "sample_like_columns",
    "warn_unused_samples",
]
