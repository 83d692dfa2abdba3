"""Per-cell epistemic scores: does the ensemble know this cell?

Two scores, both large where members disagree about a cell (hand-written: scvi-tools has
no ensemble novelty score):

* ``novelty_cv``: the root mean square over genes of the between-member coefficient of
  variation of the cell's denoised expression, ``sqrt(mean_g var_between / mean^2)``
  (``UncertaintySummary.cell_rms_cv``). Until version 0.x of this module the column held
  its square, ``mean_g var_between / mean^2``, under the same name: a monotone change,
  so rankings, AUROCs and flags are unchanged while thresholds are now square roots;
* ``novelty_llgap``: the gap between the member mixture's ELBO and the members' mean ELBO,
  ``log mean_k exp(ELBO_k) - mean_k ELBO_k >= 0`` (Jensen), which is 0 when the members
  agree on the cell's likelihood and grows with their disagreement.

Threshold rule: a cell is flagged (``is_novel``) when its ``novelty_cv`` exceeds the
``1 - alpha`` quantile of the score on cells like the training data that the model did
not train on: half of the model's validation cells (a fixed random half), so that the
other half measures the rule's false-positive rate honestly. Which cells calibrated the
rule and which checked it is stored with the thresholds.
Cells the model trained on are not used to calibrate because their scores can differ
from those of new cells of the same kind, in either direction
(``benchmarks/bench_seed_agreement.py``'s PBMC run had them higher); they are used only
when the model has fewer than 40 validation cells, and the stored settings say so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ensemblevi._constants import DEFAULT_KEY, logmeanexp
from ensemblevi.model._uncertainty import UncertaintySummary

from ._stream import SummaryReducer, stream

KEY = DEFAULT_KEY
SCORES = ("novelty_cv", "novelty_llgap")
MIN_VALIDATION_CELLS = 40


def novelty_scores(
    model, adata: AnnData, summary: UncertaintySummary, seed: int = 0
) -> pd.DataFrame:
    """Both scores of every cell, from a filled all-cells summary and the members' ELBOs.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata
        AnnData registered with the model.
    summary
        An :class:`~ensemblevi.model._uncertainty.UncertaintySummary` over all of
        ``adata``'s cells (rows: their positions), filled by a streamed pass.
    seed
        Seed of the ELBO's latent sample.
    """
    elbo = model.get_elbo(adata, return_mean=False, return_table=True, seed=seed)
    members = torch.from_numpy(elbo.drop(columns="mixture").to_numpy().T)
    gap = (logmeanexp(members, 0) - members.mean(0)).numpy()
    return pd.DataFrame(
        {"novelty_cv": summary.cell_rms_cv, "novelty_llgap": gap}, index=adata.obs_names
    )


def _scores(model, adata: AnnData, n_samples: int, seed: int, progress: bool) -> pd.DataFrame:
    summary = UncertaintySummary(adata.n_obs, adata.n_vars)
    stream(model, adata, [SummaryReducer(summary)], n_samples, seed=seed, progress=progress)
    return novelty_scores(model, adata, summary, seed)


def _check_novelty(model, alpha: float) -> None:
    if model.n_members < 2:
        raise ValueError("cell_novelty needs an ensemble of at least 2 members to disagree.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")


def flag_novel_cells(
    model,
    adata: AnnData,
    scores: pd.DataFrame,
    ref: pd.DataFrame,
    alpha: float,
    info: dict,
    key_added: str = KEY,
) -> pd.DataFrame:
    """Calibrate the thresholds on ``ref`` (the model's cells), flag ``scores``, write both.

    Parameters
    ----------
    model
        The model the scores came from (its validation and training cells).
    adata
        The scored AnnData (the flags and scores go to its ``obs``).
    scores
        :func:`novelty_scores` of ``adata``.
    ref
        :func:`novelty_scores` of the model's own AnnData (``scores`` when that is it).
    alpha
        Target false-positive rate.
    info
        Settings (``n_samples``, ``seed``: the seed also picks the calibration half) stored
        with the thresholds in ``adata.uns[key_added]["cell_novelty"]``.
    key_added
        Prefix of the ``obs`` columns and ``uns`` key.

    Returns
    -------
    ``scores`` with a ``<score>_flag`` column per score and ``is_novel``.
    """
    scores = scores.copy()
    train_idx = getattr(model, "train_indices", None)
    val_idx = getattr(model, "validation_indices", None)
    info = {**info, "alpha": float(alpha)}
    check = np.zeros(0, dtype=np.int64)
    if val_idx is not None and len(val_idx) >= MIN_VALIDATION_CELLS:
        perm = np.random.default_rng(info.get("seed", 0)).permutation(np.asarray(val_idx))
        calib, check = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        info["calibrated_on"] = f"{len(calib)} validation cells (held out from training)"
    else:
        calib = np.asarray(train_idx) if train_idx is not None else np.arange(len(ref))
        info["calibrated_on"] = f"{len(calib)} training cells (too few validation cells)"
    # positions in the model's AnnData of the cells that set / checked the thresholds
    info["calibration_cells"] = np.sort(calib).astype(np.int64)
    info["check_cells"] = np.sort(check).astype(np.int64)
    for name in SCORES:
        threshold = float(np.quantile(ref[name].iloc[calib], 1 - alpha))
        info[f"{name}_threshold"] = threshold
        if len(check):
            info[f"{name}_fpr_heldout"] = float((ref[name].iloc[check] > threshold).mean())
        if train_idx is not None:
            info[f"{name}_fpr_training"] = float((ref[name].iloc[train_idx] > threshold).mean())
        scores[f"{name}_flag"] = scores[name] > threshold
    scores["is_novel"] = scores["novelty_cv_flag"]
    for col in (*SCORES, "is_novel"):
        adata.obs[f"{key_added}_{col}"] = scores[col].to_numpy()
    info["n_flagged"] = int(scores["is_novel"].sum())
    adata.uns.setdefault(key_added, {})["cell_novelty"] = info
    return scores


def cell_novelty(
    model,
    adata: AnnData | None = None,
    alpha: float = 0.01,
    n_samples: int = 5,
    seed: int = 0,
    key_added: str = KEY,
    progress: bool = True,
) -> pd.DataFrame:
    """Per-cell epistemic scores and a flag for cells unlike the training data.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI` with at least 2 members.
    adata
        Cells to score, registered with the model (default: the model's own).
    alpha
        Target false-positive rate of the threshold rule on cells like the training data.
    n_samples
        Latent samples per member for the CV score.
    seed
        Seed of the latent samples, the ELBO and the choice of the calibration half.
    key_added
        Prefix of the ``adata.obs`` columns ``<key>_novelty_cv``, ``<key>_novelty_llgap``
        and ``<key>_is_novel`` (``novelty_cv`` above its threshold) and of
        ``adata.uns[key]["cell_novelty"]`` (thresholds, false-positive rates, settings,
        and ``calibration_cells`` / ``check_cells``: positions in the model's AnnData of
        the cells the thresholds were computed on and checked on).
    progress
        Show a progress bar.

    Returns
    -------
    The per-cell scores and flag.
    """
    _check_novelty(model, alpha)
    adata = model._validate_anndata(adata)
    scores = _scores(model, adata, n_samples, seed, progress)
    ref = scores if adata is model.adata else _scores(model, model.adata, n_samples, seed, progress)
    info = {"n_samples": int(n_samples), "seed": int(seed)}
    return flag_novel_cells(model, adata, scores, ref, alpha, info, key_added)
