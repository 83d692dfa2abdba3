"""Differential expression with an ensemble posterior and a posterior expected FDR.

The core below the model (as scvi-tools' ``scvi.model.base._de_core``): the estimand, the
pooling of members, the expected-FDR rule and the storage in the AnnData.
``EnsembleSCVI.differential_expression`` calls :func:`ensemble_de`, and
``ensemblevi.tl.differential_expression`` is a wrapper of that method.

Written by hand: scvi-tools' ``differential_expression`` in ``change`` mode compares
random single cells, which mixes cell-to-cell variation into the probability of a change
and made no discoveries at 5-10% FDR targets on easy synthetic data. The ``population``
estimand here follows Lopez et al. (2020): for each posterior draw, each group is
summarised by the median over its cells of log2 normalised expression, and the log-fold
change (LFC) of the two medians is the draw's answer. The members' draws are pooled (the
equal-weight mixture of their posteriors is the ensemble posterior),
``p_g = P(|LFC_g| >= delta)``, and genes are called by the posterior expected FDR rule:
sort ``p`` descending and call the largest top set whose mean ``1 - p`` is at most the
target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.utils import track

from ensemblevi._constants import DE_KEY, chunk_size
from ensemblevi._seeding import forked_rng as global_seed  # every generator, restored

from . import _de_counts, _de_null, _de_samples
from ._de_calls import expected_fdr, fdr_calls, summarise_lfc
from ._de_groups import annotate_table, comparisons
from ._de_replicated import cells_statement, sample_aware_de, storable_attrs
from ._de_scvi import MemberFilter, check_kwargs, member_draws, scvi_mode_de
from ._de_store import store_de

ESTIMANDS = ("counts", "population", "cell_pairs")
#: the estimands the model alone answers (lfc_posterior draws them)
MODEL_ESTIMANDS = ("population", "cell_pairs")
MODES = (None, "change", "vanilla")
LIBRARY_SIZE = 1e4  # normalised expression per 10,000 counts before the log
#: the ensemble estimands' pseudocount, per LIBRARY_SIZE counts (1e-5 per unit library)
PSEUDOCOUNT = 0.1


def population_lfc(expr1: np.ndarray, expr2: np.ndarray, pseudocount: float = 0.1) -> np.ndarray:
    """LFC draws of the population estimand from normalised expression draws.

    ``expr1``, ``expr2``: ``(..., n_cells, G)`` draws (per ``LIBRARY_SIZE`` counts) of the
    two groups' cells, sharing the leading (member, draw) axes. Returns ``(..., G)``:
    ``median_cells log2(expr1 + c) - median_cells log2(expr2 + c)``.

    Parameters
    ----------
    expr1, expr2
        The two groups' normalised expression draws.
    pseudocount
        ``c``, added before the log2.
    """
    m1 = np.median(np.log2(expr1 + pseudocount), axis=-2)
    m2 = np.median(np.log2(expr2 + pseudocount), axis=-2)
    return m1 - m2


def cell_pair_lfc(
    expr1: np.ndarray, expr2: np.ndarray, rng: np.random.Generator, pseudocount: float = 0.1
) -> np.ndarray:
    """scvi-tools' ``change`` estimand: LFCs of randomly paired single cells, ``(..., P, G)``
    with ``P = max(n_cells1, n_cells2)`` pairs per leading index.

    Parameters
    ----------
    expr1, expr2
        ``(..., n_cells, G)`` normalised expression draws of the two groups.
    rng
        Draws the pairs (cells with replacement, the same pairs for every leading index).
    pseudocount
        Added before the log2.
    """
    n = max(expr1.shape[-2], expr2.shape[-2])
    i = rng.integers(0, expr1.shape[-2], n)
    j = rng.integers(0, expr2.shape[-2], n)
    return np.log2(expr1[..., i, :] + pseudocount) - np.log2(expr2[..., j, :] + pseudocount)


def _transforms(model: Any, batch_correction: bool, batchid1: Any, batchid2: Any) -> tuple:
    """The batches each side is decoded in (``None``: every cell's observed batch)."""
    if not batch_correction:
        for name, ids in (("batchid1", batchid1), ("batchid2", batchid2)):
            if ids is not None:
                raise ValueError(
                    f"{name} names the batches to decode a side in, which needs "
                    "batch_correction=True (without it every cell keeps its observed batch)."
                )
        return None, None
    mapping = model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
    every = list(mapping.categorical_mapping)
    return tuple(
        every if ids is None else [ids] if isinstance(ids, str | int) else list(ids)
        for ids in (batchid1, batchid2)
    )


def lfc_posterior(
    model: Any,
    adata: Any,
    groupby: str | None,
    group1: Any,
    group2: Any = None,
    estimand: Literal["population", "cell_pairs"] = "population",
    n_samples: int = 50,
    max_cells: int = 500,
    batch_correction: bool = False,
    pseudocount: float = PSEUDOCOUNT,
    seed: int = 0,
    progress: bool = True,
    *,
    cells: tuple[np.ndarray, np.ndarray] | None = None,
    batchid1: Any = None,
    batchid2: Any = None,
    weights: Literal["uniform", "importance"] = "uniform",
    member_filter: MemberFilter | None = None,
    batch_size: int | None = None,
    importance_weighting_kwargs: dict | None = None,
) -> tuple[np.ndarray, dict]:
    """Posterior LFC draws of every member: the sampling half of :func:`ensemble_de`.

    Returns ``(draws, info)``: ``draws`` is ``(K, N, G)`` (members x draws x genes; for
    ``cell_pairs`` ``N`` is draws x cell pairs), ``info`` holds the cells used
    (``cells1``, ``cells2``, positions in ``adata``) and ``scale``, the two groups' mean
    normalised expression per 1e4. Members' draws are kept apart so that an ensemble of the
    first ``k`` members of a deep ensemble is ``draws[:k]`` (the benchmark suite's use).

    Uniform weights without outlier filtering draw all members at once (seeded by
    ``seed``); importance weights or outlier filtering draw member by member through
    scvi-tools' own sampling on ``model.members[k]`` (see :func:`._de_scvi.member_draws`),
    under torch's and numpy's global generators seeded by ``seed``.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata, groupby, group1, group2, estimand, n_samples, max_cells, batch_correction
        As in :func:`ensemble_de` (``group1`` one group).
    pseudocount
        Added to the expression per 1e4 counts before the log2.
    seed, progress
        As in :func:`ensemble_de`.
    cells
        ``(cells1, cells2)`` positions instead of ``groupby``/``group1``/``group2``.
    batchid1, batchid2, weights, batch_size, importance_weighting_kwargs
        As in :func:`ensemble_de`.
    member_filter
        Per-member outlier filtering (:class:`._de_scvi.MemberFilter`); ``None``: none.
    """
    if estimand not in MODEL_ESTIMANDS:
        raise ValueError(
            f"estimand must be one of {MODEL_ESTIMANDS} (the model's own draws; 'counts' is "
            f"built on them by ensemble_de), got {estimand!r}."
        )
    if n_samples < 2 or max_cells < 1:
        raise ValueError(f"Need n_samples >= 2 and max_cells >= 1, got {n_samples}, {max_cells}.")
    adata = model._validate_anndata(adata)
    if cells is None:
        if group1 is None or not isinstance(group1, str | int | np.integer):
            raise ValueError("Pass group1= the group to test (and group2=, or None for the rest).")
        comp = comparisons(adata, groupby, group1, group2, None, None)[0]
        cells = comp.cells1, comp.cells2
    rng = np.random.default_rng(seed)
    cells1, cells2 = (
        np.sort(rng.choice(c, max_cells, replace=False)) if len(c) > max_cells else c for c in cells
    )
    t1, t2 = _transforms(model, batch_correction, batchid1, batchid2)
    member_wise = weights == "importance" or (member_filter is not None and member_filter.enabled)
    if member_wise and estimand != "population":
        raise ValueError(
            "weights='importance' and filter_outlier_cells draw each member's cells apart, "
            "which the cell_pairs estimand's shared pairs cannot use; use mode='change' "
            "(scvi-tools' cell-pair estimand, which supports both) or estimand='population'."
        )
    if weights == "importance" and batch_correction and max(len(t1), len(t2)) > 1:
        raise ValueError(
            "weights='importance' cannot average a cell over several batches (the weights "
            "belong to one decoding); pass batchid1=/batchid2= a single batch each, or "
            "batch_correction=False, or use mode='change' (scvi-tools' sampling per batch)."
        )
    # draws in blocks so that (K, block, cells, genes) stays within the float budget
    block = chunk_size(model.n_members * (len(cells1) + len(cells2)) * adata.n_vars, 2, n_samples)
    draws, sums = [], np.zeros((2, adata.n_vars))
    starts = list(range(0, n_samples, block))
    for b, start in enumerate(track(starts, description="DE posterior draws",
                                    disable=not progress, style="tqdm")):  # fmt: skip
        s = min(block, n_samples - start)
        if member_wise:
            expr = [[], []]
            with global_seed(seed + b):
                for k in range(model.n_members):
                    for i, (c, t) in enumerate(((cells1, t1), (cells2, t2))):
                        c = member_filter(k, c) if member_filter is not None else c
                        x = member_draws(model, adata, k, c, s, LIBRARY_SIZE, t, weights,
                                         batch_size, importance_weighting_kwargs or {})  # fmt: skip
                        sums[i] += x.mean(1).sum(0)
                        expr[i].append(x)
            lfc = [population_lfc(x1, x2, pseudocount) for x1, x2 in zip(*expr, strict=True)]
            draws.append(np.stack(lfc))
            continue
        expr = []
        for i, (c, t) in enumerate(((cells1, t1), (cells2, t2))):
            x = model.get_normalized_expression(
                adata, indices=c, n_samples=s, return_mean=False, batch_size=batch_size,
                return_members=True, library_size=LIBRARY_SIZE, seed=seed + 1 + 2 * b + i,
                transform_batch=t,
            )  # fmt: skip
            if s == 1:  # one draw comes back without its sample axis
                x = x[:, None]
            sums[i] += x.mean(2).sum((0, 1))
            expr.append(x)
        if estimand == "population":
            draws.append(population_lfc(expr[0], expr[1], pseudocount))
        else:
            lfc = cell_pair_lfc(expr[0], expr[1], rng, pseudocount)
            draws.append(lfc.reshape(lfc.shape[0], -1, lfc.shape[-1]))
    return np.concatenate(draws, axis=1), {
        "cells1": cells1, "cells2": cells2, "scale": sums / (model.n_members * n_samples),
    }  # fmt: skip


def _settings(mode, estimand, delta, pseudocounts, n_samples, max_cells, weights, kwargs):
    """Check the arguments that depend on the mode; returns the resolved ones."""
    if mode not in MODES:
        raise ValueError(
            f"mode must be None (the ensemble's estimand=), 'change' or 'vanilla' "
            f"(scvi-tools' modes), got {mode!r}."
        )
    if estimand not in ESTIMANDS:
        raise ValueError(f"estimand must be one of {ESTIMANDS}, got {estimand!r}.")
    if weights not in ("uniform", "importance"):
        raise ValueError(f"weights must be 'uniform' or 'importance', got {weights!r}.")
    if mode is not None and estimand != "counts":
        raise ValueError(
            f"estimand={estimand!r} is one of the ensemble's estimands (mode=None) and "
            f"mode={mode!r} is scvi-tools'; pass one of them."
        )
    check_kwargs(kwargs, estimand if mode is None else mode)
    if delta is not None and delta <= 0:
        raise ValueError(f"delta must be > 0 (a log2 fold change), got {delta}.")
    if pseudocounts is not None and pseudocounts < 0:
        raise ValueError(f"pseudocounts must be >= 0, got {pseudocounts}.")
    if mode is None:
        if delta is None:
            raise ValueError(
                "delta=None (estimated from the LFCs) is scvi-tools' change mode; pass a "
                "number for the ensemble's estimand, or mode='change'."
            )
        pc = PSEUDOCOUNT if pseudocounts is None else pseudocounts * LIBRARY_SIZE
        return 50 if n_samples is None else n_samples, 500 if max_cells is None else max_cells, pc
    if n_samples is not None:
        raise ValueError(
            "n_samples= is the ensemble estimand's draws per member; scvi-tools' modes take "
            "n_samples_overall= (all members' samples together, default 5000)."
        )
    if mode == "vanilla" and pseudocounts is not None:
        raise ValueError("pseudocounts= applies to mode='change' and the ensemble's estimands, "
                         "not to 'vanilla' (which compares scales, no log).")  # fmt: skip
    return None, max_cells, pseudocounts


def ensemble_de(
    model: Any,
    adata: Any = None,
    groupby: str | None = None,
    group1: Any = None,
    group2: Any = None,
    idx1: Any = None,
    idx2: Any = None,
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
    """Ensemble differential expression, with scvi-tools' call forms and columns.

    The default (``mode=None``, ``estimand="counts"``) takes each gene's LFC from the
    groups' mean normalised counts and calibrates it by empirical Bayes within strata of
    the ensemble's posterior probability of a change (:mod:`._de_counts`: the model's own
    LFC carries an error its members share, so its posterior alone over-calls);
    ``estimand="population"`` is the model's answer alone (module docstring): per
    posterior draw, the LFC of the groups' median log2 expression.
    ``mode="change"`` and ``mode="vanilla"`` are scvi-tools' own (``change``: LFCs of
    random pairs of single-cell posterior samples, scvi-tools' ``delta``/``pseudocounts``
    handling and ``test_mode="three"``; ``vanilla``: ``P(scale1 > scale2)`` of such pairs),
    computed by scvi-tools' ``DifferentialComputation`` on samples of the ensemble
    posterior, an equal share from each member (:mod:`._de_scvi`); with one member they are
    ``scvi.model.SCVI.differential_expression``.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata
        Cells to use (default: the model's AnnData).
    groupby
        ``obs`` column of the groups (``None``: ``"cell_type"``, unless ``idx1`` is given).
    group1
        One group, a list of groups (each a comparison), or ``None``: every group in turn.
    group2
        The reference group; ``None``: all other cells (``group2`` column ``"Rest"``).
    idx1, idx2
        The two sides' cells instead of groups: boolean masks, integer positions or
        ``adata.obs.query`` strings (``idx2=None``: all other cells).
    mode
        ``None`` (the ensemble's ``estimand``), or scvi-tools' ``"change"``/``"vanilla"``.
    delta
        Smallest |LFC| (log2) that counts as a change; ``None`` (``change`` only):
        scvi-tools' estimate from the LFC means. Unused by ``vanilla``.
    batch_size
        Minibatch size of the model passes.
    all_stats
        Add scvi-tools' raw-count columns (``raw_mean1/2``, ``non_zeros_proportion1/2``,
        ``raw_normalized_mean1/2``) of the full groups.
    batch_correction
        Compare the groups decoded in every batch (``batchid1``/``batchid2``: in those
        batches) instead of each cell's own. Ensemble estimands: each cell's expression
        averaged over the batches; scvi-tools' modes: samples paired within a batch.
    batchid1, batchid2
        Batch categories each side is decoded in (need ``batch_correction=True``).
    fdr_target
        Target of the posterior expected FDR rule for ``is_de_fdr_<target>`` (not in
        ``vanilla``, which has no ``proba_de``, as in scvi-tools).
    silent
        Hide the progress bars (as ``progress=False``).
    weights
        ``"uniform"`` or ``"importance"`` (``None``: uniform): scvi-tools' importance
        weights, computed per member on that member's posterior. Ensemble estimands: each
        draw is a weighted bootstrap of the group's cells (``population`` only);
        scvi-tools' modes: each member's samples are resampled with its weights.
    filter_outlier_cells
        Drop a group's outlier cells (scvi-tools' elliptic envelope in latent space) before
        sampling; per member, in that member's latent space (``population`` or scvi modes).
    importance_weighting_kwargs
        Passed to each member's ``get_importance_weights`` (with ``weights="importance"``).
    estimand
        With ``mode=None``: ``counts`` (default: the log2 ratio of the groups' mean
        normalised counts, empirical Bayes within strata of the ensemble's
        ``P(|LFC| >= delta)``; ``batch_correction`` standardises the means to one batch
        mix, ``weights``/``filter_outlier_cells``/``batchid1``/``batchid2`` shape the strata
        only), ``population`` (the model alone: the LFC of the groups' median log2
        expression per posterior draw) or ``cell_pairs`` (the model's randomly paired
        single cells, ``P(|LFC| >= delta)``).
    n_samples
        Ensemble estimands: posterior draws per member (``None``: 50). scvi-tools' modes
        take ``n_samples_overall=`` instead (all members together, default 5000).
    max_cells
        Cells per group, subsampled without replacement (seeded) above this cap
        (``None``: 500 for the ensemble's estimands, every cell for scvi-tools' modes).
    pseudocounts
        Added to the expression per unit library (scvi-tools' units) before the log2;
        ``None``: ``1e-5`` (0.1 per 1e4 counts) for the ensemble's estimands, scvi-tools'
        estimate from non-expressed genes in ``change`` mode.
    seed
        Seed of the cell subsample and the draws (scvi-tools' modes and member-wise draws
        run under torch's and numpy's global generators seeded with it, restored after).
    key_added
        Write the result to ``adata.uns[key_added]`` in ``rank_genes_groups``' layout (one
        field per comparison; ``names``, ``scores`` = ``proba_de``, ``logfoldchanges`` =
        ``lfc_median``, ``pvals`` = ``proba_not_de``, ``pvals_adj`` = ``expected_fdr``;
        ``vanilla``: ``scores`` = ``bayes_factor``, ``logfoldchanges`` = log2 scale ratio,
        ``pvals`` = ``pvals_adj`` = ``proba_m2``, one-sided as its Bayes factor),
        so ``scanpy.get.rank_genes_groups_df(adata, group, key=key_added)`` reads it, plus
        the full table under ``"table"``. ``None``: write nothing.
    progress
        Show progress bars.
    null_check, n_null
        Repeat the test on ``n_null`` seeded random halves of each comparison's ``group1``
        (no true change) and warn when they get calls (:mod:`._de_null`); the summary goes to
        ``result.attrs["null_check"]`` and ``adata.uns[key_added]["null_check"]``.
    sample_key
        ``obs`` column of the biological samples (donors, patients): the test then compares
        samples, not cells (:mod:`._de_samples`): pseudobulks per sample and side, a
        moderated t-test whose variance is the between-sample variance, Benjamini-Hochberg
        at ``fdr_target``. ``None``: cells are the replicates, and the result says that its
        calls describe these cells, not the population (a warning names any ``obs`` column
        that looks like samples). With fewer than 2 samples (pairs) per side the test falls
        back to cells, with the same statement; below 3 per side it warns that calibration
        was not shown.
    method
        With ``sample_key``: ``"counts"`` (default: the moderated test on raw pseudobulk
        counts), ``"ensemble"`` (the same test on each member's denoised pseudobulks, the
        members' disagreement added as variance) or ``"pseudobulk"`` (PyDESeq2, optional
        dependency). See ``docs/de_replicates.md`` for the measurements behind the default.
    design
        With ``sample_key``: ``"between"`` (each sample on one side), ``"paired"`` (both
        sides in every sample: paired by sample) or ``"auto"`` (paired when samples have
        cells on both sides).
    lfc_threshold
        With ``sample_key``: test ``|LFC| > lfc_threshold`` (log2; TREAT) instead of any
        change (0, as PyDESeq2 and limma). ``delta`` belongs to the cell-level estimands.
    **kwargs
        scvi-tools' ``get_bayes_factors`` keywords where they apply (``n_samples_overall``,
        ``use_permutation``, ``m_permutation``, ``change_fn``, ``m1_domain_fn``,
        ``threshold_counts``, ``cred_interval_lvls``: scvi modes; ``test_mode``: also the
        ensemble's estimands, default ``"two"`` there); others raise.

    Returns
    -------
    One row per gene and comparison (comparisons concatenated, as scvi-tools). Ensemble
    estimands, sorted by ``proba_de`` then ``|lfc_median|``: ``proba_de``,
    ``proba_not_de``, ``bayes_factor``, ``lfc_mean``, ``lfc_median``, ``lfc_std``,
    ``lfc_min``, ``lfc_max``, ``lfc_q2.5``, ``lfc_q97.5`` (of the estimand's LFC),
    ``lfc_member_std``, ``member_calls``, ``call_flips``, ``expected_fdr``,
    ``is_de_fdr_<target>``, ``scale1``, ``scale2`` (mean normalised expression per unit
    library), ``pseudocounts``, ``delta``; ``counts`` adds ``model_proba_de``,
    ``model_lfc_median`` (the population estimand), ``lfc_counts``, ``lfc_counts_se``
    (the counts' LFC before shrinkage) and ``stratum``. scvi-tools' modes: its columns
    (``change`` adds ``expected_fdr`` and ``is_de_fdr_<target>``). Then the
    ``all_stats`` columns, and ``comparison``, ``group1``, ``group2`` for ``groupby``
    calls.
    """
    if sample_key is not None:
        return sample_aware_de(model, adata, groupby, group1, group2, idx1, idx2, sample_key,
                             method, design, lfc_threshold, fdr_target, all_stats, key_added,
                             batch_size, seed, mode, estimand, locals())  # fmt: skip
    if method is not None or design != "auto" or lfc_threshold != 0:
        raise ValueError("method=, design= and lfc_threshold= belong to the sample-aware test; "
                         "pass sample_key= (the obs column of the biological samples).")
    shared = _de_null.shared_args(locals())
    weights = "uniform" if weights is None else weights
    n_samples, max_cells, pc = _settings(mode, estimand, delta, pseudocounts, n_samples,
                                         max_cells, weights, kwargs)  # fmt: skip
    if not 0 < fdr_target < 1:
        raise ValueError(f"fdr_target must be in (0, 1), got {fdr_target}.")
    if importance_weighting_kwargs and weights != "importance":
        raise ValueError("importance_weighting_kwargs need weights='importance'.")
    if max_cells is not None and max_cells < 1:
        raise ValueError(f"max_cells must be >= 1, got {max_cells}.")
    model._check_if_trained(warn=True)
    adata = model._validate_anndata(adata)
    comps = comparisons(adata, groupby, group1, group2, idx1, idx2)
    null = null_check and _de_null.run_null_check(ensemble_de, model, adata, comps, shared,
                                                  n_null, progress and not silent)  # fmt: skip
    member_filter = MemberFilter(model, adata, filter_outlier_cells)
    iw = importance_weighting_kwargs or {}
    show = progress and not silent
    tables, normalised = [], None
    for comp in track(comps, description="DE...", disable=not show or len(comps) == 1):
        if mode is None and estimand == "counts" and not batch_correction:
            _de_counts.warn_batch_imbalance(model.get_anndata_manager(adata, required=True),
                                            comp.cells1, comp.cells2)  # fmt: skip
        if mode is None:
            draws, info = lfc_posterior(
                model, adata, None, None, n_samples=n_samples,
                estimand="population" if estimand == "counts" else estimand,
                max_cells=max_cells, batch_correction=batch_correction, pseudocount=pc,
                seed=seed, progress=show, cells=(comp.cells1, comp.cells2),
                batchid1=batchid1, batchid2=batchid2, weights=weights,
                member_filter=member_filter, batch_size=batch_size,
                importance_weighting_kwargs=iw,
            )  # fmt: skip
            if estimand == "counts":
                manager = model.get_anndata_manager(adata, required=True)
                if normalised is None:  # once for every comparison of the call
                    normalised = _de_counts.normalised_counts(
                        manager.get_from_registry(REGISTRY_KEYS.X_KEY))
                table = _de_counts.counts_table(draws, manager, comp.cells1, comp.cells2, delta,
                                                fdr_target, adata.var_names, seed, pc,
                                                batch_correction=batch_correction,
                                                normalised=normalised, **kwargs)  # fmt: skip
            else:
                table = summarise_lfc(draws, delta, fdr_target, adata.var_names, **kwargs)
            table["scale1"], table["scale2"] = info["scale"] / LIBRARY_SIZE
            table["pseudocounts"], table["delta"] = pc / LIBRARY_SIZE, float(delta)
            # ties in proba_de (common: every draw clears delta) are broken by the effect size
            order = np.lexsort((-np.abs(table["lfc_median"].to_numpy()),
                                -table["proba_de"].to_numpy()))  # fmt: skip
            table = table.iloc[order]
        else:
            table = _scvi_table(model, adata, comp, mode, delta, pc, batch_correction,
                                batchid1, batchid2, weights, batch_size, iw, member_filter,
                                max_cells, seed, fdr_target, kwargs)  # fmt: skip
        annotate_table(table, comp, model.get_anndata_manager(adata, required=True),
                       adata.var_names, all_stats)  # fmt: skip
        tables.append((comp, table))
    result = pd.concat([t for _, t in tables], axis=0)
    unused = sorted({c for comp, _ in tables for c in _de_samples.warn_unused_samples(
        adata.obs, comp.cells1, comp.cells2, exclude=(groupby or "cell_type",))})
    cells_statement(result.attrs, unused)
    if key_added is not None:
        store_de(adata, tables, key_added, groupby, {
            "delta": "auto" if delta is None else float(delta),
            "fdr_target": float(fdr_target),
            "estimand": estimand if mode is None else f"scvi_{mode}",
            "n_samples": int(n_samples if n_samples is not None
                             else kwargs.get("n_samples_overall", 5000)),
            "max_cells": -1 if max_cells is None else int(max_cells),
            "batch_correction": bool(batch_correction), "seed": int(seed), "weights": weights,
            "filter_outlier_cells": bool(filter_outlier_cells),
            "ensemble": model.ensemble, "n_members": int(model.n_members),
        })  # fmt: skip
        if null:
            adata.uns[key_added]["null_check"] = null
        adata.uns[key_added]["params"].update(storable_attrs(result.attrs))
    if null:
        result.attrs["null_check"] = null
    return result


def _scvi_table(model, adata, comp, mode, delta, pseudocounts, batch_correction, batchid1,
                batchid2, weights, batch_size, iw, member_filter, max_cells, seed, fdr_target,
                kwargs) -> pd.DataFrame:  # fmt: skip
    """One comparison in scvi-tools' ``change``/``vanilla`` mode (see :mod:`._de_scvi`)."""
    rng = np.random.default_rng(seed)
    cells1, cells2 = (
        np.sort(rng.choice(c, max_cells, replace=False))
        if max_cells is not None and len(c) > max_cells else c
        for c in (comp.cells1, comp.cells2)
    )  # fmt: skip
    with global_seed(seed):
        res = scvi_mode_de(model, adata, cells1, cells2, mode, delta, pseudocounts,
                           batch_correction, batchid1, batchid2, weights, batch_size, iw,
                           member_filter, kwargs)  # fmt: skip
    table = pd.DataFrame(res, index=pd.Index(adata.var_names, name="gene"))
    # scvi-tools' own sort (ties in its default, unstable order), so one member gives its rows
    if mode == "vanilla":
        return table.sort_values(by="bayes_factor", ascending=False)
    table = table.sort_values(by="proba_de", ascending=False)
    table["expected_fdr"], _ = expected_fdr(table["proba_de"].to_numpy())
    table[f"is_de_fdr_{fdr_target:g}"] = fdr_calls(table["proba_de"].to_numpy(), fdr_target)
    return table
