"""Calibration of a trained model's posterior predictive distribution on (held-out) cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from ._counts import COVERAGE_LEVELS, count_cdf, interval_coverage, pit_uniformity, randomize


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().double().cpu().numpy()


@torch.inference_mode()
def predictive_calibration(
    model: Any,
    adata: Any = None,
    *,
    indices: Sequence[int] | None = None,
    n_samples: int = 10,
    levels: Sequence[float] = COVERAGE_LEVELS,
    batch_size: int | None = None,
    seed: int = 0,
    key_added: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Randomised PIT and interval coverage of an :class:`~ensemblevi.model.EnsembleSCVI`.

    The predictive distribution of each count is the model's posterior predictive: an
    equal-weight mixture over ``n_samples`` latent draws of each member (the ensemble), of
    the ZINB / NB / Poisson count model. Each member's own predictive (its latent draws
    only) is scored too, so the ensemble can be compared with its members. Score cells the
    model did not train on (e.g. ``model.validation_indices`` or another AnnData).

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata, indices, batch_size
        Cells to score, as in ``get_normalized_expression``.
    n_samples
        Latent draws per member and cell.
    levels
        Nominal levels of the central intervals.
    seed
        Seed of the latent draws and the PIT randomisation.
    key_added
        Write the summaries to ``adata.uns[key_added]["calibration"]``.
    progress
        Show a progress bar.

    Returns
    -------
    ``pit`` (cells x genes randomised PIT of the ensemble, float32), ``coverage`` (one row
    per level: ``randomized``, ``interval``, their gap to nominal, and ``member
    randomized``: the members' mean), ``uniformity`` (:func:`pit_uniformity` of the ensemble
    and the members' mean) and the settings.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
    if model.module.gene_likelihood not in ("zinb", "nb", "poisson"):
        raise ValueError(
            "predictive_calibration scores counts with a randomised PIT of a count model; "
            f"this model's gene_likelihood is {model.module.gene_likelihood!r} (continuous "
            "data). Train it with gene_likelihood='zinb', 'nb' or 'poisson' on raw counts."
        )
    model._check_if_trained(warn=True)
    adata = model._validate_anndata(adata)
    idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
    if len(idx) == 0:
        raise ValueError("predictive_calibration needs at least one cell.")
    if batch_size is None:  # bound the (samples, members, cells, genes) float64 CDFs
        per_cell = n_samples * model.n_members * adata.n_vars
        batch_size = int(np.clip(4e6 // per_cell, 1, 256))
    rng = np.random.default_rng(seed)
    pits, lowers, uppers, member_pits = [], [], [], []
    batches = model._seeded_batches(
        adata, idx, batch_size, seed, "predictive calibration" if progress else None
    )
    for tensors in batches:
        pred = model.module.predictive(tensors, n_samples=n_samples)
        x = _np(tensors[REGISTRY_KEYS.X_KEY])
        mu, theta, zi = _np(pred.rate), _np(pred.theta), _np(pred.zi_logits)
        upper = count_cdf(x, mu, theta, zi)  # (S, M, B, G)
        lower = count_cdf(x - 1, mu, theta, zi)
        v = rng.random(x.shape)
        ens_lo, ens_up = lower.mean((0, 1)), upper.mean((0, 1))
        pits.append(randomize(ens_lo, ens_up, v).astype(np.float32))
        lowers.append(ens_lo.astype(np.float32))
        uppers.append(ens_up.astype(np.float32))
        mem_lo, mem_up = lower.mean(0), upper.mean(0)  # (M, B, G)
        member_pits.append(randomize(mem_lo, mem_up, v).astype(np.float32))
    pit = np.concatenate(pits)
    members = np.concatenate(member_pits, axis=1)
    coverage = interval_coverage(
        pit, levels=levels, lower=np.concatenate(lowers), upper=np.concatenate(uppers)
    )
    coverage["member randomized"] = np.mean(
        [interval_coverage(m, levels=levels)["randomized"].to_numpy() for m in members], axis=0
    )
    uniformity = pd.DataFrame(
        {
            "ensemble": pit_uniformity(pit),
            "members (mean)": pd.DataFrame([pit_uniformity(m) for m in members]).mean(),
        }
    )
    settings = {
        "n_samples": int(n_samples),
        "seed": int(seed),
        "n_cells": len(idx),
        "ensemble": model.ensemble,
        "n_members": model.n_members,
    }
    if key_added is not None:
        adata.uns.setdefault(key_added, {})["calibration"] = {
            **settings,
            "coverage": coverage.reset_index().to_dict(orient="list"),
            "uniformity": uniformity.to_dict(),
        }
    return {"pit": pit, "coverage": coverage, "uniformity": uniformity, **settings}
