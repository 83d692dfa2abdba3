"""Stage 4 of a run: tables, figures, results.h5ad, run.json and the report, into the stage."""

from __future__ import annotations

import json
import platform
import shutil
from importlib.metadata import version as pkg_version
from pathlib import Path

import pandas as pd
from anndata import AnnData

from ensemblevi._files import OutputDirectory, write_csv, write_json
from ensemblevi.pipeline._analyse import Analysis
from ensemblevi.pipeline._config import RunConfig
from ensemblevi.pipeline._data import Prepared
from ensemblevi.pipeline._readings import DE_KEY, group_reading, run_reading, stability_reading
from ensemblevi.pipeline._report import render_run_report
from ensemblevi.pipeline._train import Trained

#: tables written without their index (it is a plain row number)
_NO_INDEX = ("marker_summary", "hyperparameters", "markers_not_usable")


def config_frame(config: dict) -> pd.DataFrame:
    """The settings as a one-column table (``value``: each setting as JSON).

    Parameters
    ----------
    config
        The settings (``RunConfig.options()``).
    """
    return pd.DataFrame({"value": [json.dumps(v) for v in config.values()]}, index=list(config))


def write_figures(
    stage: Path, adata: AnnData, trained: Trained, analysis: Analysis, labels_key: str | None
) -> list[str]:
    """Draw and save the run's figures into ``stage/figures``; return their names.

    Parameters
    ----------
    stage
        The run's stage.
    adata
        The analysed data.
    trained
        The run's model.
    analysis
        The analyses' results.
    labels_key
        ``obs`` column the novelty UMAP is coloured by (``None``: the consensus clusters
        where they were computed).
    """
    import matplotlib.pyplot as plt

    from ensemblevi import pl
    from ensemblevi._constants import DEFAULT_KEY
    from ensemblevi.pl._spread import member_histograms
    from ensemblevi.pl._utils import save_figure

    figs = {}
    marker_genes = []
    if analysis.summary is not None:  # the marker figures need markers
        marker_genes = list(analysis.summary["gene"].unique())
        figs = {
            "model_spread": lambda: pl.model_spread(adata, return_fig=True),
            "biological_spread": lambda: pl.biological_spread(adata, return_fig=True),
            "member_histograms": lambda: member_histograms(adata, return_fig=True),
        }
    figs["gene_uncertainty"] = lambda: pl.gene_uncertainty(
        adata, highlight=marker_genes, return_fig=True
    )
    if labels_key is None and f"{DEFAULT_KEY}_consensus_leiden" in adata.obs:
        labels_key = f"{DEFAULT_KEY}_consensus_leiden"
    if analysis.novelty is not None:
        figs["novelty_umap"] = lambda: pl.novelty_umap(adata, color=labels_key, return_fig=True)
    if analysis.groups is not None:
        figs["group_novelty"] = lambda: pl.group_novelty(adata, return_fig=True)
    if analysis.clusters is not None:
        figs["cluster_stability"] = lambda: pl.cluster_stability(adata, return_fig=True)
        figs["stability_umap"] = lambda: pl.stability_umap(adata, return_fig=True)
        figs["member_embeddings"] = lambda: pl.member_embeddings(adata, return_fig=True)
    if trained.model.ensemble == "hyperbatch":
        figs["hyperparameters"] = lambda: pl.hyperparameter_trajectories(
            trained.model, return_fig=True
        )
    for name, draw in figs.items():  # one at a time: a figure's memory goes before the next
        fig = draw()
        save_figure(fig, stage / "figures" / name)
        plt.close(fig)
    return list(figs)


def _carry_de_results(out: OutputDirectory, stage: Path, adata: AnnData) -> None:
    # DE results belong to the model they came from: they stay while it is reused
    import h5py
    from anndata.io import read_elem

    for rel in out.files:
        if rel.startswith(("tables/de_", "figures/de_")):
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(out.path / rel, stage / rel)
    if "results.h5ad" in out.files:
        # only the DE entries of uns are read: not the whole result, which an older version
        # may have written with names it cannot read back
        with h5py.File(out.path / "results.h5ad", "r") as f:
            uns = f.get("uns", {})
            adata.uns.update({k: read_elem(uns[k]) for k in uns if k.startswith(DE_KEY)})


def write_outputs(
    out: OutputDirectory,
    config: RunConfig,
    prepared: Prepared,
    trained: Trained,
    analysis: Analysis,
    timings: dict[str, float],
) -> list[str]:
    """Write a run's result into the stage of ``out`` (committing it is the caller's step).

    Writes ``tables/*.csv``, ``figures/*.png``, ``results.h5ad``, ``run.json`` and
    ``report.html``; with the previous run's model reused, its DE results are carried over.

    Parameters
    ----------
    out
        The run directory (claimed; its stage holds the new result).
    config
        The run's settings.
    prepared
        The run's data.
    trained
        The run's model.
    analysis
        The analyses' results.
    timings
        Seconds per stage so far (``figures`` and ``total`` are added here).
    """
    import time

    from ensemblevi._version import __version__
    from ensemblevi.data._io import write_h5ad_atomic

    t = time.perf_counter()
    stage, adata, model = out.stage, prepared.adata, trained.model
    hyper = model.get_hyperparameters() if model.ensemble == "hyperbatch" else None
    figures = write_figures(stage, adata, trained, analysis, prepared.labels_key)
    tables = {
        "markers_not_usable": prepared.missing if len(prepared.missing) else None,
        "marker_summary": analysis.summary,
        "gene_uncertainty": analysis.genes,
        "cell_novelty": analysis.novelty,
        "group_novelty": analysis.groups,
        "cluster_stability": analysis.clusters,
        "hyperparameters": hyper,
        "run_metadata": config_frame(config.options()),
    }
    for name, frame in tables.items():
        if frame is not None:
            write_csv(frame, stage / "tables" / f"{name}.csv", index=name not in _NO_INDEX)
    timings["figures"] = time.perf_counter() - t
    if trained.source == "result":
        _carry_de_results(out, stage, adata)
    write_h5ad_atomic(adata, stage / "results.h5ad", overwrite=True)
    novelty = adata.uns["ensemblevi"].get("cell_novelty")
    reading = list(prepared.notes)  # what the run did differently from what was asked
    reading += run_reading(
        analysis.summary,
        analysis.genes,
        model.n_members,
        analysis.cv_threshold,
        novelty,
        adata.n_obs,
    )
    if analysis.groups is not None:
        stored = adata.uns["ensemblevi"]["group_novelty"]
        reading += group_reading(analysis.groups, stored["groupby"], stored["fdr"], own=True)
    if "kind_note" in adata.uns["ensemblevi"]:  # a cheap kind answered seed-spread questions
        note = adata.uns["ensemblevi"]["kind_note"]
        reading.append(f"{note['note']} (Answered here: {', '.join(note['questions'])}.)")
    if analysis.clusters is not None:
        reading += stability_reading(
            adata.uns["ensemblevi"]["cluster_stability"],
            adata.uns["ensemblevi"]["neighbourhood_stability"],
        )
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    options = config.options()
    versions = {
        "ensemblevi": __version__,
        **{n: pkg_version(n) for n in ("torch", "scvi-tools", "scanpy", "anndata")},
    }
    meta = {
        "summary": f"{prepared.title}; {adata.n_obs:,} cells x {adata.n_vars:,} genes; "
        f"{model.ensemble} ensemble of {model.n_members}",
        **{f"config.{k}": v for k, v in options.items()},
        "model": f"{trained.source} ({trained.path.name}/)",
        **{f"time.{k} (s)": round(v, 1) for k, v in timings.items()},
        "python": platform.python_version(),
        **versions,
    }
    record = {
        "config": options,
        "timings": timings,
        "versions": versions,
        "reading": reading,
        "meta": meta,
        "figures": figures,
        "model": trained.record,
    }
    write_json(stage / "run.json", record)
    render_run_report(stage)
    return reading
