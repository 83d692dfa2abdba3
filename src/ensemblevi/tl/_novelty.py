"""Per-cell epistemic scores: does the ensemble know this cell?

Two scores, both large where members disagree about a cell (hand-written: scvi-tools has
no ensemble novelty score):

* ``novelty_cv``: mean over genes of the squared between-member coefficient of variation
  of the cell's denoised expression, ``var_between / mean^2``;
* ``novelty_llgap``: the gap between the member mixture's ELBO and the members' mean ELBO,
  ``log mean_k exp(ELBO_k) - mean_k ELBO_k >= 0`` (Jensen), which is 0 when the members
  agree on the cell's likelihood and grows with their disagreement.

Threshold rule: a cell is flagged (``is_novel``) when its ``novelty_cv`` exceeds the
``1 - alpha`` quantile of the score on cells like the training data that the model did
not train on: half of the model's validation cells (a fixed random half), so that the
other half measures the rule's false-positive rate honestly.
Cells the model trained on are not used to calibrate because their scores differ from
those of new cells of the same kind, in either direction (an unscripted heartlike check
had them lower; benchmarks/bench_seed_agreement.py's PBMC run had them higher); they are
used only when the model has fewer than 40 validation cells, and the report says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ensemblevi._constants import logmeanexp

KEY = "ensemblevi"
SCORES = ("novelty_cv", "novelty_llgap")


def _scores(model, adata: AnnData, n_samples: int, seed: int, progress: bool) -> pd.DataFrame:
    cv2 = np.zeros(adata.n_obs)
    tiny = np.finfo(np.float32).tiny
    for pos, parts, _ in model.iter_uncertainty(
        adata, None, None, n_samples, seed=seed, progress=progress
    ):
        mean = parts.mean.double().cpu()
        cv2[pos] = (parts.var_between.double().cpu() / mean.clamp_min(tiny).square()).mean(-1)
    elbo = model.get_elbo(adata, return_mean=False, return_table=True, seed=seed)
    members = torch.from_numpy(elbo.drop(columns="mixture").to_numpy().T)
    gap = (logmeanexp(members, 0) - members.mean(0)).numpy()
    return pd.DataFrame({"novelty_cv": cv2, "novelty_llgap": gap}, index=adata.obs_names)


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
    key_added
        Prefix of the ``adata.obs`` columns ``<key>_novelty_cv``, ``<key>_novelty_llgap``
        and ``<key>_is_novel`` (``novelty_cv`` above its threshold) and of
        ``adata.uns[key]["cell_novelty"]`` (thresholds, false-positive rates, settings).

    Returns
    -------
    The per-cell scores and flag.
    """
    if model.n_members < 2:
        raise ValueError("cell_novelty needs an ensemble of at least 2 members to disagree.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    adata = model._validate_anndata(adata)
    scores = _scores(model, adata, n_samples, seed, progress)
    same = adata is model.adata
    ref = scores if same else _scores(model, model.adata, n_samples, seed, progress)
    train_idx = getattr(model, "train_indices", None)
    val_idx = getattr(model, "validation_indices", None)
    info: dict = {"alpha": float(alpha), "n_samples": int(n_samples), "seed": int(seed)}
    if val_idx is not None and len(val_idx) >= 40:
        perm = np.random.default_rng(seed).permutation(np.asarray(val_idx))
        calib, check = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        info["calibrated_on"] = f"{len(calib)} validation cells (held out from training)"
    else:
        calib = np.asarray(train_idx) if train_idx is not None else np.arange(len(ref))
        check = None
        info["calibrated_on"] = f"{len(calib)} training cells (too few validation cells)"
    for name in SCORES:
        threshold = float(np.quantile(ref[name].iloc[calib], 1 - alpha))
        info[f"{name}_threshold"] = threshold
        if check is not None:
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
