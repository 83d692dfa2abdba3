"""The analysis commands: ``simulate``, ``inspect``, ``run``, ``de``, ``map``, ``annotate``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ensemblevi._names import console_text
from ensemblevi.cli._app import (
    DEFAULT_CELLS,
    QUICK,
    BatchOpt,
    CellsOpt,
    DataOpt,
    EnsembleOpt,
    HeartOpt,
    LayerOpt,
    PresetOpt,
    TopGenesOpt,
    TrustOpt,
    _fail,
    _log,
    _open_range,
    _parse_overrides,
    _print_done,
    _run_job,
    app,
    console,
)
from ensemblevi.pipeline._summary import summary_table


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad file.")],
    preset: Annotated[str, typer.Option(help="lopez2020, draft, hard or heartlike.")] = "draft",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a generator parameter, key=value (repeatable)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Simulate a dataset with ground truth and write it atomically to an .h5ad file."""
    from ensemblevi.data import synthetic
    from ensemblevi.data._io import write_h5ad_atomic

    if out.exists() and not force:
        console.print(f"[red]{console_text(out)} exists[/red]; pass --force to overwrite it.")
        raise typer.Exit(1)
    t0 = time.perf_counter()
    try:
        adata = synthetic(preset=preset, seed=seed, **_parse_overrides(set_ or []))
    except ValueError as err:
        _fail(str(err))
    write_h5ad_atomic(adata, out, overwrite=force)
    console.print(
        console_text(
            f"wrote {out}: {adata.n_obs:,} cells x {adata.n_vars:,} genes, preset {preset}, "
            f"seed {seed} ({time.perf_counter() - t0:.1f} s)"
        )
    )


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help=".h5ad file, 10x .h5 file or 10x directory.")],
    layer: Annotated[str | None, typer.Option(help="Layer holding the counts.")] = None,
) -> None:
    """Shape, layers, count validation and obs columns of a data file (read only)."""
    from ensemblevi.data import read

    try:
        adata = read(path, validate=False)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(summary_table(adata, layer, title=str(path)))


@app.command()
def run(
    data: DataOpt = "synthetic",
    preset: PresetOpt = "heartlike",
    n_cells: CellsOpt = DEFAULT_CELLS,
    heart_path: HeartOpt = Path("data"),
    layer: LayerOpt = None,
    batch_key: BatchOpt = None,
    labels_key: Annotated[
        str,
        typer.Option(
            help="obs column of the cell groups (data without the default run without groups)."
        ),
    ] = "cell_type",
    n_top_genes: TopGenesOpt = 1200,
    ensemble: EnsembleOpt = "deep",
    members: Annotated[int, typer.Option(help="Ensemble members K.")] = 4,
    seeds: Annotated[
        int, typer.Option(help="Train N scvi.model.SCVI seeds instead (the original experiment).")
    ] = 0,
    markers: Annotated[
        str,
        typer.Option(
            help="auto (heart where its genes are in the data, "
            "else each group's top genes), none, heart, pbmc3k or a file."
        ),
    ] = "auto",
    marker: Annotated[
        list[str] | None,
        typer.Option("--marker", help="Extra markers TYPE=GENE,GENE (repeatable)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 60,
    n_samples: Annotated[int, typer.Option(help="Latent samples per member.")] = 10,
    quick: Annotated[
        bool, typer.Option("--quick", help="1,000 cells, 10 epochs, 3 samples: < 1 minute.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed (data, initialisation, training).")] = 0,
    resolution: Annotated[
        float, typer.Option(help="Leiden resolution of the cluster stability.")
    ] = 1.0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results"),
    force: Annotated[
        bool, typer.Option("--force", help="Replace a different run (or a stale model).")
    ] = False,
    trust_model: TrustOpt = False,
    sample_key: Annotated[
        str | None,
        typer.Option(
            help="obs column of the biological samples (donors): whole samples are kept "
            "out of training and set the novelty thresholds (the rate of a new sample); "
            "recorded for `ensemblevi de` to compare samples."
        ),
    ] = None,
    holdout_samples: Annotated[
        int | None,
        typer.Option(
            help="Samples kept out of training with --sample-key (default: a quarter of "
            "them, at least 1); 0 trains on every sample."
        ),
    ] = None,
) -> None:
    """The main job: data -> trained ensemble -> marker spread, gene uncertainty, novelty.

    Writes into OUT: model/, results.h5ad, tables/*.csv, figures/*.png, report.html and
    run.json (the input file is never modified). The new result is assembled beside the
    old one and swapped in when complete. A saved model trained on the same data with the
    same options is reused; a different run is replaced only with --force.
    """
    from ensemblevi._interrupt import interruptible
    from ensemblevi.pipeline import RunConfig, run_pipeline
    from ensemblevi.pipeline._run import StageFailed
    from ensemblevi.pipeline._train import RunRefused

    if quick:
        n_cells, epochs, n_samples = QUICK["n_cells"], min(epochs, QUICK["epochs"]), 3
    config = RunConfig(
        data=data,
        preset=preset,
        n_cells=n_cells,
        heart_path=heart_path,
        layer=layer,
        batch_key=batch_key,
        labels_key=labels_key,
        n_top_genes=n_top_genes,
        ensemble=ensemble,
        members=members,
        seeds=seeds,
        markers=markers,
        marker=tuple(marker or ()),
        epochs=epochs,
        n_samples=n_samples,
        seed=seed,
        resolution=resolution,
        sample_key=sample_key,
        holdout_samples=holdout_samples,
    )
    t0 = time.perf_counter()
    try:
        with interruptible():
            reading = run_pipeline(
                config,
                out,
                force=force,
                log=_log,
                on_loaded=lambda ad, lay, title: console.print(summary_table(ad, lay, title=title)),
                trust=trust_model,
            )
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    except (RunRefused, FileExistsError) as err:
        _fail(str(err), 1, "refused")
    except StageFailed as err:
        _fail(str(err), 1)
    _print_done(reading, out, t0)


@app.command("de")
def de_command(
    run_dir: Annotated[Path, typer.Argument(help="Directory written by `ensemblevi run`.")],
    group1: Annotated[str, typer.Option(help="Group to test (a value of --groupby).")],
    groupby: Annotated[str, typer.Option(help="obs column of the groups.")] = "cell_type",
    group2: Annotated[
        str | None, typer.Option(help="Reference group [default: all other cells].")
    ] = None,
    fdr: Annotated[
        float,
        typer.Option(
            help="Target of the posterior expected FDR.",
            callback=lambda v: _open_range(v, "--fdr", 0, 1),
        ),
    ] = 0.05,
    delta: Annotated[
        float,
        typer.Option(
            help="Smallest |LFC| (log2) that counts.",
            callback=lambda v: _open_range(v, "--delta", 0),
        ),
    ] = 0.5,
    estimand: Annotated[
        str, typer.Option(help="counts (calibrated on the counts) or population (the model alone).")
    ] = "counts",
    n_samples: Annotated[int, typer.Option(help="Posterior draws per member.", min=1)] = 50,
    max_cells: Annotated[int, typer.Option(help="Cells per group (subsampled).", min=1)] = 500,
    batch_correction: Annotated[
        bool,
        typer.Option(
            "--batch-correction",
            help="Marginalise over batches (counts: standardise the means to one batch mix).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the cell subsample and draws.")] = 0,
    null_check: Annotated[
        bool,
        typer.Option(
            "--null-check",
            help="Also run the test on random halves of group1 "
            "(no true change) and warn when they get calls.",
        ),
    ] = False,
    n_null: Annotated[int, typer.Option(help="Repetitions of the null check.")] = 3,
    trust_model: TrustOpt = False,
    sample_key: Annotated[
        str | None,
        typer.Option(
            help="obs column of the biological samples: compare samples, "
            "not cells [default: the run's --sample-key]."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="With samples: counts (default), ensemble or pseudobulk (PyDESeq2)."),
    ] = None,
    design: Annotated[str, typer.Option(help="With samples: auto, between or paired.")] = "auto",
) -> None:
    """Ensemble differential expression on a run directory, added to its report.

    Writes tables/de_<group1>_vs_<group2|rest>.csv (+ .json settings),
    figures/de_<...>.png, the result into results.h5ad (uns["ensemblevi_de_<...>"], readable
    by scanpy.get.rank_genes_groups_df) and rebuilds report.html with a DE section. Group
    names that do not spell safely as a file name get a short hash of the exact names
    appended, so two groups never share a result. All of it is committed at once.

    --null-check repeats the same test --n-null times on seeded random halves of group1,
    where every call is false, and warns when the halves' mean fraction of genes called
    is above 0.5% or one repetition calls above 1%; the counts go to the .json settings,
    uns and the report.

    --sample-key compares samples (donors), not cells: pseudobulks per sample and a
    moderated t-test on the between-sample variance (docs/de_replicates.md). Without it
    the calls describe these cells, not the population, and the output says so.
    """
    import warnings

    from ensemblevi.pipeline import run_de
    from ensemblevi.pipeline._readings import de_reading, null_reading

    try:
        with warnings.catch_warnings():  # the null check's warning is printed below
            warnings.filterwarnings("ignore", message="Null check", category=UserWarning)
            res = run_de(
                run_dir,
                group1,
                groupby=groupby,
                group2=group2,
                delta=delta,
                fdr_target=fdr,
                estimand=estimand,
                n_samples=n_samples,
                max_cells=max_cells,
                batch_correction=batch_correction,
                seed=seed,
                null_check=null_check,
                n_null=n_null,
                trust=trust_model,
                sample_key=sample_key,
                method=method,
                design=design,
            )
    except (FileNotFoundError, KeyError, ValueError) as err:
        _fail(str(err))
    except FileExistsError as err:
        _fail(str(err), 1, "refused")
    console.print("- " + console_text(de_reading(res.settings, res.table)), soft_wrap=True)
    if (null := null_reading(res.settings)) is not None:
        warn = res.settings["null_check"]["any_warn"]
        console.print(
            f"[yellow]- {console_text(null)}[/yellow]" if warn else "- " + console_text(null),
            soft_wrap=True,
        )
    from ensemblevi.pipeline._readings import replicates_text

    console.print("- " + console_text(replicates_text(res.settings)), soft_wrap=True)
    columns = (
        ["lfc", "lfc_se", "pval", "padj"]
        if "pval" in res.table
        else ["proba_de", "lfc_median", "lfc_member_std", "call_flips"]
    )
    console.print(console_text(res.table.head(10)[columns].round(3).to_string()))
    console.print(
        console_text(
            f"wrote {', '.join(map(str, res.files))}, updated results.h5ad "
            f"(uns[{res.key!r}]) and report.html"
        ),
        soft_wrap=True,
    )


@app.command("map")
def map_command(
    model: Annotated[Path, typer.Option("--model", help="Directory written by `ensemblevi run`.")],
    query: Annotated[Path, typer.Option(help="New cells: .h5ad, 10x .h5 or 10x directory.")],
    out: Annotated[Path, typer.Option(help="Output directory of the map.")],
    layer: LayerOpt = None,
    batch_key: Annotated[
        str | None, typer.Option(help="obs column of the query's batches [default: one new batch].")
    ] = None,
    groupby: Annotated[
        str | None,
        typer.Option(
            help="obs column of the groups tested [default: cell_type where the "
            "query has it, else Leiden clusters]."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Query training epochs (scArches).")] = 100,
    alpha: Annotated[
        float,
        typer.Option(help="Target FPR of the per-cell flag, also the flag the group test counts."),
    ] = 0.05,
    sample_key: Annotated[
        str | None,
        typer.Option(
            help="obs column of the reference run's samples: calibrate on samples "
            "the run kept out of training, and say which calibration applies."
        ),
    ] = None,
    fdr: Annotated[float, typer.Option(help="FDR of the novel-group calls.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier map in OUT.")] = False,
    trust_model: TrustOpt = False,
) -> None:
    """Map new cells onto a run's ensemble (scArches) and flag what it has not seen.

    The query's cells and groups (--groupby, cell_type, or Leiden clusters where the query
    has neither) are tested against the reference's held-out cells, never the query's own.
    Writes into OUT: results.h5ad, tables/cell_novelty.csv, tables/group_novelty.csv,
    figures/, model/ (the query model), map.json and report.html, committed at once. The
    run directory is only read.
    """
    from ensemblevi.pipeline import run_map

    _run_job(
        lambda: run_map(
            model,
            query,
            out,
            layer=layer,
            batch_key=batch_key,
            groupby=groupby,
            epochs=epochs,
            alpha=alpha,
            fdr=fdr,
            seed=seed,
            force=force,
            log=_log,
            trust=trust_model,
            sample_key=sample_key,
        ),
        out,
    )


@app.command("annotate")
def annotate_command(
    data: Annotated[Path, typer.Option(help="Cells with labels: .h5ad, 10x .h5 or directory.")],
    labels_key: Annotated[str, typer.Option(help="obs column of the cell types.")],
    out: Annotated[Path, typer.Option(help="Output directory of the annotation.")],
    unlabeled_category: Annotated[
        str, typer.Option(help="Value of --labels-key for cells of unknown type.")
    ] = "Unknown",
    holdout: Annotated[
        float,
        typer.Option(
            help="Share of each type's labels hidden to measure accuracy and calibration."
        ),
    ] = 0.2,
    layer: LayerOpt = None,
    batch_key: Annotated[str | None, typer.Option(help="obs column of the batches.")] = None,
    kind: Annotated[
        str, typer.Option(help="Ensemble kind: deep, batch, hyperbatch, mcdropout, single.")
    ] = "deep",
    members: Annotated[int, typer.Option(help="Ensemble members K.")] = 4,
    epochs: Annotated[int, typer.Option(help="Epochs of the scVI ensemble.")] = 60,
    scanvi_epochs: Annotated[int, typer.Option(help="Epochs of the scANVI fine-tuning.")] = 20,
    alpha: Annotated[float, typer.Option(help="Target rate of known cells called unknown.")] = 0.05,
    score: Annotated[
        str,
        typer.Option(
            help=(
                "Unknown rule's score: entropy, mutual_information, max_probability, "
                "novelty_knn, novelty_combined."
            )
        ),
    ] = "entropy",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier annotation.")] = False,
    sample_key: Annotated[
        str | None,
        typer.Option(
            help="obs column of the samples: keep a quarter of them out of "
            "training and calibrate the unknown rule on them (a new sample's rate)."
        ),
    ] = None,
) -> None:
    """Transfer cell types with an ensemble scANVI, say how sure it is, and flag unknowns.

    Writes into OUT: results.h5ad, tables/labels.csv (per cell: type, confidence,
    entropy, mutual information, unknown), tables/label_calibration.csv and confusion.csv
    (on the held-out cells), figures/, model/, annotate.json and report.html, committed at
    once. DATA is only read.
    """
    from ensemblevi.pipeline import run_annotate

    _run_job(
        lambda: run_annotate(
            data,
            out,
            labels_key,
            unlabeled_category=unlabeled_category,
            holdout=holdout,
            layer=layer,
            batch_key=batch_key,
            ensemble=kind,
            members=members,
            epochs=epochs,
            scanvi_epochs=scanvi_epochs,
            alpha=alpha,
            score=score,
            seed=seed,
            force=force,
            log=_log,
            sample_key=sample_key,
        ),
        out,
    )
