"""Which cells a novelty rule may test, which cells set its threshold, and the kNN score.

Written by hand (scvi-tools has no ensemble novelty score or rule). Three facts measured in
``benchmarks/bench_cell_novelty_scores.py`` (PBMC 3k without B cells) shape it:

* every score is biased on the cells a model trained on: the AUROC of training against
  validation cells is 0.70-0.89 for the member-disagreement scores and the latent distance
  (0.28-0.41 the other way for the likelihood gap), so a threshold set on held-out cells
  called 30% of PBMC's training cells novel. Training cells are therefore never tested;
* the distance from a cell to its nearest training cells in each member's latent space,
  averaged over members (``novelty_knn``), ranks an unseen type best (AUROC 0.97 against
  0.68-0.81 for ``novelty_cv``) and is the score the rule decides on. Members' latent
  spaces are never compared with each other: each member's distances are scaled by their
  median over the calibration cells, then the scaled distances are averaged;
* the threshold comes from cells of the reference the model did not train on (its
  validation cells), as a conformal quantile, so new cells like them exceed it with
  probability at most ``alpha``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ensemblevi._fingerprint import weights_digest

#: fewest held-out cells the rule is calibrated on
MIN_VALIDATION_CELLS = 40
#: fewest cells of a sample kept out of training (a 5% conformal threshold needs 19)
MIN_SAMPLE_CELLS = 20


#: the two kinds of calibration a threshold can have (recorded in ``uns``)
TRAINING_SAMPLES = "cells of the training samples"
UNSEEN_SAMPLES = "unseen samples"
#: values of the ``calibration`` option: which held-out cells set the thresholds
CALIBRATIONS = ("auto", "unseen_samples", "training_samples")


@dataclass
class NoveltyReference:
    """The reference cells of a novelty rule.

    Parameters
    ----------
    adata
        The AnnData the model (or the reference it was mapped from) trained on.
    train
        Positions in ``adata`` of the cells it trained on.
    calibration
        Positions of the held-out cells that set the thresholds.
    kind
        :data:`TRAINING_SAMPLES` (validation cells drawn from the samples the model trained
        on) or :data:`UNSEEN_SAMPLES` (cells of whole samples kept out of training).
    calibration_samples
        Sample of each calibration cell (``None``: samples unknown).
    sample_key
        The ``obs`` column of the samples (``None``: not given).
    """

    adata: AnnData
    train: np.ndarray
    calibration: np.ndarray
    kind: str = TRAINING_SAMPLES
    calibration_samples: np.ndarray | None = None
    sample_key: str | None = None

    @property
    def fold_samples(self) -> np.ndarray | None:
        """Sample per calibration cell where the rate is measured across samples (unseen
        samples: each against a threshold from the others), else ``None`` (halves of the
        cells: the calibration cells are new cells of the training samples)."""
        return self.calibration_samples if self.kind == UNSEEN_SAMPLES else None

    def describe(self) -> dict:
        """What the calibration is, for ``uns``: its kind, cells, samples, and for which new
        cells its false-positive rate holds."""
        out = {
            "calibration_kind": self.kind,
            "n_calibration_cells": len(self.calibration),
            "sample_key": self.sample_key,
        }
        if self.calibration_samples is None:
            out["n_calibration_samples"] = None
            out["rate_holds_for"] = (
                "new cells of the samples the model trained on "
                "(samples unknown: pass sample_key to calibrate on "
                "unseen ones)"
            )
            return out
        samples = pd.unique(self.calibration_samples)
        out["n_calibration_samples"] = len(samples)
        out["calibration_sample_names"] = [str(s) for s in samples]
        n_all = self.adata.obs[self.sample_key].nunique()
        if self.kind == UNSEEN_SAMPLES:
            out["rate_holds_for"] = "cells of a new sample (one the model did not train on)"
        elif n_all == 1:
            out["rate_holds_for"] = (
                "new cells of the one sample the model trained on only; "
                "not measured on another sample"
            )
        else:
            out["rate_holds_for"] = (
                "new cells of the samples the model trained on; not "
                "measured on a new sample (no sample was kept out of "
                "training: train with sample_split)"
            )
        return out


def sample_split(
    adata: AnnData,
    sample_key: str,
    *,
    n_holdout: int | None = None,
    train_size: float = 0.9,
    seed: int = 0,
    min_sample_cells: int = MIN_SAMPLE_CELLS,
    batch_size: int = 128,
) -> dict:
    """A training split that keeps whole samples out, for calibration on unseen samples.

    The validation cells are every cell of ``n_holdout`` samples drawn at random and
    ``1 - train_size`` of the cells of the other samples (the model trains on the rest). A
    novelty or ``unknown`` rule then sets its thresholds on the held-out samples' cells
    (``calibration="auto"``), so its false-positive rate is that of a new sample, which
    cells of the training samples do not measure: they share their sample's effects with
    the cells the model trained on.

    Parameters
    ----------
    adata
        The reference AnnData (before or after ``setup_anndata``).
    sample_key
        ``obs`` column of the samples (donors, patients, mice, runs).
    n_holdout
        Samples kept out of training (``None``: a quarter of them, at least 1, at most 2
        fewer than their number). Two or more let the rate be measured on each held-out
        sample against a threshold from the others.
    train_size
        Share of the training samples' cells the model trains on.
    seed
        Seed of the samples and cells drawn.
    min_sample_cells
        Fewest cells a sample needs to be kept out: the held-out samples are drawn among
        those with at least this many (default 20: at alpha 5% a conformal threshold needs
        19 scores, and the rate is measured on each held-out sample against the others').
    batch_size
        The ``batch_size`` the model will train with (128: scvi-tools' and ensemblevi's
        default). Where the training cells would leave a last minibatch of 1 or 2 cells,
        those are moved to the validation cells, as scvi-tools' own random split does:
        batch normalisation fails on a minibatch of one cell, and scvi-tools only warns
        for a split given by index.

    Returns
    -------
    ``{"datasplitter_kwargs": {"external_indexing": [train, validation, test]},
    "holdout_samples": [names]}``: pass the first to ``model.train(datasplitter_kwargs=...)``.

    Examples
    --------
    >>> split = ev.tl.sample_split(adata, "donor")  # doctest: +SKIP
    >>> kwargs = split["datasplitter_kwargs"]  # doctest: +SKIP
    >>> model.train(max_epochs=100, datasplitter_kwargs=kwargs)  # doctest: +SKIP
    """
    if sample_key not in adata.obs:
        raise ValueError(
            f"obs[{sample_key!r}] is not in the AnnData; pass sample_key= the "
            "column of the samples."
        )
    if not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
    samples = adata.obs[sample_key].astype(str).to_numpy()
    names = np.unique(samples)
    if len(names) < 2:
        raise ValueError(
            f"obs[{sample_key!r}] has {len(names)} sample: keeping whole samples "
            "out of training needs at least 2 (with one sample, train as usual; "
            "the rate then holds for new cells of that sample only)."
        )
    if n_holdout is None:
        n_holdout = min(max(1, len(names) // 4), max(1, len(names) - 2))
    if not 1 <= n_holdout < len(names):
        raise ValueError(
            f"n_holdout must be between 1 and {len(names) - 1} (samples: "
            f"{len(names)}), got {n_holdout}."
        )
    sizes = pd.Series(samples).value_counts()
    eligible = np.sort(sizes.index[sizes >= min_sample_cells].to_numpy().astype(str))
    if len(eligible) < n_holdout or len(eligible) == 0:
        shown = ", ".join(f"{k}: {v}" for k, v in sizes.sort_values().head(8).items())
        raise ValueError(
            f"{len(eligible)} of the {len(names)} samples of obs[{sample_key!r}] have at "
            f"least {min_sample_cells} cells, and {n_holdout} must be kept out of "
            f"training (smallest samples: {shown}): merge small samples, keep fewer out "
            "(n_holdout / --holdout-samples), or train without keeping samples out."
        )
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(eligible, size=n_holdout, replace=False))
    out = np.isin(samples, held)
    if out.sum() < MIN_VALIDATION_CELLS:
        raise ValueError(
            f"The {n_holdout} held-out sample(s) {list(map(str, held))} have "
            f"{int(out.sum())} cells; a threshold needs at least {MIN_VALIDATION_CELLS}: "
            "keep more samples out (n_holdout / --holdout-samples)."
        )
    if (~out).sum() < MIN_VALIDATION_CELLS:
        raise ValueError(
            f"Keeping {n_holdout} of {len(names)} samples out leaves {int((~out).sum())} "
            "cells to train on: keep fewer out (n_holdout / --holdout-samples)."
        )
    rest = np.flatnonzero(~out)
    n_val = round(len(rest) * (1 - train_size))
    n_val += (len(rest) - n_val) % batch_size if 0 < (len(rest) - n_val) % batch_size < 3 else 0
    val_rest = rng.choice(rest, size=n_val, replace=False)
    val = np.sort(np.concatenate([np.flatnonzero(out), val_rest]))
    train = np.setdiff1d(rest, val_rest)
    return {
        "datasplitter_kwargs": {"external_indexing": [train, val, np.array([], dtype=int)]},
        "holdout_samples": [str(s) for s in held],
    }


def novelty_reference(
    model, reference_model=None, *, sample_key: str | None = None, calibration: str = "auto"
) -> NoveltyReference:
    """The reference cells of ``model``: its own, or those of the model it was mapped from.

    Parameters
    ----------
    model
        The model that scores the cells.
    reference_model
        For a query model (from ``load_query_data``): the trained reference model, whose
        AnnData and training / validation split define the reference. ``None``: ``model``.
    sample_key
        ``obs`` column of the reference's samples. With it, the validation cells of samples
        the model never trained on (kept out by :func:`sample_split`) are the calibration
        cells, and the rule's rate is that of a new sample.
    calibration
        ``"auto"``: the unseen samples' validation cells where there are any, else all the
        validation cells; ``"unseen_samples"``: those, or an error when no sample was kept
        out; ``"training_samples"``: the validation cells of the samples the model trained
        on (what a model without ``sample_key`` uses).
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}.")
    if calibration != "auto" and sample_key is None:
        raise ValueError(
            f"calibration={calibration!r} chooses cells by sample: pass "
            "sample_key= (the obs column of the samples)."
        )
    if reference_model is None:
        if getattr(model, "is_query_model_", False):
            raise ValueError(
                "This model was mapped from a reference with load_query_data: its own "
                "cells are the query, so they cannot say what the reference looks like. "
                "Pass reference_model=<the reference model, with its AnnData>."
            )
        reference_model = model
    ref_adata = reference_model.adata
    train = getattr(reference_model, "train_indices", None)
    val = getattr(reference_model, "validation_indices", None)
    if ref_adata is None or train is None:
        raise ValueError(
            "The reference model has no AnnData or training split; load it "
            "with its AnnData (Model.load(path, adata=...))."
        )
    n_val = 0 if val is None else len(val)
    if n_val < MIN_VALIDATION_CELLS:
        raise ValueError(
            f"Novelty needs held-out reference cells to set its threshold: the model has "
            f"{n_val} validation cells (at least {MIN_VALIDATION_CELLS}); train with "
            "train_size < 1 (scvi-tools' default 0.9 keeps 10%)."
        )
    if reference_model is not model:
        model._validate_anndata(ref_adata)  # register the reference cells with the query model
    train = np.sort(np.asarray(train, dtype=np.int64))
    val = np.sort(np.asarray(val, dtype=np.int64))
    if sample_key is None:
        return NoveltyReference(ref_adata, train, val)
    if sample_key not in ref_adata.obs:
        raise ValueError(
            f"obs[{sample_key!r}] is not in the reference AnnData; pass "
            "sample_key= its column of samples."
        )
    samples = ref_adata.obs[sample_key].astype(str).to_numpy()
    # a sample is unseen when the model trained on none of its cells
    unseen = ~np.isin(samples[val], np.unique(samples[train]))
    if calibration == "unseen_samples" or (calibration == "auto" and unseen.any()):
        if unseen.sum() < MIN_VALIDATION_CELLS:
            raise ValueError(
                f"{int(unseen.sum())} validation cells belong to samples the model did not "
                f"train on (at least {MIN_VALIDATION_CELLS} are needed): train with "
                "ensemblevi.tl.sample_split(adata, sample_key) to keep whole samples out, or "
                "pass calibration='training_samples'."
            )
        cal, kind = val[unseen], UNSEEN_SAMPLES
    else:
        cal, kind = val[~unseen], TRAINING_SAMPLES
        if len(cal) < MIN_VALIDATION_CELLS:
            raise ValueError(
                f"{len(cal)} validation cells belong to the training samples "
                f"(at least {MIN_VALIDATION_CELLS}): pass "
                "calibration='auto'."
            )
    return NoveltyReference(ref_adata, train, cal, kind, samples[cal], sample_key)


def reference_rows(model, adata: AnnData, ref_adata: AnnData) -> np.ndarray | None:
    """Positions in ``adata`` of ``ref_adata``'s cells when both hold the same cells, else None.

    Decided by the cells, not by object identity: a copy (or a reordered copy) of the
    training AnnData is the model's own cells, whose training cells are never tested. The
    same cells means the same unique cell names *and* the same registered counts: names
    alone repeat across samples (10x barcodes, a simulator's ``cell_0``), and taking a new
    sample's cells for training cells would leave them untested.

    Parameters
    ----------
    model
        The model both AnnData are registered with.
    adata, ref_adata
        The cells to test, and the reference's (the model's training AnnData).
    """
    from scipy import sparse
    from scvi import REGISTRY_KEYS

    if adata is ref_adata:
        return np.arange(adata.n_obs)
    names, ref_names = adata.obs_names, ref_adata.obs_names
    if len(names) != len(ref_names) or not (names.is_unique and ref_names.is_unique):
        return None
    rows = names.get_indexer(ref_names)
    if (rows < 0).any():
        return None
    try:
        x = model.get_anndata_manager(adata, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
        x_ref = model.get_anndata_manager(ref_adata, required=True).get_from_registry(
            REGISTRY_KEYS.X_KEY
        )
        if sparse.issparse(x) and sparse.issparse(x_ref):
            same = (sparse.csr_matrix(x)[rows] != sparse.csr_matrix(x_ref)).nnz == 0
        else:
            x = x.toarray() if sparse.issparse(x) else np.asarray(x)
            x_ref = x_ref.toarray() if sparse.issparse(x_ref) else np.asarray(x_ref)
            same = x.shape == x_ref.shape and np.array_equal(x[rows], x_ref)
    except (ValueError, TypeError, AttributeError):  # unregistered or unreadable: a query
        return None
    return rows if same else None


#: ``obsm`` key of every member's latent means, ``(n_obs, K * n_latent)`` (member-major),
#: and ``uns`` key of the record saying which weights computed them
MEMBER_LATENT_KEY = "ensemblevi_member_latents"


def member_latents(model, adata: AnnData) -> np.ndarray:
    """``(K, n_cells, n_latent)``: every member's latent means of ``adata``'s cells.

    Computed in one batched encoder pass over all members and stored in
    ``adata.obsm["ensemblevi_member_latents"]`` with a digest of the model's weights in
    ``adata.uns``; a later call with the same weights (the novelty rule, stability, the
    member UMAPs of one run) reads it back instead of encoding again. New weights
    (training, another model) recompute it. Counts edited in place after a call are not
    detected: delete the ``obsm`` key then. A view of an AnnData is encoded, not stored.

    Parameters
    ----------
    model
        A trained ensemble model.
    adata
        AnnData registered with it.
    """
    k, n = model.n_members, adata.n_obs
    stamp = weights_digest(model)  # a stored latent is reused only for these weights
    record = adata.uns.get(MEMBER_LATENT_KEY)
    stored = adata.obsm.get(MEMBER_LATENT_KEY)
    if (
        stored is not None
        and isinstance(record, Mapping)
        and record.get("weights") == stamp
        and int(record.get("n_members", -1)) == k
        and np.asarray(stored).shape[1] % k == 0
    ):
        return np.ascontiguousarray(np.asarray(stored).reshape(n, k, -1).transpose(1, 0, 2))
    z = np.asarray(model.get_latent_representation(adata, return_members=True))
    if adata.is_view:  # writing would turn the caller's view into a copy: do not store
        return z
    adata.obsm[MEMBER_LATENT_KEY] = z.transpose(1, 0, 2).reshape(n, -1)
    adata.uns[MEMBER_LATENT_KEY] = {"weights": stamp, "n_members": k, "n_latent": z.shape[2]}
    return z


def knn_distance(
    ref: np.ndarray, x: np.ndarray, n_neighbors: int, self_rows: np.ndarray | None = None
) -> np.ndarray:
    """Mean Euclidean distance from each row of ``x`` to its nearest rows of ``ref``.

    Parameters
    ----------
    ref
        ``(m, d)`` reference points.
    x
        ``(n, d)`` points.
    n_neighbors
        Neighbours averaged over.
    self_rows
        Per row of ``x``, its row in ``ref`` when it is one of them (left out: a point is
        not its own neighbour), else -1. ``None``: none is.
    """
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, len(ref) - 1)
    # the KD tree's queries on torch's thread count. At atlas size (18,641 cells against
    # 16,777 in a trained 10-dimensional latent space): 0.41-0.63 s per member on 2
    # threads, against 0.71-1.04 s on one and 0.57-0.80 s by brute force; the whole
    # analysis 134.3 s against 144.1 s with brute force (docs/benchmarks/speed.md). In a
    # barely clustered space (a model trained one step) the tree is slower: 1.45-2.17 s
    # against brute force's 0.52-0.57 s (benchmarks/probe_analysis_allocations.py knn).
    knn = NearestNeighbors(n_neighbors=k + 1, n_jobs=torch.get_num_threads())
    dist, idx = knn.fit(ref).kneighbors(x)
    if self_rows is None:
        return dist[:, :k].mean(1)
    # drop the point itself where it is found; else the farthest of the k + 1
    is_self = idx == np.asarray(self_rows)[:, None]
    keep = ~is_self
    keep[~is_self.any(1), k] = False
    return (dist * keep).sum(1) / k


def knn_scores(
    z_train: np.ndarray,
    z: np.ndarray,
    z_calibration: np.ndarray,
    n_neighbors: int = 15,
    self_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``novelty_knn`` of the cells ``z`` and of the calibration cells.

    Per member, each cell's mean distance to its ``n_neighbors`` nearest training cells,
    divided by the median of that distance over the calibration cells; then the mean over
    members.

    Parameters
    ----------
    z_train
        ``(K, m, d)`` the training cells' latent means.
    z
        ``(K, n, d)`` the scored cells'.
    z_calibration
        ``(K, c, d)`` the calibration cells' (cells the members did not train on).
    n_neighbors
        Training cells averaged over.
    self_rows
        Per scored cell, its row in ``z_train`` when it is a training cell, else -1.

    Returns
    -------
    ``(scores of z, scores of the calibration cells)``.
    """
    out, calib = np.zeros(z.shape[1]), np.zeros(z_calibration.shape[1])
    for k in range(z_train.shape[0]):
        d = knn_distance(z_train[k], z[k], n_neighbors, self_rows)
        d_cal = knn_distance(z_train[k], z_calibration[k], n_neighbors)
        scale = np.median(d_cal)
        out += d / scale
        calib += d_cal / scale
    return out / z_train.shape[0], calib / z_train.shape[0]
