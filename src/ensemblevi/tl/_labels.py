"""Label transfer that knows when it does not know: per-cell label uncertainty, a
calibrated "unknown" rule, and the calibration of the predicted probabilities."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ensemblevi._names import from_h5_key, h5_columns, h5_key
from ensemblevi.metrics import fit_temperature, label_calibration_metrics, reliability_table
from ensemblevi.metrics._labels import (
    N_BINS,
    apply_temperature,
    confusion_table,
    label_uncertainty_parts,
    per_type_calibration,
)

from ._novelty_rule import CALIBRATIONS, TRAINING_SAMPLES, novelty_reference
from ._thresholds import cross_fit_flags, rule_threshold, threshold_rule

KEY = "ensemblevi"

LabelScore = Literal[
    "entropy", "mutual_information", "max_probability", "novelty_knn", "novelty_combined"
]

#: Scores of the unknown rule (each: higher, less likely a known type).
SCORES = ("entropy", "mutual_information", "max_probability", "novelty_knn", "novelty_combined")
#: the scores whose rule is :func:`ensemblevi.tl.cell_novelty`'s (distances to training cells)
DISTANCES = ("novelty_knn", "novelty_combined")


def _calibration_cells(
    model, calibration, sample_key: str | None = None
) -> tuple[AnnData, np.ndarray, dict, np.ndarray | None]:
    """The held-out labelled cells (of the model's AnnData) the unknown rule is set on, what
    they are (for ``uns``) and each one's sample (``None``: samples unknown)."""
    if isinstance(calibration, str) or (calibration is None and sample_key is not None):
        ref = novelty_reference(model, sample_key=sample_key, calibration=calibration or "auto")
        keep = np.isin(ref.calibration, model._labeled_indices)
        if not keep.any():
            raise ValueError(
                "The held-out samples hold no labelled cell to calibrate the "
                "unknown rule on; pass calibration= or threshold=."
            )
        groups = None if ref.fold_samples is None else ref.fold_samples[keep]
        about = {**ref.describe(), "n_calibration_cells": int(keep.sum())}
        if groups is not None:
            about["n_calibration_samples"] = len(set(groups))
        return model.adata, ref.calibration[keep], about, groups
    about = {
        "calibration_kind": TRAINING_SAMPLES,
        "sample_key": sample_key,
        "rate_holds_for": "new cells of the samples the model trained on",
    }
    if calibration is None:
        val = getattr(model, "validation_indices", None)
        if val is None or not len(val):
            raise ValueError(
                "The unknown rule is calibrated on labelled cells the model did not train on, "
                "and this model has no validation split (train with train_size < 1), or is "
                "a query model: pass calibration= (held-out labelled cells) or threshold= "
                "(e.g. the reference's uns[key]['label_uncertainty']['threshold'])."
            )
        labelled = np.intersect1d(np.asarray(val), model._labeled_indices)
        if not len(labelled):
            raise ValueError(
                "The validation split holds no labelled cell to calibrate the unknown rule "
                "on; pass calibration= or threshold=."
            )
        return model.adata, labelled, {**about, "n_calibration_cells": len(labelled)}, None
    mask = np.asarray(calibration)
    if mask.dtype != bool or len(mask) != model.adata.n_obs:
        raise ValueError(
            "calibration must be a boolean mask over the model's cells (model.adata), True "
            "for labelled cells the classifier did not train on."
        )
    about = {
        "calibration_kind": "cells given (calibration mask)",
        "sample_key": sample_key,
        "rate_holds_for": "new cells exchangeable with the cells given",
    }
    about["n_calibration_cells"] = int(mask.sum())
    return model.adata, np.flatnonzero(mask), about, None


def _tempered_parts(members: np.ndarray, t: float) -> dict[str, np.ndarray]:
    """Label uncertainty of the members' probabilities, the mixture tempered by ``t``."""
    parts = label_uncertainty_parts(members)
    if t != 1.0:
        mix = apply_temperature(parts["probabilities"], t)
        ent = -(np.clip(mix, 1e-12, 1) * np.log(np.clip(mix, 1e-12, 1))).sum(1)
        parts.update(
            probabilities=mix,
            confidence=mix.max(1),
            entropy=ent,
            mutual_information=np.maximum(ent - parts["expected_entropy"], 0.0),
        )
    return parts


def _score(parts: dict[str, np.ndarray], score: str) -> np.ndarray:
    """The unknown rule's score from the label uncertainty (not a distance)."""
    if score == "max_probability":
        return 1.0 - parts["confidence"]
    return parts[score]


def label_uncertainty(
    model,
    adata: AnnData | None = None,
    *,
    alpha: float = 0.05,
    score: LabelScore = "novelty_combined",
    calibration: np.ndarray | str | None = None,
    threshold: float | None = None,
    temperature: bool | float = False,
    batch_size: int | None = None,
    key_added: str = KEY,
    sample_key: str | None = None,
    novelty_model=None,
) -> dict:
    """Predicted cell types, how sure the ensemble is of each, and which cells are unknown.

    From each member's label probabilities (:meth:`EnsembleSCANVI.predict_members`):
    the ensemble's type and confidence (its mixture's maximum), the predictive entropy,
    the members' expected entropy, their difference (the mutual information: how much
    the members disagree about the label) and the share of members voting for the
    ensemble's type. A cell is called *unknown* when its ``score`` exceeds a threshold set
    on labelled cells the classifier did not train on (by default the validation split's):
    the conformal ``ceil((n + 1)(1 - alpha))``-th smallest of their scores, so a new cell
    of a known type is called unknown with probability at most ``alpha``. The rate measured
    on the calibration cells themselves (each half thresholded on the other) is stored.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCANVI`.
    adata
        Cells to annotate (``None``: the model's), registered with the model.
    alpha
        Target rate of known-type cells called unknown.
    score
        ``"novelty_combined"`` (default): :func:`ensemblevi.tl.cell_novelty`'s deciding
        score (the larger of the cell's distance to the training cells, in the members'
        latent spaces and in principal components of the counts, and how badly the
        decoders fit its counts, each over its 95th percentile) and its rule,
        calibrated on the held-out cells, labelled or not; a training cell is never tested
        by it, so on the model's own cells only held-out cells can be called unknown. It is
        decided by the scVI ensemble the scANVI was made from where there is one (see
        ``novelty_model``): on new samples that called 99.2% / 81.1% of an unseen type's
        cells unknown at 4.4% / 4.3% of known cells (simulated donors / PBMC
        pseudo-samples, deep K=4, seeds 40-42, 100 epochs, thresholds by held-out sample),
        against 99.7% / 71.2% at 6.0% / 4.5% in the scANVI's own latent space
        (docs/new_samples.md).
        ``"novelty_knn"``: the latent distance alone (it ranked unseen types best among
        the label scores: AUROC 0.974 against 0.905 for the entropy and 0.870 for the
        mutual information, docs/benchmarks). Both need one member only.
        ``"entropy"`` (predictive entropy), ``"mutual_information"`` (0 for one member),
        ``"max_probability"`` (``1 -`` confidence, what a single scANVI offers).
    calibration
        Boolean mask over ``model.adata`` of held-out labelled cells to calibrate on, or
        which held-out cells: ``"auto"`` (with ``sample_key``: those of samples the model did
        not train on, where any), ``"unseen_samples"``, ``"training_samples"``. ``None``:
        ``"auto"`` with ``sample_key``, else the validation split's labelled cells.
    threshold
        Use this threshold instead of calibrating (e.g. a reference model's, for a query).
    temperature
        ``True``: temper the pooled probabilities (``p ** (1 / T)``, renormalised) with the
        ``T`` that minimises their NLL on the calibration cells' labels, before anything
        else is computed from them; a number: that ``T`` (e.g. a reference's, for a
        query); ``False``: none. The type called never changes.
    batch_size
        Minibatch size of the predictions.
    key_added
        Prefix of the ``obs`` columns and key of ``uns``.
    sample_key
        ``obs`` column of the samples: with it (and samples kept out of training with
        :func:`ensemblevi.tl.sample_split`) the rule is calibrated on unseen samples, and
        the rate of known-type cells called unknown is measured on each held-out sample
        against a threshold from the others (the rate of a new sample).
    novelty_model
        With a distance ``score``: the :class:`~ensemblevi.model.EnsembleSCVI` whose
        :func:`~ensemblevi.tl.cell_novelty` rule decides *unknown*; a cell called unknown
        is then exactly a cell that ensemble's ``is_novel`` flags. ``None`` (default): the
        scVI ensemble the scANVI was made from
        (:meth:`~ensemblevi.model.EnsembleSCANVI.from_ensemble_scvi` keeps it as
        ``model.source_scvi``, ``save``/``load`` keep it with the model, and
        ``load_query_data`` passes it on where the data have no covariates), else the
        scANVI's own latent space. ``"scanvi"``: the scANVI's own latent space, which is
        trained to separate the labelled types and folds an unseen type onto them: on new
        samples it called fewer of an unseen type's cells unknown than the scVI ensemble's
        rule at the same rate on known cells (docs/new_samples.md).

    Returns
    -------
    dict
        What is stored in ``adata.uns[key_added]["label_uncertainty"]``: with the
        threshold, ``calibration_kind`` (``"cells of the training samples"`` or ``"unseen
        samples"``), ``n_calibration_cells``, ``n_calibration_samples``,
        ``calibration_fpr`` and ``fpr_measured_on``, ``rate_holds_for``.

    Notes
    -----
    Writes ``obs``: ``<key>_label`` (the type), ``<key>_label_call`` (the type, or
    ``"unknown"``), ``<key>_label_confidence``, ``<key>_label_entropy``,
    ``<key>_label_expected_entropy``, ``<key>_label_mutual_information``,
    ``<key>_label_agreement``, ``<key>_label_unknown``; ``obsm``:
    ``<key>_label_probabilities`` (cells x types; the columns are the type names as
    HDF5-safe keys, ``/`` and ``%`` percent-encoded: ``ensemblevi._names.from_h5_key``
    gives the names back).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {sorted(SCORES)}, got {score!r}.")
    if isinstance(calibration, str) and calibration not in CALIBRATIONS:
        raise ValueError(
            f"calibration must be a boolean mask or one of {CALIBRATIONS}, got {calibration!r}."
        )
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    if not hasattr(model, "predict_members"):
        raise TypeError(f"label_uncertainty needs an EnsembleSCANVI, got {type(model).__name__}.")
    if isinstance(novelty_model, str):
        if novelty_model != "scanvi":
            raise ValueError(
                f"novelty_model is an EnsembleSCVI, 'scanvi' or None, got {novelty_model!r}."
            )
        if score not in DISTANCES:
            raise ValueError(
                f"novelty_model='scanvi' picks the latent space of a distance score "
                f"({', '.join(DISTANCES)}), not of score={score!r}: drop novelty_model."
            )
        novelty_model = None
    elif novelty_model is None and score in DISTANCES:
        # made with from_ensemble_scvi: the scVI ensemble's rule decides (docs/new_samples.md)
        novelty_model = getattr(model, "source_scvi", None)
    elif novelty_model is not None:
        if score not in DISTANCES:
            raise ValueError(
                f"novelty_model decides with a distance score ({', '.join(DISTANCES)}); "
                f"score={score!r} is read from the scANVI's probabilities: drop novelty_model "
                "or pick a distance score."
            )
        if hasattr(novelty_model, "predict_members") or not hasattr(
            novelty_model, "get_latent_representation"
        ):
            raise TypeError(
                "novelty_model is the EnsembleSCVI whose novelty rule decides unknown (e.g. "
                f"the one the scANVI was made from), got {type(novelty_model).__name__}."
            )
    adata = model.adata if adata is None else adata
    types = model.cell_types
    members = model.predict_members(adata, batch_size=batch_size)
    info: dict = {"score": score, "alpha": float(alpha), "cell_types": list(types)}
    cal_members = None
    about: dict = {}
    groups = None
    if (threshold is None and score not in DISTANCES) or temperature is True:
        cal_adata, cal_idx, about, groups = _calibration_cells(model, calibration, sample_key)
        cal_members = model.predict_members(cal_adata, indices=cal_idx, batch_size=batch_size)
    t = 1.0
    if temperature is True:
        codes = np.asarray(model.adata_manager.get_from_registry("labels")).ravel()[cal_idx]
        if (codes >= len(types)).any():
            raise ValueError(
                "temperature=True fits T to the calibration cells' registered labels, and "
                f"{int((codes >= len(types)).sum())} of them are unlabelled; pass labelled "
                "calibration cells, or a temperature value."
            )
        t = fit_temperature(cal_members.mean(0), codes)
    elif temperature is not False:
        t = float(temperature)
    parts = _tempered_parts(members, t)
    info["temperature"] = t
    if score in DISTANCES:
        from ._novelty import cell_novelty

        if calibration is not None and not isinstance(calibration, str):
            raise ValueError(
                f"score={score!r} is calibrated on the held-out cells chosen "
                "by sample_key and calibration='auto'/'unseen_samples'/"
                "'training_samples', not on a mask; use another score with a "
                "mask."
            )
        flagged = cell_novelty(
            model if novelty_model is None else novelty_model,
            adata,
            alpha=alpha,
            key_added=key_added,
            progress=False,
            sample_key=sample_key,
            calibration=calibration or "auto",
        )
        nov = adata.uns[key_added]["cell_novelty"]
        unknown = flagged[f"{score}_flag"].to_numpy().astype(bool)
        untested = int(adata.n_obs - nov["n_tested"])
        if untested:
            # scANVI trains on unlabelled cells too: those are never tested by this score
            warnings.warn(
                f"{untested:,} cells were trained on and are never called unknown by "
                f"score={score!r} (its scores are biased on them); use "
                "score='entropy' for cells the model trained on.",
                stacklevel=2,
            )
        info["n_untested"] = untested
        info["novelty_model"] = "scANVI" if novelty_model is None else type(novelty_model).__name__
        info.update(
            n_calibration=len(nov["calibration_cells"]),
            exact=True,
            calibration_fpr=float(nov[f"{score}_fpr_heldout"]),
            fpr_measured_on=nov["fpr_measured_on"],
            threshold_rule=nov.get("threshold_rule", threshold_rule(None)),
            **{
                k: nov[k]
                for k in (
                    "calibration_kind",
                    "n_calibration_cells",
                    "n_calibration_samples",
                    "rate_holds_for",
                    "sample_key",
                )
            },
        )
        threshold = float(nov[f"{score}_threshold"])
    elif threshold is None:
        cal = _score(_tempered_parts(cal_members, t), score)
        threshold, exact = rule_threshold(cal, alpha, groups)
        flags, how = cross_fit_flags(cal, alpha, seed=0, groups=groups)
        info.update(
            n_calibration=len(cal),
            exact=bool(exact),
            threshold_rule=threshold_rule(groups),
            calibration_fpr=float(flags.mean()),
            **about,
            **how,
        )
    else:
        info.update(n_calibration=0, exact=False, calibration_fpr=float("nan"))
    if score not in DISTANCES:
        unknown = _score(parts, score) > threshold
    label = np.asarray(types, dtype=object)[parts["label"]]
    obs = adata.obs
    obs[f"{key_added}_label"] = pd.Categorical(label, categories=types)
    obs[f"{key_added}_label_call"] = pd.Categorical(
        np.where(unknown, "unknown", label), categories=[*types, "unknown"]
    )
    obs[f"{key_added}_label_confidence"] = parts["confidence"].astype(np.float32)
    for name in ("entropy", "expected_entropy", "mutual_information", "agreement"):
        obs[f"{key_added}_label_{name}"] = parts[name].astype(np.float32)
    obs[f"{key_added}_label_unknown"] = unknown
    adata.obsm[f"{key_added}_label_probabilities"] = pd.DataFrame(
        # type names become HDF5 names in results.h5ad: "/A" would be a path
        parts["probabilities"].astype(np.float32),
        index=adata.obs_names,
        columns=[h5_key(t) for t in types],
    )
    info.update(threshold=float(threshold), n_unknown=int(unknown.sum()), n_cells=int(adata.n_obs))
    adata.uns.setdefault(key_added, {})["label_uncertainty"] = info
    return info


def label_calibration(
    adata: AnnData,
    truth_key: str,
    *,
    mask: np.ndarray | None = None,
    n_bins: int = N_BINS,
    key: str = KEY,
) -> dict:
    """How well the stored label probabilities are calibrated against known types.

    Reads ``obsm[<key>_label_probabilities]`` (:func:`label_uncertainty`) and scores the
    cells whose ``obs[truth_key]`` is one of the predicted types (within ``mask``):
    accuracy, NLL, Brier score, ECE and classwise ECE (``n_bins`` equal-width bins), a
    per-type table, the reliability table and the confusion matrix (a last column for
    cells called unknown). Use it on cells whose labels the model did not train on.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`label_uncertainty`.
    truth_key
        ``obs`` column of the true types.
    mask
        Boolean mask of the cells to score (``None``: every cell with a known true type).
    n_bins
        Bins of the ECEs and the reliability table.
    key
        The key :func:`label_uncertainty` wrote under.

    Returns
    -------
    dict
        ``summary`` (metrics), ``per_type``, ``reliability`` and ``confusion`` (tables), also
        stored in ``adata.uns[key]["label_calibration"]``.
    """
    if not isinstance(adata, AnnData):
        raise TypeError(
            "ev.tl.label_calibration(adata, truth_key) takes the AnnData that "
            f"ev.tl.label_uncertainty annotated, got {type(adata).__name__}."
        )
    name = f"{key}_label_probabilities"
    if name not in adata.obsm:
        raise ValueError(
            f"No adata.obsm[{name!r}]; run ev.tl.label_uncertainty(model, adata) first."
        )
    if truth_key not in adata.obs:
        raise ValueError(
            f"No obs[{truth_key!r}] to compare the predictions with; pass the obs column "
            f"of the true types as truth_key (columns: {list(adata.obs.columns)[:10]})."
        )
    probs = pd.DataFrame(adata.obsm[name])
    types = [from_h5_key(c) for c in probs.columns]
    truth = adata.obs[truth_key].astype(str).to_numpy()
    keep = np.isin(truth, types) & (
        np.ones(adata.n_obs, bool) if mask is None else np.asarray(mask, dtype=bool)
    )
    if not keep.any():
        raise ValueError(f"No cell has a true type (obs[{truth_key!r}]) among {types[:5]}...")
    p = probs.to_numpy(dtype=np.float64)[keep]
    y = pd.Categorical(truth[keep], categories=types).codes
    call = adata.obs.get(f"{key}_label_unknown")
    pred = p.argmax(1)
    if call is not None:
        pred = np.where(np.asarray(call, dtype=bool)[keep], len(types), pred)
    summary = label_calibration_metrics(p, y, n_bins=n_bins)
    summary.update(truth_key=truth_key, n_unknown=int((pred == len(types)).sum()))
    out = {
        "summary": summary,
        "per_type": per_type_calibration(p, y, types, n_bins),
        "reliability": reliability_table(p, y, n_bins=n_bins),
        "confusion": confusion_table(y, pred, types).reset_index(),
    }
    adata.uns.setdefault(key, {})["label_calibration"] = {
        **out,
        "confusion": h5_columns(out["confusion"]),
    }  # type names as HDF5 names
    return out
