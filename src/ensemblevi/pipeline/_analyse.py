"""Stage 3 of a run: the ensemble analyses (marker spread, gene uncertainty, novelty)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from anndata import AnnData


@dataclass
class Analysis:
    """What the analyses found (their per-cell and per-gene results are also in ``adata``).

    Parameters
    ----------
    summary
        Per marker and group: ``expression_spread``'s summary (``None``: no markers).
    genes
        ``gene_uncertainty``'s table, most uncertain gene first.
    novelty
        ``cell_novelty``'s per-cell scores, or ``None`` for a one-member model.
    cv_threshold
        The CV above which a cell's marker value counts as uncertain.
    groups
        ``group_novelty``'s per-group table (each group's held-out cells against the other
        groups'), or ``None`` where novelty was not tested.
    clusters
        ``cluster_stability``'s per-cluster table, or ``None`` for a one-member model.
    """

    summary: pd.DataFrame | None
    genes: pd.DataFrame
    novelty: pd.DataFrame | None
    cv_threshold: float | None
    groups: pd.DataFrame | None = None
    clusters: pd.DataFrame | None = None


def analyse(
    model,
    adata: AnnData,
    markers: dict[str, list[str]],
    labels_key: str | None,
    n_samples: int,
    seed: int = 0,
    resolution: float = 1.0,
    *,
    sample_key: str | None = None,
) -> Analysis:
    """Run the ensemble analyses of a run on ``adata`` (results also written into it).

    One streamed pass through the decoders feeds every analysis
    (:func:`ensemblevi.tl.uncertainty_analysis`); with more than one member it also stores
    the UMAP of the denoised expression that the novelty figure shows.

    Parameters
    ----------
    model
        A trained ``EnsembleSCVI`` registered on ``adata``.
    adata
        The run's data.
    markers
        Marker genes per group (present in ``adata``; empty: no marker spread).
    labels_key
        ``obs`` column of the groups (``None``: the run has none).
    n_samples
        Latent samples per member.
    seed
        Random seed of the draws.
    resolution
        Leiden resolution of the cluster stability.
    sample_key
        ``obs`` column of the samples. Where the model kept whole samples out of training
        (``run --sample-key``), the novelty rule is calibrated on them
        in the analysis pass and ``uns["ensemblevi"]["sample_split"]`` says which samples
        (:func:`record_sample_split`).
    """
    from ensemblevi import tl
    from ensemblevi.tl._kind_note import kind_note
    from ensemblevi.tl._novelty_rule import MIN_VALIDATION_CELLS

    several = model.n_members > 1  # one member has no disagreement to score cells by
    val = getattr(model, "validation_indices", None)
    n_val = 0 if val is None else len(val)
    novelty = several and n_val >= MIN_VALIDATION_CELLS
    held = held_out_samples(model, adata, sample_key) if sample_key is not None else []
    found = tl.uncertainty_analysis(
        model,
        adata,
        markers=markers or None,
        groupby=labels_key,
        n_samples=n_samples,
        seed=seed,
        novelty=novelty,
        embedding=several,
        # calibrated on the samples kept out of training, in the pass: no second kNN pass
        sample_key=sample_key if held else None,
    )
    if several and not novelty:
        adata.uns["ensemblevi"]["cell_novelty"] = {
            "skipped": f"the model held out {n_val} cells from training, and the rule needs "
            f"at least {MIN_VALIDATION_CELLS} to set its threshold (more cells or a smaller "
            "train_size)"
        }
    spread, genes, novelty = found["spread"], found["genes"], found["novelty"]
    # the streamed pass answers the seed-spread questions too: a cheap kind says what it can
    kind_note(model, adata, "marker spread and gene uncertainty")
    if sample_key is not None:
        record_sample_split(adata, sample_key, held, novelty)
    threshold = (
        adata.uns["ensemblevi"]["expression_spread"]["params"]["cv_threshold"]
        if spread is not None
        else None
    )
    groups = None
    if novelty is not None and labels_key is not None:
        # reads the scores cell_novelty just wrote: no second pass through the decoders
        groups = tl.group_novelty(
            model, adata, groupby=labels_key, seed=seed, progress=False, sample_key=sample_key
        )
    clusters = None
    if several:  # every member is a run: do the clusters and neighbours hold up?
        clusters = tl.cluster_stability(model, adata, resolution=resolution, seed=seed)
        tl.member_umaps(model, adata, members=4, seed=seed)
    summary = spread["summary"] if spread is not None else None
    return Analysis(summary, genes, novelty, threshold, groups, clusters)


def held_out_samples(model, adata: AnnData, sample_key: str) -> list[str]:
    """The samples the model kept whole out of training (``run --sample-key``), sorted.

    Parameters
    ----------
    model
        The run's model.
    adata
        The run's data (the model's own cells).
    sample_key
        ``obs`` column of the samples.
    """
    import numpy as np

    samples = adata.obs[sample_key].astype(str).to_numpy()
    train = getattr(model, "train_indices", None)
    val = getattr(model, "validation_indices", None)
    if train is None or val is None:
        return []
    seen = np.unique(samples[np.asarray(train, dtype=np.int64)])
    return sorted(set(samples[np.asarray(val, dtype=np.int64)]) - set(seen))


def record_sample_split(
    adata: AnnData, sample_key: str, held: list[str], novelty: pd.DataFrame | None
) -> None:
    """Record ``uns["ensemblevi"]["sample_split"]``: the samples kept out and the calibration.

    Where whole samples were kept out of training, the analysis pass already set the
    novelty thresholds on their cells (``tl.uncertainty_analysis(sample_key=...)``), so the
    stated false-positive rate is that of a new sample; this says so, with the rate
    measured on them.

    Parameters
    ----------
    adata
        The run's data, after the analysis pass.
    sample_key
        ``obs`` column of the samples.
    held
        :func:`held_out_samples`.
    novelty
        The pass's per-cell scores (``None``: novelty was not tested).
    """
    import numpy as np

    from ensemblevi.tl._novelty_rule import TRAINING_SAMPLES, UNSEEN_SAMPLES

    samples = adata.obs[sample_key].astype(str).to_numpy()
    record = {
        "sample_key": sample_key,
        "n_samples": len(np.unique(samples)),
        "holdout_samples": held,
        "n_holdout_cells": int(np.isin(samples, held).sum()),
        "calibration_kind": UNSEEN_SAMPLES if held else TRAINING_SAMPLES,
    }
    uns = adata.uns["ensemblevi"]
    if novelty is not None and held:
        decides = uns["cell_novelty"].get("decides", "novelty_knn")
        record["novelty_fpr_heldout"] = uns["cell_novelty"][f"{decides}_fpr_heldout"]
        record["fpr_measured_on"] = uns["cell_novelty"]["fpr_measured_on"]
        record["threshold_rule"] = uns["cell_novelty"].get("threshold_rule")
    uns["sample_split"] = record
