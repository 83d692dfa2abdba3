"""Per-cell epistemic scores: does the ensemble know this cell?

Six scores (hand-written: scvi-tools has no ensemble novelty score):

* ``novelty_combined`` (the one the rule decides on): the larger of the distance (the
  mean of ``novelty_knn`` and ``novelty_expr``) and ``novelty_fit``, each over its 95th
  percentile on the calibration cells (:func:`ensemblevi.tl._novelty_expression.combine`).
  On new samples it flagged far more of an unseen type the distances fold onto a known
  one, at the same false-positive rate, on seeds it was not chosen on
  (``docs/new_samples.md``), for deep ensembles and for one model alike;
* ``novelty_knn``: per member, the mean distance from the cell to its 15 nearest training
  cells in that member's latent space, over its median on the calibration cells; averaged
  over members (:mod:`ensemblevi.tl._novelty_rule`);
* ``novelty_expr``: the same distance in 20 principal components of the log-normalised
  counts, fitted on the training cells (no encoder can fold a type onto known ones there);
* ``novelty_fit``: the decoders' misfit to the cell's counts, the members' mean negative
  ELBO less the counts' saturated Poisson log-likelihood, over the square root of the
  cell's total count (a type the encoder folds onto a known one is decoded as that type,
  and its counts miss the decoded means in every gene that sets it apart);
* ``novelty_cv``: the root mean square over genes of the between-member coefficient of
  variation of the cell's denoised expression, ``sqrt(mean_g var_between / mean^2)``
  (``UncertaintySummary.cell_rms_cv``);
* ``novelty_llgap``: the gap between the member mixture's ELBO and the members' mean ELBO,
  ``log mean_k exp(ELBO_k) - mean_k ELBO_k >= 0`` (Jensen), which is 0 when the members
  agree on the cell's likelihood and grows with their disagreement.

Rule: a cell is flagged (``is_novel``) when its ``novelty_combined`` exceeds a conformal
``1 - alpha`` quantile of the score on the reference's validation cells (cells like the
training data that the model did not train on); where those are whole samples the model
did not train on, the largest of the samples' own quantiles, so that the rate holds for a
new sample rather than for the calibration cells pooled
(:func:`ensemblevi.tl._thresholds.rule_threshold`). Cells the model trained on are never
tested (``novelty_tested`` is False, ``is_novel`` False): every score is biased on them
(:mod:`ensemblevi.tl._novelty_rule`). Validation cells of the scored AnnData are each
tested against a threshold from the other half of the validation cells, and the share
of them flagged is the rule's measured false-positive rate (``<score>_fpr_heldout``).
A query model (``load_query_data``) is calibrated on its reference model's cells: pass
``reference_model``. A cell with no counts carries no evidence either way: its scores are
NaN and it is not tested (``novelty_tested`` False, ``is_novel`` False), with a warning
giving their number; it is never called familiar (a score of 0) nor novel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ensemblevi._constants import DEFAULT_KEY, logmeanexp
from ensemblevi.model.base._uncertainty import UncertaintySummary

from ._novelty_expression import (
    _counts,
    combine,
    count_terms,
    expression_knn,
    fit_score,
    median_scaled,
)
from ._novelty_rule import (
    UNSEEN_SAMPLES,
    knn_scores,
    member_latents,
    novelty_reference,
    reference_rows,
)
from ._stream import ElboReducer, SummaryReducer, stream
from ._thresholds import cross_fit_flags, rule_threshold, threshold_rule

KEY = DEFAULT_KEY
SCORES = (
    "novelty_combined",
    "novelty_knn",
    "novelty_expr",
    "novelty_fit",
    "novelty_cv",
    "novelty_llgap",
)
#: the score ``is_novel`` is the flag of
DECIDING = "novelty_combined"
N_NEIGHBORS = 15


def novelty_scores(
    summary: UncertaintySummary,
    elbo: np.ndarray,
    obs_names: pd.Index,
    counts: tuple[np.ndarray, np.ndarray],
) -> pd.DataFrame:
    """The scores read off the streamed pass: the two disagreement scores and the decoders'
    misfit (before scaling), from a filled summary and the members' ELBOs of the same pass
    (the distances, and the misfit's scale, are added by :func:`flag_novel_cells`).

    Parameters
    ----------
    summary
        An :class:`~ensemblevi.model._uncertainty.UncertaintySummary` whose rows are the
        scored cells, filled by a streamed pass.
    elbo
        The members' ELBOs of those cells ``(K, n_cells)``
        (:class:`~ensemblevi.tl._stream.ElboReducer`).
    obs_names
        The cells' names.
    counts
        :func:`~ensemblevi.tl._novelty_expression.count_terms` of the same cells.

    Returns
    -------
    ``novelty_fit`` (unscaled), ``novelty_cv`` and ``novelty_llgap`` per cell.
    """
    members = torch.from_numpy(np.asarray(elbo, dtype=np.float64))
    gap = (logmeanexp(members, 0) - members.mean(0)).numpy()
    fit = fit_score(elbo, *counts)
    return pd.DataFrame(
        {"novelty_fit": fit, "novelty_cv": summary.cell_rms_cv, "novelty_llgap": gap},
        index=obs_names,
    )


def cell_count_terms(model, adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~ensemblevi.tl._novelty_expression.count_terms` of every cell of ``adata``."""
    return count_terms(_counts(model, adata))


def _scores(
    model,
    adata: AnnData,
    n_samples: int,
    seed: int,
    progress: bool,
    cells: np.ndarray | None = None,
) -> pd.DataFrame:
    summary = UncertaintySummary(adata.n_obs, adata.n_vars)
    reducer, elbo = SummaryReducer(summary), ElboReducer(model.n_members, adata.n_obs)
    # with cells, only these are decoded (the reference's calibration cells)
    reducer.cells = elbo.cells = cells
    stream(model, adata, [reducer, elbo], n_samples, seed=seed, progress=progress)
    scores = novelty_scores(summary, elbo.values, adata.obs_names, cell_count_terms(model, adata))
    return scores if cells is None else scores.iloc[np.asarray(cells)]


def _query_batch(model, adata: AnnData) -> str | None:
    """The query's most common batch, where ``model`` is a query model with a batch column.

    A query model decodes its cells through batch columns trained on them (scArches), which
    shifts the decoder scores of every query cell, seen type or not (on PBMC 3k mapped as a
    new batch, ``group_novelty`` flagged every seen type when the reference's cells were
    decoded in their own batch): so the calibration cells are decoded in the query's batch.
    """
    key = model.adata_manager.registry["setup_args"].get("batch_key")
    if not getattr(model, "is_query_model_", False) or key is None or key not in adata.obs:
        return None
    return str(adata.obs[key].astype(str).value_counts().index[0])


def _in_batch(model, cells: AnnData, batch: str) -> AnnData:
    key = model.adata_manager.registry["setup_args"]["batch_key"]
    out = cells.copy()
    out.obs[key] = batch
    return model._validate_anndata(out)


def _check_novelty(model, alpha: float) -> None:
    # one member is allowed: the deciding score (two distances and the fit) needs no
    # disagreement; novelty_cv and novelty_llgap are then 0 for every cell
    if model.n_members < 1:
        raise ValueError("cell_novelty needs a trained model with at least 1 member.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")


def flag_novel_cells(
    model,
    adata: AnnData,
    scores: pd.DataFrame,
    alpha: float,
    info: dict,
    key_added: str = KEY,
    reference_model=None,
    n_neighbors: int = N_NEIGHBORS,
    progress: bool = True,
    *,
    sample_key: str | None = None,
    calibration: str = "auto",
) -> pd.DataFrame:
    """Add the distances (``novelty_knn``, ``novelty_expr``), scale ``novelty_fit``, add
    ``novelty_combined``, calibrate
    every score's threshold on the reference's validation cells, flag the cells the model
    did not train on, and write it all.

    Parameters
    ----------
    model
        The model the scores came from.
    adata
        The scored AnnData (the flags and scores go to its ``obs``).
    scores
        :func:`novelty_scores` of ``adata``.
    alpha
        Target false-positive rate.
    info
        Settings (``n_samples``, ``seed``: the seed also splits the validation cells in
        halves) stored with the thresholds in ``adata.uns[key_added]["cell_novelty"]``.
    key_added
        Prefix of the ``obs`` columns and ``uns`` key.
    reference_model
        The reference a query model was mapped from (``None``: ``model``).
    n_neighbors
        Training cells the ``novelty_knn`` distance averages over.
    progress
        Show a progress bar (when the reference's scores are computed).
    sample_key, calibration
        Which held-out cells set the thresholds (:func:`cell_novelty`).

    Returns
    -------
    ``scores`` with the three distances, a ``<score>_flag`` column per score,
    ``novelty_tested`` and ``is_novel`` (``novelty_combined_flag``).
    """
    scores = scores.copy()
    ref = novelty_reference(model, reference_model, sample_key=sample_key, calibration=calibration)
    rows = reference_rows(model, adata, ref.adata)  # the model's own cells
    own = rows is not None
    seed = int(info.get("seed", 0))
    # the reference's scores are needed on its calibration cells only
    if own:
        calib = scores.iloc[rows[ref.calibration]].copy()
    elif (batch := _query_batch(model, adata)) is not None:
        info = {**info, "calibration_batch": batch}
        calib = _scores(
            model,
            _in_batch(model, ref.adata[ref.calibration], batch),
            info.get("n_samples", 5),
            seed,
            progress,
        )
    else:
        calib = _scores(
            model, ref.adata, info.get("n_samples", 5), seed, progress, cells=ref.calibration
        )
    z_ref = member_latents(model, ref.adata)
    z = z_ref if adata is ref.adata else member_latents(model, adata)
    self_rows = None
    if own:
        self_rows = np.full(adata.n_obs, -1, dtype=np.int64)
        self_rows[rows[ref.train]] = np.arange(len(ref.train))
    knn, knn_cal = knn_scores(
        z_ref[:, ref.train], z, z_ref[:, ref.calibration], n_neighbors, self_rows
    )
    expr, expr_cal = expression_knn(model, adata, ref, n_neighbors, self_rows, seed)
    fit, fit_cal = median_scaled(scores.pop("novelty_fit").to_numpy(), calib["novelty_fit"])
    scores.insert(0, "novelty_fit", fit)
    scores.insert(0, "novelty_expr", expr)
    scores.insert(0, "novelty_knn", knn)
    combined, combined_cal = combine(knn, expr, fit, (knn_cal, expr_cal, fit_cal))
    scores.insert(0, DECIDING, combined)
    calib["novelty_knn"], calib["novelty_expr"], calib["novelty_fit"] = knn_cal, expr_cal, fit_cal
    calib[DECIDING] = combined_cal
    tested = np.ones(adata.n_obs, dtype=bool)
    if own:
        tested[rows[ref.train]] = False
    info = {
        **info,
        "alpha": float(alpha),
        "decides": DECIDING,
        "n_neighbors": n_neighbors,
        "training_cells_tested": False,
        "n_tested": int(tested.sum()),
        "calibrated_on": f"{len(ref.calibration)} validation cells of the "
        + ("model" if reference_model is None else "reference model")
        + (
            f" in {len({*map(str, ref.calibration_samples)})} samples it did not train on"
            if ref.kind == UNSEEN_SAMPLES
            else " (held out from training)"
        ),
        "calibration": calibration,
        **ref.describe(),
    }
    samples = ref.fold_samples
    # one count of calibration cells for every score: whether alpha is reachable with it
    info["threshold_guaranteed"] = rule_threshold(calib[DECIDING].to_numpy(), alpha, samples)[1]
    info["threshold_rule"] = threshold_rule(samples)
    for name in SCORES:
        values = calib[name].to_numpy(dtype=np.float64)
        threshold, _ = rule_threshold(values, alpha, samples)
        held_out, how = cross_fit_flags(values, alpha, seed, samples)
        info["fpr_measured_on"] = how["fpr_measured_on"]
        flags = tested & (scores[name].to_numpy() > threshold)
        if own:  # a validation cell is tested against the other half's threshold
            flags[rows[ref.calibration]] = held_out
        info[f"{name}_threshold"] = threshold
        info[f"{name}_fpr_heldout"] = float(held_out.mean())
        if own:  # how the score's bias on training cells would read, were they tested
            on_train = scores[name].iloc[rows[ref.train]] > threshold
            info[f"{name}_fpr_training"] = float(on_train.mean())
        scores[f"{name}_flag"] = flags
    # what tl.group_novelty compares groups with: the same cells' scores, from this call
    info["calibration_scores"] = {name: calib[name].to_numpy(dtype=np.float64) for name in SCORES}
    _leave_out_empty_cells(model, adata, scores, tested)
    scores["novelty_tested"] = tested
    scores["is_novel"] = scores[f"{DECIDING}_flag"]
    for col in (*SCORES, "novelty_tested", "is_novel"):
        adata.obs[f"{key_added}_{col}"] = scores[col].to_numpy()
    info["n_tested"] = int(tested.sum())
    info["n_flagged"] = int(scores["is_novel"].sum())
    # positions in the reference AnnData of the cells that set the thresholds
    info["calibration_cells"] = ref.calibration
    adata.uns.setdefault(key_added, {})["cell_novelty"] = info
    return scores


def _leave_out_empty_cells(model, adata: AnnData, scores: pd.DataFrame, tested: np.ndarray) -> None:
    """Set the scores of cells without counts to NaN and leave them untested (in place)."""
    import warnings

    from scvi import REGISTRY_KEYS

    counts = model.get_anndata_manager(adata, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
    empty = np.asarray(counts.sum(axis=1)).ravel() == 0
    if not empty.any():
        return
    # an empty cell's latent is the prior's: a score of 0 would call it the most familiar
    warnings.warn(
        f"{int(empty.sum()):,} of {adata.n_obs:,} cells have no counts: their novelty scores "
        "are NaN and they are not tested (nothing in them says whether the model knows "
        "them). Remove them (scanpy.pp.filter_cells(adata, min_counts=1)) to silence this.",
        UserWarning,
        stacklevel=3,
    )
    scores.loc[empty, list(SCORES)] = np.nan
    for name in SCORES:
        scores.loc[empty, f"{name}_flag"] = False
    tested[empty] = False


def cell_novelty(
    model,
    adata: AnnData | None = None,
    *,
    alpha: float = 0.05,
    n_samples: int = 5,
    seed: int = 0,
    key_added: str = KEY,
    progress: bool = True,
    reference_model=None,
    n_neighbors: int = N_NEIGHBORS,
    sample_key: str | None = None,
    calibration: str = "auto",
) -> pd.DataFrame:
    """Per-cell novelty scores and a flag for the cells unlike the training data.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI` (one member is enough: the rule
        decides on two distances and the decoders' fit; ``novelty_cv`` and ``novelty_llgap``
        need 2)
        with at least 40 validation cells (or a query model and its ``reference_model``).
    adata
        Cells to score, registered with the model (default: the model's own).
    alpha
        Target false-positive rate of the rule on new cells like the calibration cells
        (default 5%, the per-cell rule :func:`group_novelty` counts: one alpha for cell
        flags and group calls; at 1% an unseen type's cells fell under the threshold,
        issue 35).
    n_samples
        Latent samples per member for the CV score.
    seed
        Seed of the latent samples, the ELBO and the halves of the validation cells.
    key_added
        Prefix of the ``adata.obs`` columns ``<key>_<score>`` for every score (module
        docstring), ``<key>_novelty_tested`` (False for the cells the model trained on,
        which are never flagged) and ``<key>_is_novel`` (``novelty_combined`` above its
        threshold), and of ``adata.uns[key]["cell_novelty"]`` (thresholds, measured
        false-positive rates, settings, and ``calibration_cells``: positions in the
        reference AnnData of the cells the thresholds were set on).
    progress
        Show a progress bar.
    reference_model
        For a query model from ``load_query_data``: the trained reference model (loaded
        with its AnnData), whose validation cells set the thresholds and whose training
        cells the distances are measured to. ``None``: ``model`` itself.
    n_neighbors
        Nearest training cells the two distances average over.
    sample_key
        ``obs`` column of the reference's samples (donors, runs). With it, and a model
        trained with whole samples kept out (:func:`ensemblevi.tl.sample_split`), the
        thresholds are set on those samples' cells, and the false-positive rate is measured
        on each of them against a threshold from the others: the rate of a *new sample*.
        Without it, the thresholds come from validation cells of the training samples,
        whose rate holds for new cells of those samples only (a new sample's known cells
        differ by its own effects).
    calibration
        ``"auto"`` (unseen samples where there are any), ``"unseen_samples"`` or
        ``"training_samples"`` (:func:`ensemblevi.tl._novelty_rule.novelty_reference`).
        ``uns[key]["cell_novelty"]`` records which (``calibration_kind``: ``"cells of the
        training samples"`` or ``"unseen samples"``), on how many cells and samples, what
        the rate was measured on (``fpr_measured_on``) and for which cells it holds
        (``rate_holds_for``).

    Returns
    -------
    The per-cell scores and flags.

    Examples
    --------
    >>> scores = ev.tl.cell_novelty(model)  # doctest: +SKIP
    >>> query_model = ev.model.EnsembleSCVI.load_query_data(query, model)  # doctest: +SKIP
    >>> query_model.train(max_epochs=100)  # doctest: +SKIP
    >>> ev.tl.cell_novelty(query_model, query, reference_model=model)  # doctest: +SKIP
    """
    _check_novelty(model, alpha)
    adata = model._validate_anndata(adata)
    scores = _scores(model, adata, n_samples, seed, progress)
    info = {"n_samples": int(n_samples), "seed": int(seed)}
    return flag_novel_cells(
        model,
        adata,
        scores,
        alpha,
        info,
        key_added,
        reference_model,
        n_neighbors,
        progress,
        sample_key=sample_key,
        calibration=calibration,
    )
