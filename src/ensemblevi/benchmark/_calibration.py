"""Calibration of count predictive distributions on held-out cells: one VAE vs ensembles.

Per data set the models train on 80% of the cells (same seed, architecture and epochs);
on the other 20%, :func:`ensemblevi.metrics.predictive_calibration` scores every count
with the model's posterior predictive (equal mixture over members x latent draws):
randomised-PIT uniformity (half-l1 distance of the 10-bin histogram from flat; PIT
variance x 12, 1 when the spread is right) and randomised coverage of central
50/80/90/95% intervals, for the ensemble and (mean) for its members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._runs import run_datasets, train_timed

KINDS = (
    ("single K=1", "single", 1),
    ("deep K=4", "deep", 4),
    ("BatchEnsemble K=4", "batch", 4),
    ("Hyper-BatchEnsemble K=4", "hyperbatch", 4),
)
#: (epochs, learning rate) per data set; PBMC at scvi-tools' default learning rate
SETTINGS = {
    "lopez2020": (120, 5e-3),
    "draft": (100, 5e-3),
    "hard": (150, 5e-3),
    "pbmc3k": (150, 1e-3),
}


@dataclass
class CalibrationConfig:
    """Settings of the calibration suite (``quick`` shrinks everything for a smoke test).

    Attributes
    ----------
    datasets
        Presets and ``"pbmc3k"``.
    settings
        Per data set ``(epochs, lr)``.
    kinds
        ``(label, ensemble, members)`` per model.
    n_samples
        Posterior draws per member.
    seed
        Seed of the data, the split and the models.
    max_test_cells
        Held-out cells scored (subsampled above).
    data_overrides
        Simulator parameters that override the preset's.
    """

    datasets: tuple[str, ...] = ("lopez2020", "draft", "hard", "pbmc3k")
    settings: dict = field(default_factory=lambda: dict(SETTINGS))
    kinds: tuple = KINDS
    n_samples: int = 10
    seed: int = 0
    max_test_cells: int = 500
    data_overrides: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw) -> CalibrationConfig:
        tiny = dict(
            datasets=("lopez2020",),
            settings={"lopez2020": (3, 5e-3)},
            kinds=(("single K=1", "single", 1), ("deep K=2", "deep", 2)),
            n_samples=2,
            data_overrides={"n_cells": 150, "n_genes": 30},
        )
        return cls(**{**tiny, **kw})


def run_dataset(name: str, adata, batch_key, cfg: CalibrationConfig, log=print) -> dict:
    from ensemblevi import metrics
    from ensemblevi.model import EnsembleSCVI

    epochs, lr = cfg.settings[name]
    order = np.random.default_rng(cfg.seed).permutation(adata.n_obs)
    n_train = int(0.8 * adata.n_obs)
    train = adata[order[:n_train]].copy()
    test = adata[order[n_train:][: cfg.max_test_cells]].copy()
    for a in (train, test):
        EnsembleSCVI.setup_anndata(a, layer="counts", batch_key=batch_key)
    rows, pit_hist = [], {}
    for label, kind, k in cfg.kinds:
        model, secs = train_timed(train, kind, k, cfg.seed, epochs, lr)
        res = metrics.predictive_calibration(
            model, test, n_samples=cfg.n_samples, seed=cfg.seed, progress=False
        )
        cov, uni = res["coverage"], res["uniformity"]
        ll = float(model.get_marginal_ll(test, n_mc_samples=50, seed=cfg.seed))
        row = {
            "dataset": name,
            "model": label,
            "heldout_nll": -ll,
            "pit_l1": float(uni.loc["hist_l1", "ensemble"]),
            "pit_var_x12": float(12 * uni.loc["var", "ensemble"]),
            "member_pit_l1": float(uni.loc["hist_l1", "members (mean)"]),
            "train_s": secs,
        }
        for level in cov.index:
            row[f"cov{round(100 * level)}"] = float(cov.loc[level, "randomized"])
            row[f"member_cov{round(100 * level)}"] = float(cov.loc[level, "member randomized"])
        rows.append(row)
        pit_hist[label] = np.histogram(res["pit"].ravel(), bins=20, range=(0, 1))[0].tolist()
        log(
            f"    {name} {label}: coverage 90% {row.get('cov90', float('nan')):.3f}, "
            f"PIT l1 {row['pit_l1']:.3f} ({secs:.0f} s)"
        )
    return {
        "dataset": name,
        "n_train": train.n_obs,
        "n_test": test.n_obs,
        "n_genes": adata.n_vars,
        "epochs": epochs,
        "lr": lr,
        "rows": rows,
        "pit_hist": pit_hist,
    }


def run(out: Path, cfg, pbmc: Path | None = None, log=print, train: bool = True) -> list[dict]:
    """Every data set of ``cfg`` (PBMC 3k only with ``pbmc``), one result file each."""
    return run_datasets(out, cfg, run_dataset, pbmc, log, train)


def summarise(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r for rec in records for r in rec["rows"]])
