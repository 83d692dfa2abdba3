"""Differential expression with samples as the unit of replication: the path of
:func:`~ensemblevi.model.base._de_core.ensemble_de` when ``sample_key`` is given, and the
statement every result carries about what its calls describe."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pandas as pd
from scvi import REGISTRY_KEYS

from . import _de_samples
from ._de_groups import Comparison, annotate_table


def cells_statement(attrs: dict, unused: list[str], reason: str = "no sample_key") -> None:
    """Mark a result as cell-level: its calls describe these cells, not the population."""
    attrs["inference_unit"] = "cells"
    attrs["statement"] = _de_samples.UNIT_STATEMENT["cells"]
    attrs["replicates"] = reason
    if unused:
        attrs["unused_sample_columns"] = list(unused)


def storable_attrs(attrs: dict) -> dict:
    """The honesty fields of a result's attrs, in a form h5ad stores (for ``uns`` params)."""
    out = {
        k: attrs[k]
        for k in (
            "inference_unit",
            "statement",
            "sample_key",
            "sample_key_source",
            "method",
            "replicates",
            "unused_sample_columns",
        )
        if k in attrs
    }
    if isinstance(out.get("replicates"), list):  # one dict per comparison: keyed by name
        out["replicates"] = {
            r["comparison"]: {k: v for k, v in r.items() if k != "comparison"}
            for r in out["replicates"]
        }
    return out


def sample_aware_de(
    model: Any,
    adata: Any,
    manager: Any,
    comps: list[Comparison],
    s: Any,
    *,
    cell_path: Callable[..., list],
) -> tuple[list[tuple[Comparison, pd.DataFrame]], dict]:
    """:func:`ensemble_de`'s path with samples as the unit (:mod:`._de_samples`).

    Returns the ``(comparison, table)`` pairs and the result's ``attrs``.

    Parameters
    ----------
    model
        The ensemble.
    adata, manager
        The validated AnnData and its manager.
    comps
        The comparisons.
    s
        The call's :class:`._de_settings.DESettings` (``sample_key`` set).
    cell_path
        The cell-level path (:func:`._de_core._cell_tables`), for comparisons with fewer
        than 2 samples per side.
    """
    method, sample_key = s.sample_method, s.sample_key
    if sample_key not in adata.obs:
        raise KeyError(
            f"sample_key {sample_key!r} is not a column of obs; columns: {list(adata.obs.columns)}."
        )
    samples = adata.obs[sample_key].astype(str).to_numpy()
    counts = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    tables, described, fallback = [], [], []
    for comp in comps:
        units = _de_samples.make_units(
            samples, comp.cells1, comp.cells2, design=s.design, min_cells=_de_samples.MIN_CELLS
        )
        info = {"comparison": comp.name, **_de_samples.describe_units(units)}
        if units.n_min < 2:
            warnings.warn(
                f"DE {comp.name}: {units.n1} vs {units.n2} usable sample(s) of "
                f"{sample_key!r} ({units.design}; units need >= {_de_samples.MIN_CELLS} "
                "cells), fewer than 2 per side: no between-sample variance can be estimated, "
                "so the test falls back to cells as replicates and its calls describe these "
                "cells, not the population.",
                UserWarning,
                stacklevel=4,
            )
            cells = replace(s, sample_key=None, method=None, design="auto", lfc_threshold=0.0)
            ((_, table),) = cell_path(model, adata, manager, [comp], cells)
            table["inference_unit"] = "cells"
            fallback.append(comp.name)
        else:
            _warn_calibration(comp, units, method, model.n_members)
            table = _de_samples.sample_de(
                model,
                adata,
                counts,
                comp.cells1,
                comp.cells2,
                samples,
                adata.var_names,
                method=method,
                delta=s.lfc_threshold,
                fdr_target=s.fdr_target,
                batch_size=s.batch_size,
                seed=s.seed,
                units=units,
            )
            annotate_table(table, comp, manager, adata.var_names, s.all_stats)
        if units.dropped:
            warnings.warn(
                f"DE {comp.name}: sample(s) {sorted(units.dropped)} left out (fewer "
                f"than {_de_samples.MIN_CELLS} cells on a side, or, paired, no "
                "partner).",
                UserWarning,
                stacklevel=4,
            )
        tables.append((comp, table))
        described.append(info)
    all_cells = len(fallback) == len(comps)
    attrs = {
        "inference_unit": "cells" if all_cells else "samples",
        "statement": _de_samples.UNIT_STATEMENT["cells" if all_cells else "samples"],
        "sample_key": sample_key,
        "method": method,
        "replicates": described,
    }
    if fallback and not all_cells:
        attrs["statement"] += (
            f"; except {', '.join(fallback)}, which had fewer than "
            "2 samples per side and describe these cells"
        )
    return tables, attrs


def _warn_calibration(comp: Comparison, units: Any, method: str, n_members: int) -> None:
    """Warn where the benchmarks did not show the sample-aware test's FDR to hold."""
    if units.n_min < _de_samples.MIN_CALIBRATED_SAMPLES:
        warnings.warn(
            f"DE {comp.name}: {units.n_min} sample(s) per side "
            f"({units.design}); below {_de_samples.MIN_CALIBRATED_SAMPLES} per side "
            "the test's FDR was not shown to hold (docs/de_replicates.md): treat "
            "the calls as provisional.",
            UserWarning,
            stacklevel=5,
        )
    if (
        method == "ensemble"
        and n_members == 1
        and units.n_min >= _de_samples.ONE_MEMBER_CALIBRATED_BELOW
    ):
        warnings.warn(
            f"DE {comp.name}: method='ensemble' with one member and {units.n_min} samples "
            "per side over-called in the benchmarks (one model's denoised pseudobulks "
            "carry an error shared by all samples, which more samples do not average "
            "away; docs/de_replicates.md): use method='counts' (the default) or more "
            "members.",
            UserWarning,
            stacklevel=5,
        )
