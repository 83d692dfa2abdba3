"""Populations, not only cells: is a group (cell type, cluster, sample) unlike the cells the
model was checked on?

The default test (``test="majority"``) asks whether *most* of a group's cells are flagged by
the calibrated per-cell rule (``novelty_combined`` above its conformal ``1 - cell_alpha``
threshold): a one-sided binomial test of ``H0: share flagged <= min_share`` (0.5), BH
across groups. A seen type's cells are flagged at about ``cell_alpha`` (sparse ones more:
up to 24% on PBMC 3k), an unseen type's at 83-99%, so the decision does not hinge on how a
score's distribution differs between kinds of cells, which made the rank test below flag
seen sparse types or miss the unseen one (docs/benchmarks.md, three seeds). The rank test
(``test="rank"``) is kept for scores without a per-cell rule:

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

from ._checks import validated
from ._novelty import DECIDING, KEY, SCORES, cell_novelty
from ._novelty_rule import NoveltyReference, novelty_reference, reference_rows
from ._thresholds import cross_fit_flags, rule_threshold

#: fewest tested cells a group needs to get a p-value
MIN_GROUP_CELLS = 10
COLUMNS = (
    "n_cells",
    "n_tested",
    "n_reference",
    "median_score",
    "median_reference",
    "auroc",
    "pval",
    "qval",
    "is_novel",
)


def _bh_calls(table: pd.DataFrame, fdr: float) -> pd.DataFrame:
    """``qval`` (Benjamini-Hochberg over the groups with a ``pval``) and ``is_novel``."""
    tested = table["pval"].notna().to_numpy()
    q = np.full(len(table), np.nan)
    if tested.any():
        q[tested] = stats.false_discovery_control(table["pval"].to_numpy()[tested], method="bh")
    table["qval"] = q
    table["is_novel"] = np.nan_to_num(q, nan=1.0) < fdr
    table.index.name = "group"
    return table


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
        row = {
            "n_cells": int(x.size),
            "n_tested": int(x.size),
            "n_reference": int(ref.size),
            "median_score": float(np.median(x)) if x.size else np.nan,
            "median_reference": float(np.median(ref)) if ref.size else np.nan,
            "auroc": np.nan,
            "pval": np.nan,
        }
        if x.size >= min_cells and ref.size >= min_cells:
            test = stats.mannwhitneyu(x, ref, alternative="greater")
            # U of x over all pairs: P(X > R) + P(X = R) / 2, the AUROC against the reference
            row["auroc"] = float(test.statistic / (x.size * ref.size))
            row["pval"] = float(test.pvalue)
        rows[g] = row
    table = _bh_calls(pd.DataFrame.from_dict(rows, orient="index"), fdr)
    return table.sort_values(["qval", "auroc"], ascending=[True, False], na_position="last")


def group_share_test(
    flags: np.ndarray,
    groups: np.ndarray,
    min_share: float = 0.5,
    fdr: float = 0.05,
    min_cells: int = MIN_GROUP_CELLS,
) -> pd.DataFrame:
    """Per group, the one-sided binomial test that more than ``min_share`` of its cells are
    flagged, Benjamini-Hochberg across groups.

    Parameters
    ----------
    flags
        The per-cell rule's flag of each tested cell.
    groups
        Group per tested cell.
    min_share
        The null's share: ``H0: P(flagged) <= min_share``.
    fdr
        Benjamini-Hochberg level of ``is_novel``.
    min_cells
        Groups with fewer tested cells get no test (``pval`` NaN, not novel).

    Returns
    -------
    One row per group: ``n_tested``, ``n_flagged``, ``share_flagged``, ``pval``, ``qval``,
    ``is_novel``.
    """
    if not 0 < fdr < 1 or not 0 < min_share < 1:
        raise ValueError(f"fdr and min_share are in (0, 1), got {fdr} and {min_share}.")
    flags, groups = np.asarray(flags, dtype=bool), np.asarray(groups).astype(str)
    rows = {}
    for g in pd.unique(groups):
        f = flags[groups == g]
        n, x = int(f.size), int(f.sum())
        p = float(stats.binom.sf(x - 1, n, min_share)) if n >= min_cells else np.nan
        rows[g] = {
            "n_tested": n,
            "n_flagged": x,
            "share_flagged": x / n if n else np.nan,
            "pval": p,
        }
    table = _bh_calls(pd.DataFrame.from_dict(rows, orient="index"), fdr)
    return table


def group_novelty(
    model,
    adata: AnnData | None = None,
    *,
    groupby: str = "cell_type",
    score: str | None = None,
    fdr: float = 0.05,
    min_cells: int = MIN_GROUP_CELLS,
    reference: str = "auto",
    n_neighbors: int = 5,
    n_samples: int = 5,
    seed: int = 0,
    key_added: str = KEY,
    progress: bool = True,
    reference_model=None,
    test: str = "majority",
    cell_alpha: float = 0.05,
    min_share: float = 0.5,
    sample_key: str | None = None,
    calibration: str = "auto",
) -> pd.DataFrame:
    """Which groups of cells are unlike the cells the model was checked on.

    Default (``test="majority"``): per group of ``obs[groupby]``, the share of its tested
    cells that the calibrated per-cell rule flags (``novelty_combined`` above the conformal
    ``1 - cell_alpha`` threshold of the reference's validation cells; on the model's own
    AnnData each validation cell against the other half's threshold), and a one-sided
    binomial test of ``share <= min_share``; BH across groups; ``is_novel`` is
    ``qval < fdr``: most of the group lies outside what the model knows. The AUROC of
    ``score`` against the reference cells is reported beside it. ``test="rank"``: a
    one-sided Mann-Whitney U test of ``score`` against the reference cells (module
    docstring), the AUROC as effect size.
    The per-cell scores are read from ``obs[f"{key_added}_{score}"]`` where
    :func:`cell_novelty` wrote them, else computed (and written) by it.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI` (one member is enough for the
        default test) with at least 40 validation cells (scvi-tools' default
        ``train_size=0.9`` keeps 10%).
    adata
        Cells to test, registered with the model (default: the model's own).
    groupby
        ``obs`` column of the groups.
    score
        The score of the AUROC (and of the rank test): ``novelty_combined`` (default with
        ``majority``), ``novelty_cv`` (default with ``rank``), or any other score of
        :func:`cell_novelty`.
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
    test
        ``"majority"`` (default) or ``"rank"``.
    cell_alpha
        The per-cell rule's false-positive rate in the majority test.
    min_share
        The majority test's null share of flagged cells.
    sample_key, calibration
        Which held-out cells are the reference and set the per-cell threshold (as in
        :func:`cell_novelty`): with ``sample_key`` and whole samples kept out of training,
        those samples' cells, so that a seen type of a *new sample* is flagged at about
        ``cell_alpha``.

    Returns
    -------
    One row per group (sorted by ``qval``): ``n_cells``, ``n_tested`` (cells outside the
    training set), ``n_reference``, ``median_score``, ``median_reference``, ``auroc``,
    ``pval``, ``qval``, ``is_novel``, and with ``majority`` ``n_flagged`` and
    ``share_flagged``.

    Examples
    --------
    >>> table = ev.tl.group_novelty(model, query, groupby="leiden")  # doctest: +SKIP
    >>> table[table["is_novel"]]  # doctest: +SKIP
    """
    if test not in ("majority", "rank"):
        raise ValueError(f"test must be 'majority' or 'rank', got {test!r}.")
    if score is None:
        score = DECIDING if test == "majority" else "novelty_cv"
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}.")
    if not 0 < cell_alpha < 1:
        raise ValueError(f"cell_alpha must be in (0, 1), got {cell_alpha}.")
    if reference not in ("auto", "matched", "all"):
        raise ValueError(f"reference must be 'auto', 'matched' or 'all', got {reference!r}.")
    adata = validated(model, adata, "group_novelty")
    if groupby not in adata.obs:
        raise ValueError(
            f"obs[{groupby!r}] is not in the AnnData; pass groupby= a column of "
            f"obs ({', '.join(map(str, adata.obs.columns[:8]))}, ...)."
        )
    ref = novelty_reference(model, reference_model, sample_key=sample_key, calibration=calibration)
    rows = reference_rows(model, adata, ref.adata)  # the model's own cells
    own = rows is not None
    if reference == "auto":
        reference = "all" if own else "matched"
    column = f"{key_added}_{score}"
    stored = adata.uns.get(key_added, {}).get("cell_novelty", {})
    # the stored scores are reused only when they were calibrated on the same cells
    same = (
        stored.get("sample_key") == sample_key
        and "calibration_cells" in stored
        and np.array_equal(stored["calibration_cells"], ref.calibration)
    )
    has = {column, f"{key_added}_{DECIDING}"} <= set(adata.obs.columns)
    if not has or DECIDING not in stored.get("calibration_scores", {}) or not same:
        cell_novelty(
            model,
            adata,
            n_samples=n_samples,
            seed=seed,
            key_added=key_added,
            progress=progress,
            reference_model=reference_model,
            sample_key=sample_key,
            calibration=calibration,
        )
        stored = adata.uns[key_added]["cell_novelty"]
    val = ref.calibration
    ref_scores = np.asarray(stored["calibration_scores"][score], dtype=np.float64)
    values = adata.obs[column].to_numpy(dtype=np.float64)
    labels = adata.obs[groupby].astype(str).to_numpy()
    tested = ~np.isnan(values)  # cells without counts have no score (cell_novelty)
    if own:
        tested[rows[ref.train]] = False
    sets = None
    if reference == "matched":
        sets = _matched_sets(model, adata, tested, labels, ref, n_neighbors)
    table = group_rank_test(
        values[tested],
        labels[tested],
        ref_scores,
        labels[rows[val]] if own else None,
        fdr,
        min_cells,
        sets,
    )
    if test == "majority":
        flags = _cell_flags(adata, stored, ref, rows, cell_alpha, key_added)
        share = group_share_test(flags[tested], labels[tested], min_share, fdr, min_cells)
        table = table.drop(columns=["pval", "qval", "is_novel"]).join(
            share.drop(columns="n_tested")
        )
        table = table.sort_values(
            ["qval", "share_flagged"], ascending=[True, False], na_position="last"
        )
    counts = pd.Series(labels).value_counts()
    missing = [g for g in counts.index if g not in table.index]
    if missing:  # groups whose every cell was a training cell
        extra = pd.DataFrame(index=pd.Index(missing, name="group"), columns=table.columns)
        extra["n_tested"], extra["is_novel"] = 0, False
        if "n_flagged" in extra:
            extra["n_flagged"] = 0
        table = pd.concat([table, extra])
    table["n_cells"] = counts.loc[table.index].to_numpy()
    numeric = {c: float for c in table.columns if c not in ("n_cells", "n_tested", "is_novel")}
    # float NaN, not object, for untested groups: results.h5ad writes the table in uns
    table = table.astype({**numeric, "n_cells": int, "n_tested": int, "is_novel": bool})
    adata.uns.setdefault(key_added, {})["group_novelty"] = {
        "groupby": groupby,
        "score": score,
        "fdr": float(fdr),
        "min_cells": int(min_cells),
        "test": test,
        "cell_alpha": float(cell_alpha),
        "min_share": float(min_share),
        "reference": (
            f"the {n_neighbors} nearest validation cells of each tested cell "
            "(member 0's latent space), tested cells left out"
            if reference == "matched"
            else "validation cells of the other groups (leave-group-out)"
            if own
            else "all the model's validation cells"
        ),
        "training_cells_tested": False,
        **ref.describe(),
        "table": table.reset_index(),
    }
    return table


def _cell_flags(
    adata: AnnData,
    stored: dict,
    ref: NoveltyReference,
    rows: np.ndarray | None,
    cell_alpha: float,
    key_added: str,
) -> np.ndarray:
    """The per-cell rule at ``cell_alpha`` on the deciding score, from the stored scores."""
    cal = np.asarray(stored["calibration_scores"][DECIDING], dtype=np.float64)
    values = adata.obs[f"{key_added}_{DECIDING}"].to_numpy(dtype=np.float64)
    if rows is None:  # a query: every cell against the threshold
        threshold, _ = rule_threshold(cal, cell_alpha, ref.fold_samples)
        return values > threshold
    flags = np.zeros(adata.n_obs, dtype=bool)  # training cells are never tested
    held_out, _ = cross_fit_flags(cal, cell_alpha, int(stored.get("seed", 0)), ref.fold_samples)
    flags[rows[ref.calibration]] = held_out
    return flags


def _matched_sets(
    model,
    adata: AnnData,
    tested: np.ndarray,
    labels: np.ndarray,
    ref: NoveltyReference,
    n_neighbors: int,
) -> dict:
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
