"""The original experiment: N scVI models trained with different seeds, as one ensemble."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import scvi
from anndata import AnnData
from scvi.utils import track

from ensemblevi._fingerprint import (
    RECORD,
    data_fingerprint,
    differences,
    model_record,
    read_record,
    write_record,
)
from ensemblevi._seeding import seeded_globally
from ensemblevi._warnings import quiet_third_party


def seed_ensemble(
    adata: AnnData,
    n_seeds: int = 36,
    save_dir: str | os.PathLike | None = None,
    setup_kwargs: dict[str, Any] | None = None,
    max_epochs: int | None = None,
    train_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    **scvi_kwargs: Any,
):
    """Train ``n_seeds`` ``scvi.model.SCVI`` models, seed 0 .. n-1, as one deep ensemble.

    Each model is scvi-tools' own SCVI, trained with its own seed; with ``save_dir`` each
    is saved (atomically) to ``save_dir/seed_<k>`` with a record of what it was trained on
    (a fingerprint of the counts, genes, cells and registered ``obs`` columns, and the
    options), and a later call loads a saved model only when its record matches, so an
    interrupted run resumes and a model of other data or options is retrained, not reused.
    The result is an :class:`~ensemblevi.model.EnsembleSCVI` whose member ``k`` holds seed
    ``k``'s weights (``EnsembleSCVI.from_scvi``), so every ensemble analysis applies to it.

    Parameters
    ----------
    adata
        AnnData with counts; registered here with ``scvi.model.SCVI.setup_anndata``.
    n_seeds
        Number of trainings.
    save_dir
        Directory of the saved models (resumable), or ``None`` to keep them in memory.
    setup_kwargs
        Passed to ``setup_anndata`` (``layer``, ``batch_key``, ...).
    max_epochs, train_kwargs
        Passed to ``SCVI.train``.
    progress
        Show a progress bar over the seeds.
    **scvi_kwargs
        Passed to ``scvi.model.SCVI`` (``n_hidden``, ``n_latent``, ...).
    """
    from ensemblevi.model import EnsembleSCVI

    setup_kwargs = dict(setup_kwargs or {})
    scvi.model.SCVI.setup_anndata(adata, **setup_kwargs)
    data = None
    if save_dir is not None:  # hashed once: every seed trains on the same data
        obs_keys = [setup_kwargs.get("batch_key"), setup_kwargs.get("labels_key")]
        data = data_fingerprint(adata, setup_kwargs.get("layer"), obs_keys)
    models = []
    for seed in track(range(n_seeds), description="scVI seeds", disable=not progress):
        path = None if save_dir is None else Path(save_dir) / f"seed_{seed}"
        record = None
        if path is not None:
            options = {"model": "scvi.model.SCVI", "seed": seed, "max_epochs": max_epochs,
                       "setup_kwargs": setup_kwargs, "train_kwargs": train_kwargs or {},
                       "scvi_kwargs": scvi_kwargs}  # fmt: skip
            # through JSON so that the comparison sees what the saved record holds
            record = json.loads(json.dumps(model_record(data, options), default=str))
            if (path / "model.pt").exists() and not differences(read_record(path), record):
                models.append(scvi.model.SCVI.load(str(path), adata=adata))
                continue
        with seeded_globally(seed), quiet_third_party():
            model = scvi.model.SCVI(adata, **scvi_kwargs)
            model.train(max_epochs=max_epochs, enable_progress_bar=False, **(train_kwargs or {}))
        if path is not None:
            # the stale record goes first and the new one comes last: a model without a
            # record is never reused, so a kill in between costs a retraining, not a wrong
            # reuse; other files in the folder are left alone
            (path / RECORD).unlink(missing_ok=True)
            model.save(str(path), overwrite=True)
            write_record(path, record)
        models.append(model)
    EnsembleSCVI.setup_anndata(adata, **setup_kwargs)
    return EnsembleSCVI.from_scvi(models, adata=adata)
