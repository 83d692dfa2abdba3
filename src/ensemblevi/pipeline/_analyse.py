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
        (:func:`recalibrate_on_samples`) and ``uns["ensemblevi"]["sample_split"]`` says
        which samples.
    """
    from ensemblevi import tl
    from ensemblevi.tl._kind_note import kind_note
    from ensemblevi.tl._novelty_rule import MIN_VALIDATION_CELLS

    several = model.n_members > 1  # one member has no disagreement to score cells by
    val = getattr(model, "validation_indices", None)
    n_val = 0 if val is None else len(val)
    novelty = several and n_val >= MIN_VALIDATION_CELLS
    found = tl.uncertainty_analysis(
        model,
        adata,
        markers=markers or None,
        groupby=labels_key,
        n_samples=n_samples,
        seed=seed,
        novelty=novelty,
        embedding=several,
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
        novelty = recalibrate_on_samples(model, adata, novelty, sample_key, seed=seed)
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


def recalibrate_on_samples(
    model, adata: AnnData, novelty: pd.DataFrame | None, sample_key: str, *, seed: int = 0
) -> pd.DataFrame | None:
    """Set the novelty thresholds again on the samples the model never trained on.

    The streamed analysis pass calibrates on every validation cell; where whole samples
    were kept out of training, their cells set the thresholds instead
    (:func:`ensemblevi.tl._novelty.flag_novel_cells` with ``sample_key``, ``calibration=
    "auto"``), from the scores the pass computed (only the two kNN distances are
    recomputed), so the stated false-positive rate is that of a new sample. Also records
    ``uns["ensemblevi"]["sample_split"]``: the samples kept out, their cells, and which
    calibration the thresholds have.

    Parameters
    ----------
    model
        The run's model.
    adata
        The run's data (the model's own cells).
    novelty
        The pass's per-cell scores (``None``: novelty was not tested; only the record).
    sample_key
        ``obs`` column of the samples.
    seed
        Seed of the calibration halves (where the rate is measured on halves).

    Returns
    -------
    The recalibrated scores (``novelty`` unchanged where no sample was kept out).
    """
    import numpy as np

    from ensemblevi.tl._novelty import flag_novel_cells
    from ensemblevi.tl._novelty_rule import TRAINING_SAMPLES, UNSEEN_SAMPLES

    samples = adata.obs[sample_key].astype(str).to_numpy()
    train = getattr(model, "train_indices", None)
    val = getattr(model, "validation_indices", None)
    held = []
    if train is not None and val is not None:
        seen = np.unique(samples[np.asarray(train, dtype=np.int64)])
        held = sorted(set(samples[np.asarray(val, dtype=np.int64)]) - set(seen))
    record = {
        "sample_key": sample_key,
        "n_samples": len(np.unique(samples)),
        "holdout_samples": held,
        "n_holdout_cells": int(np.isin(samples, held).sum()),
        "calibration_kind": UNSEEN_SAMPLES if held else TRAINING_SAMPLES,
    }
    uns = adata.uns["ensemblevi"]
    if novelty is not None and held:
        stored = uns["cell_novelty"]
        info = {"n_samples": stored["n_samples"], "seed": int(seed)}
        scores = novelty[["novelty_cv", "novelty_llgap"]]
        novelty = flag_novel_cells(
            model,
            adata,
            scores,
            stored["alpha"],
            info,
            progress=False,
            sample_key=sample_key,
            calibration="auto",
        )
        decides = uns["cell_novelty"].get("decides", "novelty_knn")
        record["novelty_fpr_heldout"] = uns["cell_novelty"][f"{decides}_fpr_heldout"]
        record["fpr_measured_on"] = uns["cell_novelty"]["fpr_measured_on"]
    uns["sample_split"] = record
    return novelty
