"""Populations, not only cells: is a group (cell type, cluster, sample) unlike the cells the
model was checked on?

A per-cell flag at a 1% false-positive rate finds few cells of an unseen type whose scores
are raised but sit under the seen cells' 99th percentile (issue 21: 0 of 348 unseen B
cells on a held-out CITE-seq set, AUROC 0.92). A group of such cells is still plainly
unlike the reference as a whole, so this tests groups: per group, a one-sided
Mann-Whitney U test of its cells' score against the scores of held-out reference cells
(the model's validation cells, which it did not train on), the effect size as the AUROC
``P(score_group > score_reference)`` (ties count half), Benjamini-Hochberg across groups.

Which cells are compared: never cells the model trained on (their scores are biased
low or high against new cells of the same kind, ``tl._novelty``). On the model's own
AnnData a group's tested cells are its cells outside the training set, and its reference
is the validation cells of the *other* groups (leave-group-out, so a group is not tested
against itself); on any other AnnData (a query) every cell is tested against all the
validation cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from ._novelty import KEY, SCORES, cell_novelty
from ._novelty_rule import NoveltyReference, novelty_reference

#: fewest tested cells a group needs to get a p-value
MIN_GROUP_CELLS = 10
COLUMNS = ("n_cells", "n_tested", "n_reference", "median_score", "median_reference", "auroc",
           "pval", "qval", "is_novel")  # fmt: skip


def rank_auroc(x: np.ndarray, ref: np.ndarray) -> float:
    """``P(X > R) + P(X = R) / 2`` for ``X`` from ``x``, ``R`` from ``ref`` (the
    Mann-Whitney U statistic of ``x`` over ``len(x) * len(ref)``).

    Parameters
    ----------
    x, ref
        The two samples.
    """
    ranks = stats.rankdata(np.concatenate([x, ref]))
    u = ranks[: len(x)].sum() - len(x) * (len(x) + 1) / 2
    return float(u / (len(x) * len(ref)))


def group_rank_test(
    scores: np.ndarray,
    groups: np.ndarray,
    reference: np.ndarray,
    reference_groups: np.ndarray | None = None,
    fdr: float = 0.05,
    min_cells: int = MIN_GROUP_CELLS,
    reference_sets: dict | None = None,
) -> pd.DataFrame:
    """Per group, the one-sided rank test of its scores against the reference's.

    Parameters
    ----------
    scores
        Score per tested cell.
    groups
        Group per tested cell.
    reference
        Scores of the reference cells.
    reference_groups
        Group per reference cell: when given, each group's reference leaves its own
        cells out (leave-group-out); ``None``: every group against all of ``reference``.
    fdr
        Benjamini-Hochberg level of ``is_novel``.
    min_cells
        Groups with fewer tested cells get no test (``pval`` NaN, not novel).
    reference_sets
        Per group, positions in ``reference`` of its own reference cells (the matched
        reference); overrides ``reference_groups``.

    Returns
    -------
    One row per group (sorted by ``qval``): :data:`COLUMNS`.
    """
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must be in (0, 1), got {fdr}.")
    scores, groups = np.asarray(scores, dtype=np.float64), np.asarray(groups).astype(str)
    reference = np.asarray(reference, dtype=np.float64)
    ref_groups = None if reference_groups is None else np.asarray(reference_groups).astype(str)
    rows = {}
    for g in pd.unique(groups):
        x = scores[groups == g]
        if reference_sets is not None:
            ref = reference[reference_sets[g]]
        else:
            ref = reference if ref_groups is None else reference[ref_groups != g]
        row = {"n_cells": int(x.size), "n_tested": int(x.size), "n_reference": int(ref.size),
               "median_score": float(np.median(x)) if x.size else np.nan,
               "median_reference": float(np.median(ref)) if ref.size else np.nan,
               "auroc": np.nan, "pval": np.nan}  # fmt: skip
        if x.size >= min_cells and ref.size >= min_cells:
            row["auroc"] = rank_auroc(x, ref)
            row["pval"] = float(stats.mannwhitneyu(x, ref, alternative="greater").pvalue)
        rows[g] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    tested = table["pval"].notna().to_numpy()
    q = np.full(len(table), np.nan)
    if tested.any():
        q[tested] = stats.false_discovery_control(table["pval"].to_numpy()[tested], method="bh")
    table["qval"] = q
    table["is_novel"] = np.nan_to_num(q, nan=1.0) < fdr
    table.index.name = "group"
    return table.sort_values(["qval", "auroc"], ascending=[True, False], na_position="last")


def group_novelty(
    model,
    adata: AnnData | None = None,
    groupby: str = "cell_type",
    score: str = "novelty_cv",
    fdr: float = 0.05,
    min_cells: int = MIN_GROUP_CELLS,
    reference: str = "auto",
    n_neighbors: int = 5,
    n_samples: int = 5,
    seed: int = 0,
    key_added: str = KEY,
    progress: bool = True,
    reference_model=None,
) -> pd.DataFrame:
    """Which groups of cells are unlike the cells the model was checked on.

    Per group of ``obs[groupby]``, a one-sided Mann-Whitney U test of the cells' novelty
    ``score`` against held-out reference cells (module docstring: which cells), the AUROC
    as its effect size, Benjamini-Hochberg across groups; ``is_novel`` is ``qval < fdr``.
    The per-cell scores are read from ``obs[f"{key_added}_{score}"]`` where
    :func:`cell_novelty` wrote them, else computed (and written) by it.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI` with at least 2 members and at
        least 40 validation cells (scvi-tools' default ``train_size=0.9`` keeps 10%).
    adata
        Cells to test, registered with the model (default: the model's own).
    groupby
        ``obs`` column of the groups.
    score
        ``novelty_cv`` (default; on PBMC it flagged no seen type with the deep ensemble,
        where ``novelty_knn``, whose distances are larger in sparse populations, flagged
        three: docs/benchmarks.md), ``novelty_knn`` or ``novelty_llgap``.
    fdr
        Benjamini-Hochberg level of ``is_novel``.
    min_cells
        Fewest tested cells (and reference cells) a group needs to be tested.
    reference
        ``"matched"``: each group against the validation cells nearest to its cells
        (``n_neighbors`` per cell, in member 0's latent space, the tested cells themselves
        left out), so that seen types whose cells disagree more by nature are compared
        with their own kind; ``"all"``: against all validation cells (on the model's own
        AnnData: those of the other groups); ``"auto"`` (default): ``matched`` on a query,
        ``all`` on the model's own AnnData (there a group's tested cells are its
        validation cells, so its nearest *other* validation cells are of other kinds).
    n_neighbors
        Nearest validation cells per tested cell for ``reference="matched"``. Few (5): with
        15, a sparse seen type's nearest validation cells spill over into denser
        neighbouring types, whose scores are lower, and BatchEnsemble flagged NK and CD8 T
        cells on PBMC; with 3 or 5 it flagged only the unseen B cells
        (docs/benchmarks.md).
    n_samples, seed, progress
        Passed to :func:`cell_novelty` when the scores are not there yet.
    reference_model
        For a query model (``load_query_data``): the reference model it was mapped from,
        whose validation cells are the reference (as in :func:`cell_novelty`).
    key_added
        Prefix of the score columns; the table goes to ``adata.uns[key_added]
        ["group_novelty"]`` with its settings.

    Returns
    -------
    One row per group (sorted by ``qval``): ``n_cells``, ``n_tested`` (cells outside the
    training set), ``n_reference``, ``median_score``, ``median_reference``, ``auroc``,
    ``pval``, ``qval``, ``is_novel``.

    Examples
    --------
    >>> table = ev.tl.group_novelty(model, query, groupby="leiden")  # doctest: +SKIP
    >>> table[table["is_novel"]]  # doctest: +SKIP
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}.")
    if reference not in ("auto", "matched", "all"):
        raise ValueError(f"reference must be 'auto', 'matched' or 'all', got {reference!r}.")
    adata = model._validate_anndata(adata)
    if groupby not in adata.obs:
        raise ValueError(f"obs[{groupby!r}] is not in the AnnData; pass groupby= a column of "
                         f"obs ({', '.join(map(str, adata.obs.columns[:8]))}, ...).")  # fmt: skip
    ref = novelty_reference(model, reference_model)
    own = adata is ref.adata
    if reference == "auto":
        reference = "all" if own else "matched"
    column = f"{key_added}_{score}"
    stored = adata.uns.get(key_added, {}).get("cell_novelty", {})
    if column not in adata.obs or "calibration_scores" not in stored:
        cell_novelty(model, adata, n_samples=n_samples, seed=seed, key_added=key_added,
                     progress=progress, reference_model=reference_model)  # fmt: skip
        stored = adata.uns[key_added]["cell_novelty"]
    val = ref.calibration
    ref_scores = np.asarray(stored["calibration_scores"][score], dtype=np.float64)
    values = adata.obs[column].to_numpy(dtype=np.float64)
    labels = adata.obs[groupby].astype(str).to_numpy()
    tested = np.ones(adata.n_obs, dtype=bool)
    if own:
        tested[ref.train] = False
    sets = None
    if reference == "matched":
        sets = _matched_sets(model, adata, tested, labels, ref, n_neighbors)
    table = group_rank_test(values[tested], labels[tested], ref_scores,
                            labels[val] if own else None, fdr, min_cells, sets)  # fmt: skip
    counts = pd.Series(labels).value_counts()
    missing = [g for g in counts.index if g not in table.index]
    if missing:  # groups whose every cell was a training cell
        extra = pd.DataFrame(index=pd.Index(missing, name="group"), columns=table.columns)
        extra["n_tested"], extra["is_novel"] = 0, False
        table = pd.concat([table, extra])
    table["n_cells"] = counts.loc[table.index].to_numpy()
    numeric = {c: float for c in table.columns if c not in ("n_cells", "n_tested", "is_novel")}
    # float NaN, not object, for untested groups: results.h5ad writes the table in uns
    table = table.astype({**numeric, "n_cells": int, "n_tested": int, "is_novel": bool})
    adata.uns.setdefault(key_added, {})["group_novelty"] = {
        "groupby": groupby, "score": score, "fdr": float(fdr), "min_cells": int(min_cells),
        "reference": (f"the {n_neighbors} nearest validation cells of each tested cell "
                      "(member 0's latent space), tested cells left out" if reference ==
                      "matched" else "validation cells of the other groups (leave-group-out)"
                      if own else "all the model's validation cells"),
        "training_cells_tested": False,
        "table": table.reset_index(),
    }  # fmt: skip
    return table


def _matched_sets(model, adata: AnnData, tested: np.ndarray, labels: np.ndarray,
                  ref: NoveltyReference, n_neighbors: int) -> dict:  # fmt: skip
    """Per group, positions (in ``val``) of the validation cells nearest to its tested
    cells in member 0's latent space, without the tested cells themselves."""
    from sklearn.neighbors import NearestNeighbors

    z = np.asarray(model.get_latent_representation(adata, member=0))
    val = ref.calibration
    z_ref = np.asarray(model.get_latent_representation(ref.adata, indices=val, member=0))
    ref_names = np.asarray(ref.adata.obs_names)[val]
    k = min(n_neighbors + 1, len(val))
    _, nn = NearestNeighbors(n_neighbors=k).fit(z_ref).kneighbors(z[tested])
    names, groups = np.asarray(adata.obs_names)[tested], labels[tested]
    sets = {}
    for g in pd.unique(groups):
        rows = groups == g
        chosen = np.unique(nn[rows].ravel())
        sets[g] = chosen[~np.isin(ref_names[chosen], names[rows])]
    return sets
