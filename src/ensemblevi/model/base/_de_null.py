"""A calibration check of a DE call on the user's own data: group1 against itself.

``differential_expression(..., null_check=True)`` repeats the very same test (estimand,
``delta``, ``fdr_target``, ``n_samples``, ``max_cells``, ``pseudocounts``, batches,
weights, ...) ``n_null`` times on two random halves of each comparison's ``group1``
cells. The halves are one population split at random, so there is no true change between
them and every gene called there is a false call. Under this complete null a test whose
FDR holds calls nothing in most repetitions (every call is a false discovery, so the FDR
of a repetition is 1 whenever it calls anything): calls on the halves show that the real
calls hold false ones at a rate the target does not cover. It is a lower bound on trouble,
not an FDR estimate: it sees the model's and the estimand's bias between exchangeable
cells, not a bias that needs a real difference between groups.

The rule (:data:`NULL_MEAN_FRACTION`, :data:`NULL_MAX_FRACTION`): a warning when the
halves' mean fraction of genes called is above 0.5%, or any one repetition calls more than
1% of the genes. Each comparison of a call (a list ``group1``, every group one-vs-rest,
``idx1``) is checked on its own ``group1`` cells; ``mode="vanilla"``, which calls no genes,
is refused, and so is a ``group1`` of fewer than ``2 * MIN_HALF`` cells.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

#: warn when the null halves' mean fraction of genes called exceeds this
NULL_MEAN_FRACTION = 0.005
#: ... or when any one repetition calls more than this fraction of the genes
NULL_MAX_FRACTION = 0.01
#: fewest cells a half may have (group1 needs twice as many)
MIN_HALF = 10
#: mixed into the seed of the splits, so they do not reuse the draws' random streams
SPLIT_STREAM = 0x6E756C6C
RULE = (
    f"warning when the halves' mean fraction of genes called > {100 * NULL_MEAN_FRACTION:g}% "
    f"or any repetition calls > {100 * NULL_MAX_FRACTION:g}% of the genes"
)


def null_halves(cells: np.ndarray, n_null: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_null`` random splits of ``cells`` into two disjoint halves that cover them.

    Repetition ``r`` permutes the cells with a generator seeded by ``(seed, SPLIT_STREAM,
    r)``; the first ``n // 2`` go to the first half, the rest (``n - n // 2``) to the
    second, each sorted.

    Parameters
    ----------
    cells
        Cell positions of the group to split.
    n_null
        Number of splits.
    seed
        Seed of the splits.
    """
    cells = np.asarray(cells)
    if n_null < 1:
        raise ValueError(f"n_null must be >= 1, got {n_null}.")
    if len(cells) < 2 * MIN_HALF:
        raise ValueError(
            f"The null check splits group1 into two halves of at least {MIN_HALF} cells, but "
            f"group1 has {len(cells)} cells; pass null_check=False for this comparison (or a "
            "larger group)."
        )
    out = []
    for r in range(n_null):
        perm = np.random.default_rng([seed, SPLIT_STREAM, r]).permutation(cells)
        half = len(cells) // 2
        out.append((np.sort(perm[:half]), np.sort(perm[half:])))
    return out


def null_verdict(fractions: np.ndarray) -> bool:
    """Whether one comparison's null repetitions warrant the warning (module rule).

    Parameters
    ----------
    fractions
        Fraction of genes called in each repetition.
    """
    f = np.asarray(fractions, dtype=np.float64)
    return bool(f.mean() > NULL_MEAN_FRACTION or f.max() > NULL_MAX_FRACTION)


def run_null_check(
    cell_tables: Callable[..., Any],
    model: Any,
    adata: Any,
    manager: Any,
    comps: list[Any],
    settings: Any,
) -> dict[str, Any]:
    """Repeat a DE call on random halves of each comparison's group1; warn on calls.

    Returns the summary stored in ``table.attrs["null_check"]`` and
    ``adata.uns[key_added]["null_check"]`` (plain lists and numbers, writable to h5ad):
    ``comparison`` (names), ``n_cells_half1``/``n_cells_half2``, ``n_called`` and
    ``fraction_called`` (one list of ``n_null`` per comparison), ``mean_called``,
    ``mean_fraction_called``, ``max_fraction_called``, ``warn`` (per comparison),
    ``any_warn``, ``n_genes``, ``n_null``, ``seed``, ``fdr_target``, ``rule`` and
    ``message`` (the warning, or a sentence saying the check passed).

    Parameters
    ----------
    cell_tables
        :func:`._de_core._cell_tables` (passed in: that module imports this one).
    model
        The model.
    adata, manager
        The (validated) AnnData of the call and its manager.
    comps
        The call's comparisons (:class:`._de_groups.Comparison`).
    settings
        The call's :class:`._de_settings.DESettings` (``n_null`` repetitions).
    """
    from ._de_groups import Comparison

    n_null, seed, target = settings.n_null, settings.seed, settings.fdr_target
    splits = [null_halves(c.cells1, n_null, seed) for c in comps]
    repeat = replace(settings, all_stats=False, null_check=False)
    column = f"is_de_fdr_{target:g}"
    g = int(adata.n_vars)
    out: dict[str, list] = {
        k: []
        for k in (
            "comparison",
            "n_cells_half1",
            "n_cells_half2",
            "n_called",
            "fraction_called",
            "mean_called",
            "mean_fraction_called",
            "max_fraction_called",
            "warn",
        )
    }
    for comp, halves in zip(comps, splits, strict=True):
        called = []
        for a, b in halves:
            ((_, table),) = cell_tables(model, adata, manager, [Comparison(a, b)], repeat)
            called.append(int(table[column].astype(bool).sum()))
        frac = [c / g for c in called]
        out["comparison"].append(comp.name)
        out["n_cells_half1"].append(len(halves[0][0]))
        out["n_cells_half2"].append(len(halves[0][1]))
        out["n_called"].append(called)
        out["fraction_called"].append(frac)
        out["mean_called"].append(float(np.mean(called)))
        out["mean_fraction_called"].append(float(np.mean(frac)))
        out["max_fraction_called"].append(float(np.max(frac)))
        out["warn"].append(null_verdict(frac))
    bad = [i for i, w in enumerate(out["warn"]) if w]
    if bad:
        parts = [f"{out['comparison'][i]}: {out['n_called'][i]} of {g} genes" for i in bad]
        message = (
            f"Null check: on random halves of group1 (no true change, so every call is "
            f"false) this test called {'; '.join(parts)} at the {target:g} FDR "
            f"target ({RULE}). Its FDR does not hold on these data: read the real calls as "
            "containing more false ones than the target says (raise delta, or check with a "
            "stricter target)."
        )
        warnings.warn(message, UserWarning, stacklevel=3)
    else:
        message = (
            f"Null check passed: on {n_null} random splits of group1 into halves the test "
            f"called {max(out['mean_called']):.3g} of {g} genes on average ({RULE})."
        )
    return {
        **out,
        "any_warn": bool(bad),
        "n_genes": g,
        "n_null": int(n_null),
        "seed": int(seed),
        "fdr_target": float(target),
        "rule": RULE,
        "message": message,
    }
