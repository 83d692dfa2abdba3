"""The original experiment: N scVI models trained with different seeds, as one ensemble."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import scvi
from anndata import AnnData
from scvi.utils import track

from ensemblevi._fingerprint import data_fingerprint, model_record, reuse_problems, save_with_record
from ensemblevi._seeding import forked_rng, seeded_globally
from ensemblevi._warnings import quiet_third_party

if TYPE_CHECKING:
    from ensemblevi.model import EnsembleSCVI


def seed_ensemble(
    adata: AnnData,
    *,
    n_seeds: int = 36,
    save_dir: str | os.PathLike | None = None,
    setup_kwargs: dict[str, Any] | None = None,
    max_epochs: int | None = None,
    train_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    trust: bool = False,
    **scvi_kwargs: Any,
) -> EnsembleSCVI:
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
    trust
        Also reuse a saved seed in scvi-tools' pickled format (``model.save`` of an
        ``scvi.model.SCVI``, or an ensemblevi before save format 2): loading it unpickles
        it, which runs any code the file carries. Without it such a seed is trained again;
        seeds saved here are in ensemblevi's format, which loads without unpickling.
    **scvi_kwargs
        Passed to ``scvi.model.SCVI`` (``n_hidden``, ``n_latent``, ...).

    Returns
    -------
    EnsembleSCVI
        A deep ensemble of ``n_seeds`` members, member ``k`` the model of seed ``k``.
    """
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.model._persistence import load_model, save_model

    setup_kwargs = dict(setup_kwargs or {})
    # scvi-tools' setup checks the counts on rows drawn with numpy's global generator, and
    # building an SCVI to load into draws its initial weights: neither may move the caller's
    with forked_rng():
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
            options = {
                "model": "scvi.model.SCVI",
                "seed": seed,
                "max_epochs": max_epochs,
                "setup_kwargs": setup_kwargs,
                "train_kwargs": train_kwargs or {},
                "scvi_kwargs": scvi_kwargs,
            }
            record = model_record(data, options)
            if reuse_problems(path, record, trust=trust) == []:
                with forked_rng():
                    models.append(load_model(scvi.model.SCVI, path, adata, trust=trust))
                continue
        with seeded_globally(seed), quiet_third_party():
            model = scvi.model.SCVI(adata, **scvi_kwargs)
            model.train(
                max_epochs=max_epochs, **{"enable_progress_bar": False, **(train_kwargs or {})}
            )
        if path is not None:
            save_with_record(path, record, lambda p, m=model: save_model(m, p, overwrite=True))
        models.append(model)
    with forked_rng():
        EnsembleSCVI.setup_anndata(adata, **setup_kwargs)
        return EnsembleSCVI.from_scvi(models, adata=adata)
