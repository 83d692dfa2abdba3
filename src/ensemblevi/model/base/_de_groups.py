"""Which cells a differential expression call compares, and their raw-count statistics.

scvi-tools' ``differential_expression`` accepts three ways to name the cells: ``groupby``
with ``group1`` (one group, a list, or ``None`` for every group) against ``group2``
(``None``: the rest), or ``idx1``/``idx2`` (boolean masks, integer positions or
``adata.obs.query`` strings). :func:`comparisons` turns any of them into explicit cell
positions, refusing combinations that would leave an argument unused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scvi import REGISTRY_KEYS

#: groupby when neither it nor idx1 is given (the project's obs convention)
DEFAULT_GROUPBY = "cell_type"


@dataclass
class Comparison:
    """One comparison: cell positions of both sides and scvi-tools' labels for them.

    Parameters
    ----------
    cells1, cells2
        Positions (in ``adata``) of the tested cells and of the reference cells.
    group1, group2
        scvi-tools' ``group1``/``group2`` column values (``group2`` is ``"Rest"`` against
        all other cells); ``None`` for ``idx1``/``idx2`` calls, where scvi-tools writes no
        group columns.
    """

    cells1: np.ndarray
    cells2: np.ndarray
    group1: Any = None
    group2: Any = None

    @property
    def name(self) -> str:
        """The comparison's name in ``uns`` (the group, or ``"idx1"``)."""
        return "idx1" if self.group1 is None else str(self.group1)

    @property
    def reference(self) -> str | None:
        """The reference group's name, ``None`` for all other cells."""
        if self.group2 == "Rest" or (self.group1 is None and self.group2 is None):
            return None
        return "idx2" if self.group1 is None else str(self.group2)


def _cells(idx: Any, adata: Any, name: str) -> np.ndarray:
    """Positions named by a mask, integer positions or an ``obs`` query string."""
    n = adata.n_obs
    if isinstance(idx, str):
        try:
            hits = adata.obs.query(idx).index
        except Exception as err:  # pandas raises many types for a bad expression
            raise ValueError(
                f"{name}={idx!r} is not a valid adata.obs.query expression ({err}); pass a "
                "query over obs columns, a boolean mask or integer positions."
            ) from err
        return np.flatnonzero(adata.obs.index.isin(hits))
    arr = np.asarray(idx).ravel()
    if arr.dtype == bool:
        if arr.size != n:
            raise ValueError(
                f"{name} is a boolean mask of {arr.size} values but adata has {n} cells; "
                "pass one value per cell (or integer positions)."
            )
        return np.flatnonzero(arr)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must be a boolean mask, integer positions or an obs query string, "
            f"got values of dtype {arr.dtype}."
        )
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise IndexError(f"{name} has positions outside the {n} cells of adata.")
    return np.unique(arr % n)


def comparisons(
    adata: Any,
    groupby: str | None,
    group1: Any,
    group2: Any,
    idx1: Any,
    idx2: Any,
) -> list[Comparison]:
    """The comparisons a DE call asks for, as scvi-tools' ``differential_expression`` reads
    its arguments.

    Parameters
    ----------
    adata
        The (validated) AnnData.
    groupby
        ``obs`` column of the groups (``None``: ``"cell_type"``, unless ``idx1`` is given).
    group1
        One group, a list of groups (one comparison each), or ``None`` for every group.
    group2
        The reference group (``None``: all other cells).
    idx1, idx2
        Cells of the two sides instead of groups (``idx2=None``: all other cells).
    """
    if idx1 is not None:
        given = [
            n
            for n, v in (("groupby", groupby), ("group1", group1), ("group2", group2))
            if v is not None
        ]
        if given:
            raise ValueError(
                f"idx1 names the cells directly, so {', '.join(given)} would go unused; "
                "pass either groupby/group1/group2 or idx1/idx2."
            )
        cells1 = _cells(idx1, adata, "idx1")
        if idx2 is None:
            cells2 = np.setdiff1d(np.arange(adata.n_obs), cells1)
        else:
            cells2 = _cells(idx2, adata, "idx2")
            shared = np.intersect1d(cells1, cells2)
            if shared.size:
                raise ValueError(
                    f"idx1 and idx2 share {shared.size} cells; a cell can be on one side only."
                )
        for name, c in (("idx1", cells1), ("idx2", cells2)):
            if c.size == 0:
                raise ValueError(f"{name} selects no cells; it needs at least one.")
        return [Comparison(cells1, cells2)]
    if idx2 is not None:
        raise ValueError("idx2 was given without idx1; pass idx1= the tested cells too.")
    groupby = DEFAULT_GROUPBY if groupby is None else groupby
    if groupby not in adata.obs.columns:
        raise KeyError(
            f"obs has no column {groupby!r} (columns: {list(adata.obs.columns)}); pass "
            "groupby= the column with the groups to compare."
        )
    column = adata.obs[groupby]
    labels = column.astype(str).to_numpy()
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = [str(c) for c in column.cat.categories if str(c) in set(labels)]
    else:
        present = sorted(set(labels))
    if group1 is None:
        if len(present) < 2:
            raise ValueError(
                f"obs[{groupby!r}] has a single group ({present}) in these cells; DE needs "
                "two groups."
            )
        group1 = list(
            column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else present
        )
        group1 = [g for g in group1 if str(g) in present]
    elif isinstance(group1, str) or not isinstance(group1, Sequence | np.ndarray):
        group1 = [group1]
    for g in [*group1, *([] if group2 is None else [group2])]:
        if str(g) not in present:
            raise ValueError(f"Group {g!r} is not in obs[{groupby!r}] (groups: {present}).")
    out = []
    for g in group1:
        in1 = labels == str(g)
        if group2 is not None and str(g) == str(group2):
            raise ValueError(f"group1 {g!r} and group2 {group2!r} are the same group.")
        in2 = ~in1 if group2 is None else labels == str(group2)
        if not in2.any():
            raise ValueError(f"No cells outside {g!r} to compare with.")
        out.append(
            Comparison(
                np.flatnonzero(in1), np.flatnonzero(in2), g, "Rest" if group2 is None else group2
            )
        )
    return out


def raw_count_stats(adata_manager: Any, cells1: np.ndarray, cells2: np.ndarray) -> dict:
    """scvi-tools' ``all_stats`` columns, from the registered counts of both sides.

    ``raw_mean``: mean counts; ``non_zeros_proportion``: share of cells with a count;
    ``raw_normalized_mean``: mean of counts per 10,000 of each cell's total (a cell with no
    counts gives ``nan``, as in scvi-tools). Nothing is written to ``adata``.

    Parameters
    ----------
    adata_manager
        The AnnData's manager (its ``X`` registry is the counts the model reads).
    cells1, cells2
        Cell positions of the two sides.
    """
    x = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    x = sparse.csr_matrix(x) if sparse.issparse(x) else np.asarray(x)
    totals = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    out = {}
    for i, cells in ((1, cells1), (2, cells2)):
        part = x[cells]
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = (1e4 / totals[cells])[:, None]
        normed = part.multiply(scale) if sparse.issparse(part) else part * scale
        out[f"raw_mean{i}"] = np.asarray(part.mean(axis=0), dtype=np.float64).ravel()
        out[f"non_zeros_proportion{i}"] = np.asarray(
            (part != 0).mean(axis=0), dtype=np.float64
        ).ravel()
        out[f"raw_normalized_mean{i}"] = np.asarray(normed.mean(axis=0)).ravel()
    order = ("raw_mean", "non_zeros_proportion", "raw_normalized_mean")  # scvi-tools' order
    return {f"{name}{i}": out[f"{name}{i}"] for name in order for i in (1, 2)}


def annotate_table(
    table: pd.DataFrame, comp: Comparison, manager: Any, var_names: pd.Index, all_stats: bool
) -> pd.DataFrame:
    """Add a comparison's raw-count statistics (``all_stats``) and its group columns.

    Parameters
    ----------
    table
        One comparison's DE table, indexed by gene.
    comp
        The comparison (:func:`comparisons`).
    manager
        The AnnData manager the counts are read from.
    var_names
        The genes, in the order the statistics come in.
    all_stats
        Add the raw-count statistics.
    """
    if all_stats:
        for name, values in raw_count_stats(manager, comp.cells1, comp.cells2).items():
            table[name] = pd.Series(values, index=var_names).loc[table.index]
    if comp.group1 is not None:
        table["comparison"] = f"{comp.group1} vs {comp.group2}"
        table["group1"], table["group2"] = comp.group1, comp.group2
    return table
