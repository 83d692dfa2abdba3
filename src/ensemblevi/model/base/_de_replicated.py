"""Differential expression with samples as the unit of replication: the path of
:func:`~ensemblevi.model.base._de_core.ensemble_de` when ``sample_key`` is given, and the
statement every result carries about what its calls describe."""

from __future__ import annotations

import warnings

import pandas as pd
from scvi import REGISTRY_KEYS

from . import _de_samples
from ._de_groups import annotate_table, comparisons
from ._de_store import store_de


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
    model,
    adata,
    groupby,
    group1,
    group2,
    idx1,
    idx2,
    sample_key,
    method,
    design,
    lfc_threshold,
    fdr_target,
    all_stats,
    key_added,
    batch_size,
    seed,
    mode,
    estimand,
    call,
) -> pd.DataFrame:
    """:func:`ensemble_de` with ``sample_key``: samples are the unit (:mod:`._de_samples`)."""
    from ._de_core import ensemble_de  # the cell-level fallback; _de_core imports this module

    method = _de_samples.DEFAULT_SAMPLE_METHOD if method is None else method
    if method not in _de_samples.SAMPLE_METHODS:
        raise ValueError(
            f"method must be one of {_de_samples.SAMPLE_METHODS} (with sample_key), got {method!r}."
        )
    if mode is not None or estimand != "counts":
        raise ValueError(
            "mode= and estimand= choose a cell-level test; with sample_key the "
            "test compares samples (choose it with method=)."
        )
    if lfc_threshold < 0 or (method == "pseudobulk" and lfc_threshold > 0):
        raise ValueError(
            "lfc_threshold must be >= 0, and 0 with method='pseudobulk' "
            "(PyDESeq2 tests any change here)."
        )
    if not 0 < fdr_target < 1:
        raise ValueError(f"fdr_target must be in (0, 1), got {fdr_target}.")
    model._check_if_trained(warn=True)
    adata = model._validate_anndata(adata)
    if sample_key not in adata.obs:
        raise KeyError(
            f"sample_key {sample_key!r} is not a column of obs; columns: {list(adata.obs.columns)}."
        )
    samples = adata.obs[sample_key].astype(str).to_numpy()
    manager = model.get_anndata_manager(adata, required=True)
    counts = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    comps = comparisons(adata, groupby, group1, group2, idx1, idx2)
    tables, described, fallback = [], [], []
    for comp in comps:
        units = _de_samples.make_units(
            samples, comp.cells1, comp.cells2, design=design, min_cells=_de_samples.MIN_CELLS
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
                stacklevel=3,
            )
            cell_call = {k: v for k, v in call.items() if k in CELL_ARGS}
            cell_call.update(
                key_added=None,
                idx1=comp.cells1,
                idx2=comp.cells2,
                groupby=None,
                group1=None,
                group2=None,
            )
            with warnings.catch_warnings():  # the sample column is known: no advice on it
                warnings.filterwarnings("ignore", message="DE without samples")
                table = ensemble_de(model, adata, **cell_call)
            table["inference_unit"] = "cells"
            fallback.append(comp.name)
        else:
            if not info["calibrated"]:
                warnings.warn(
                    f"DE {comp.name}: {units.n_min} sample(s) per side "
                    f"({units.design}); below {_de_samples.MIN_CALIBRATED_SAMPLES} per side "
                    "the test's FDR was not shown to hold (docs/de_replicates.md): treat "
                    "the calls as provisional.",
                    UserWarning,
                    stacklevel=3,
                )
            if method == "ensemble" and units.n_min >= _de_samples.ENSEMBLE_CALIBRATED_BELOW:
                warnings.warn(
                    f"DE {comp.name}: method='ensemble' with {units.n_min} samples per side "
                    "over-called in the benchmarks (the model's denoised pseudobulks carry "
                    "an error shared by all samples, which more samples do not average "
                    "away; docs/de_replicates.md): use method='counts' (the default) here.",
                    UserWarning,
                    stacklevel=3,
                )
            table = _de_samples.sample_de(
                model,
                adata,
                counts,
                comp.cells1,
                comp.cells2,
                samples,
                adata.var_names,
                method=method,
                delta=lfc_threshold,
                fdr_target=fdr_target,
                batch_size=batch_size,
                seed=seed,
                units=units,
            )
        if units.dropped:
            warnings.warn(
                f"DE {comp.name}: sample(s) {sorted(units.dropped)} left out (fewer "
                f"than {_de_samples.MIN_CELLS} cells on a side, or, paired, no "
                "partner).",
                UserWarning,
                stacklevel=3,
            )
        annotate_table(table, comp, manager, adata.var_names, all_stats)
        tables.append((comp, table))
        described.append(info)
    result = pd.concat([t for _, t in tables], axis=0)
    all_cells = len(fallback) == len(comps)
    result.attrs.update(
        {
            "inference_unit": "cells" if all_cells else "samples",
            "statement": _de_samples.UNIT_STATEMENT["cells" if all_cells else "samples"],
            "sample_key": sample_key,
            "method": method,
            "replicates": described,
        }
    )
    if fallback and not all_cells:
        result.attrs["statement"] += (
            f"; except {', '.join(fallback)}, which had fewer than "
            "2 samples per side and describe these cells"
        )
    if key_added is not None:
        store_de(
            adata,
            tables,
            key_added,
            groupby,
            {
                "estimand": f"samples_{method}",
                "fdr_target": float(fdr_target),
                "delta": float(lfc_threshold),
                "lfc_threshold": float(lfc_threshold),
                "design": design,
                "seed": int(seed),
                "ensemble": model.ensemble,
                "n_members": int(model.n_members),
            },
        )
        adata.uns[key_added]["params"].update(storable_attrs(result.attrs))
    return result


#: the arguments a cell-level fallback of the sample-aware test passes on
CELL_ARGS = (
    "delta",
    "batch_size",
    "fdr_target",
    "silent",
    "n_samples",
    "max_cells",
    "pseudocounts",
    "seed",
    "progress",
    "batch_correction",
)
