"""``ensemblevi de``: a differential expression result added to a finished run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ensemblevi._files import STAGE, staged_output, write_csv, write_json
from ensemblevi._interrupt import set_resume_hint
from ensemblevi._names import file_stem
from ensemblevi._warnings import quiet_third_party
from ensemblevi.pipeline._readings import DE_KEY
from ensemblevi.pipeline._report import render_run_report

#: ``de`` stages its files apart from the run's stage, which may hold a kept model
DE_STAGE = STAGE + "-de"


def de_name(group1: str, group2: str | None) -> str:
    """The file stem of a DE result, unique per pair of exact group names and stable.

    ``de_<group1>_vs_<group2|rest>`` where that is a faithful spelling (letters, digits,
    ``_ . -`` and no ``_vs_`` inside a group name); else the slug plus 8 hex digits of a
    hash of the exact names (:func:`ensemblevi._names.file_stem`), so "CD4 T" and
    "CD4+ T" get different names. Dots are kept: "CD4.Naive" and "CD4.Memory" differ.

    Parameters
    ----------
    group1
        The tested group.
    group2
        The reference group (``None``: all other cells).
    """
    # a group called "rest" would otherwise read as "vs all other cells"
    return file_stem(
        group1,
        group2 or "rest",
        prefix="de_",
        sep="_vs_",
        hashed=group2 == "rest",
        exact=[group1, group2],
    )


@dataclass
class DEResult:
    """A DE result written into a run directory.

    Parameters
    ----------
    name
        The file stem (``tables/<name>.csv``, ``figures/<name>.png``).
    key
        Its key in ``results.h5ad``'s ``uns``.
    table
        The per-gene table.
    settings
        Its settings (``tables/<name>.json``).
    files
        The files written into the run directory (table, settings, figure), as committed.
    """

    name: str
    key: str
    table: pd.DataFrame
    settings: dict
    files: list[Path] = field(default_factory=list)


def check_run_dir(run_dir: Path) -> None:
    """Raise ``FileNotFoundError`` unless ``run_dir`` holds a finished run.

    Parameters
    ----------
    run_dir
        The directory.
    """
    needed = [run_dir / "run.json", run_dir / "results.h5ad", run_dir / "model" / "model.pt"]
    absent = [str(p) for p in needed if not p.exists()]
    if absent:
        raise FileNotFoundError(
            f"{run_dir} is not a finished `ensemblevi run` directory (missing: "
            f"{', '.join(absent)}); run `ensemblevi run --out {run_dir}` first."
        )


def read_run_result(run_dir: Path):
    """The ``results.h5ad`` of a finished run, or a ``ValueError`` saying why it cannot be read.

    Parameters
    ----------
    run_dir
        The run directory (checked with :func:`check_run_dir`).
    """
    import anndata

    path = run_dir / "results.h5ad"
    try:
        return anndata.read_h5ad(path)
    except Exception as err:  # h5py and anndata raise many kinds: all mean "unreadable"
        raise ValueError(
            f"{path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:200]});"
            " an earlier ensemblevi wrote a group name starting with '/' as an HDF5 path. "
            f"Run the same `ensemblevi run ... --out {run_dir}` again to rewrite it (its "
            "trained model is reused)."
        ) from err


def run_de(
    run_dir: str | Path,
    group1: str,
    groupby: str = "cell_type",
    group2: str | None = None,
    *,
    trust: bool = False,
    **options: Any,
) -> DEResult:
    """Differential expression on a run's model, committed into the run directory.

    Stages the table, its settings, the volcano plot, ``results.h5ad`` (with the result
    in ``uns``) and the rebuilt report, then commits them into the run's manifest; the run
    directory is unchanged until then.

    Parameters
    ----------
    run_dir
        Directory of a finished ``ensemblevi run``.
    group1
        The tested group.
    groupby
        ``obs`` column of the groups.
    group2
        The reference group (``None``: all other cells).
    trust
        Also read a run's model in scvi-tools' pickled format (an older ensemblevi's):
        loading it unpickles it, which runs any code the file carries.
    **options
        Passed to ``ensemblevi.tl.differential_expression`` (``delta``, ``fdr_target``,
        ``estimand``, ``n_samples``, ``max_cells``, ``batch_correction``, ``seed``,
        ``null_check``, ``n_null``, ``sample_key``, ``method``, ``design``, ...). With
        ``null_check=True`` its summary goes into the settings (``tables/<name>.json``),
        ``uns`` and the report's DE section. ``sample_key`` defaults to the one recorded by
        ``ensemblevi run --sample-key``; the settings and the report say which unit the
        calls are about (samples, or these cells) and how many samples each side had.
        The report describes the ensemble's estimands for one pair of groups, so
        ``mode``, ``idx1``/``idx2`` and a list ``group1`` are refused here; call
        ``model.differential_expression`` for those.
    """
    from ensemblevi import pl, tl
    from ensemblevi.data._io import write_h5ad_atomic
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.pl._utils import save_figure

    for name in ("mode", "idx1", "idx2", "key_added"):
        if options.get(name) is not None:
            raise ValueError(
                f"run_de does not take {name}= (the run report describes one pair of groups "
                "with the ensemble's estimand, stored under its own key); use "
                "model.differential_expression for it."
            )
    if not isinstance(group1, str):
        raise ValueError(f"run_de compares one group1 (a name), got {group1!r}.")
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    name = de_name(group1, group2)
    key = DE_KEY + name[3:]
    # every file of the run stays; the DE result's files are added or replaced
    with staged_output(run_dir, "run", stage=DE_STAGE, keep_files=lambda out: out.files) as out:
        set_resume_hint(f"Nothing was lost: {run_dir} is unchanged; rerun the command.")
        if options.get("sample_key") is None:  # the run's recorded samples, if any
            recorded = json.loads((run_dir / "run.json").read_text()).get("config", {})
            if recorded.get("sample_key") is not None:
                options["sample_key"] = recorded["sample_key"]
        adata = read_run_result(run_dir)
        with quiet_third_party():
            model = EnsembleSCVI.load(run_dir / "model", adata=adata, trust=trust)
        table = tl.differential_expression(
            model, adata, groupby=groupby, group1=group1, group2=group2, key_added=key, **options
        )
        settings = {**adata.uns[key]["params"], "group1": group1}
        if "null_check" in table.attrs:  # the calibration check on halves of group1
            settings["null_check"] = table.attrs["null_check"]
        settings.update(_unit_settings(table.attrs))
        stage = out.stage
        title = f"{group1} vs {group2 or 'rest'}"
        fig = (
            _sample_volcano(table, settings, title)
            if "pval" in table
            else pl.de_volcano(adata, key=key, title=title, return_fig=True)
        )
        written = [
            write_csv(table, stage / "tables" / f"{name}.csv", index=True),
            write_json(stage / "tables" / f"{name}.json", settings),
            *save_figure(fig, stage / "figures" / name),
        ]
        write_h5ad_atomic(adata, stage / "results.h5ad", overwrite=True)
        render_run_report(run_dir, stage=stage)
    set_resume_hint(None)
    files = [run_dir / p.relative_to(stage) for p in written]
    return DEResult(name, key, table, settings, files)


def _unit_settings(attrs: dict) -> dict:
    """The result's unit of replication for the settings file and the report (JSON): the
    fields ``uns`` stores, with the one comparison's replicates."""
    from ensemblevi.model.base._de_replicated import storable_attrs

    out = storable_attrs(attrs)
    reps = out.pop("replicates", None)
    if isinstance(reps, dict) and reps:  # the command runs one comparison
        out["replicates"] = next(iter(reps.values()))
    return out


def _sample_volcano(table: pd.DataFrame, settings: dict, title: str):
    """LFC against -log10 p of the sample-aware test, calls highlighted."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 4))
    called = table[f"is_de_fdr_{settings['fdr_target']:g}"].to_numpy(dtype=bool)
    y = -np.log10(np.maximum(table["pval"].to_numpy(dtype=float), 1e-300))
    ax.scatter(table["lfc"][~called], y[~called], s=6, c="0.6", label="not called")
    ax.scatter(table["lfc"][called], y[called], s=8, c="C3", label="called")
    ax.set_xlabel("log2 fold change (samples)")
    ax.set_ylabel("-log10 p")
    ax.set_title(title)
    ax.legend(frameon=False)
    return fig
