"""Novelty of an unseen cell type: train without it, score every cell, AUROC per score.

The unseen type's cells are the positives; the negatives are the seen cells the model
held out for validation (never trained on), so the AUROC measures novelty of the type,
not memorisation of the training cells. Scores: ``novelty_cv`` (between-member
coefficient of variation of normalised expression) and ``novelty_llgap`` (mixture minus
mean member log-likelihood), from :func:`ensemblevi.tl.cell_novelty`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ._runs import run_datasets, train_timed

KINDS = (
    ("deep K=4", "deep", 4),
    ("BatchEnsemble K=4", "batch", 4),
    ("Hyper-BatchEnsemble K=4", "hyperbatch", 4),
    ("MC dropout K=4", "mcdropout", 4),
)
#: data set -> (left-out cell type, epochs, learning rate)
SETTINGS = {"pbmc3k": ("B cells", 150, 1e-3), "hard": ("C", 150, 5e-3)}
SCORES = ("novelty_cv", "novelty_llgap")


@dataclass
class OODConfig:
    """Settings of the novelty suite (``quick`` shrinks everything for a smoke test).

    Attributes
    ----------
    datasets
        ``"pbmc3k"`` and presets.
    settings
        Per data set ``(left-out type, epochs, lr)``.
    kinds
        ``(label, ensemble, members)`` per model.
    seed
        Seed of the data, the split and the models.
    data_overrides
        Simulator parameters that override the preset's.
    """

    datasets: tuple[str, ...] = ("pbmc3k", "hard")
    settings: dict = field(default_factory=lambda: dict(SETTINGS))
    kinds: tuple = KINDS
    seed: int = 0
    data_overrides: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw) -> OODConfig:
        tiny = dict(
            datasets=("hard",),
            settings={"hard": ("C", 3, 5e-3)},
            kinds=(("deep K=2", "deep", 2),),
            data_overrides={"n_cells": 150, "n_genes": 30},
        )
        return cls(**{**tiny, **kw})


def run_dataset(name: str, adata, batch_key, cfg: OODConfig, log=print) -> dict:
    from sklearn.metrics import roc_auc_score

    from ensemblevi import tl
    from ensemblevi.model import EnsembleSCVI

    unseen, epochs, lr = cfg.settings[name]
    seen = adata[adata.obs["cell_type"].astype(str) != unseen].copy()
    full = adata.copy()
    for a in (seen, full):
        EnsembleSCVI.setup_anndata(a, layer="counts", batch_key=batch_key)
    is_new = (full.obs["cell_type"].astype(str) == unseen).to_numpy()
    rows = []
    for label, kind, k in cfg.kinds:
        # the novelty rule needs 40 held-out cells: small (--quick) data holds out more
        size = min(0.9, max(0.5, 1 - 45 / seen.n_obs))
        model, secs = train_timed(seen, kind, k, cfg.seed, epochs, lr, train_size=size)
        scores = tl.cell_novelty(model, full, seed=cfg.seed, progress=False)
        held = full.obs_names.isin(seen.obs_names[model.validation_indices])
        sel = is_new | held
        row = {
            "dataset": name,
            "model": label,
            "left_out": unseen,
            "n_unseen": int(is_new.sum()),
            "n_heldout_seen": int(held.sum()),
            "train_s": secs,
        }
        for s in SCORES:
            row[f"auroc_{s}"] = float(roc_auc_score(is_new[sel], scores[s].to_numpy()[sel]))
        rows.append(row)
        log(
            f"    {name} {label}: AUROC novelty_cv {row['auroc_novelty_cv']:.3f}, "
            f"llgap {row['auroc_novelty_llgap']:.3f} ({secs:.0f} s)"
        )
    return {"dataset": name, "rows": rows}


def run(out: Path, cfg, pbmc: Path | None = None, log=print, train: bool = True) -> list[dict]:
    """Every data set of ``cfg`` (PBMC 3k only with ``pbmc``), one result file each."""
    return run_datasets(out, cfg, run_dataset, pbmc, log, train)


def summarise(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r for rec in records for r in rec["rows"]])
