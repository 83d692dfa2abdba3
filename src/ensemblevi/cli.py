"""Command-line interface: ``ensemblevi --help``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from ensemblevi._names import console_text
from ensemblevi.pipeline._summary import summary_table

app = typer.Typer(
    help="Ensembles of scVI-style VAEs and the uncertainty they imply for scRNA-seq data.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, values parsed as JSON where possible (numbers, lists, dicts)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{item!r} is not key=value (e.g. --set n_cells=500).")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


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
    from ensemblevi.data import synthetic, write_h5ad_atomic

    if out.exists() and not force:
        console.print(f"[red]{console_text(out)} exists[/red]; pass --force to overwrite it.")
        raise typer.Exit(1)
    t0 = time.perf_counter()
    try:
        adata = synthetic(preset=preset, seed=seed, **_parse_overrides(set_ or []))
    except ValueError as err:
        _fail(str(err))
    write_h5ad_atomic(adata, out, overwrite=force)
    console.print(console_text(
        f"wrote {out}: {adata.n_obs:,} cells x {adata.n_vars:,} genes, preset {preset}, "
        f"seed {seed} ({time.perf_counter() - t0:.1f} s)"
    ))


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


QUICK = {"n_cells": 1000, "epochs": 10, "n_samples": 3}
DEFAULT_CELLS = 3000  # the embedded default, sized to finish in a few minutes here


# options shared by `run` and `train`
DataOpt = Annotated[
    str, typer.Option(help="synthetic (the embedded default), heart, or a .h5ad/10x path.")
]
PresetOpt = Annotated[str, typer.Option(help="Synthetic preset.")]
CellsOpt = Annotated[int, typer.Option(help="Cells simulated for --data synthetic.")]
HeartOpt = Annotated[
    Path, typer.Option(help="Directory holding hca_subsampled_20k.h5ad for --data heart.")
]
LayerOpt = Annotated[str | None, typer.Option(help="Layer holding the counts.")]
BatchOpt = Annotated[str | None, typer.Option(help="obs column of the batch.")]
TopGenesOpt = Annotated[int, typer.Option(help="Highly variable genes kept.")]
EnsembleOpt = Annotated[str, typer.Option(help="single, deep, batch, hyperbatch or mcdropout.")]
TrustOpt = Annotated[bool, typer.Option("--trust-model", help=(
    "Also load models in scvi-tools' pickled format (older ensemblevi saves): unpickling "
    "runs any code the file carries, so only for files from a source you trust."))]


def _config(**kwargs) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}


@app.command()
def run(
    data: DataOpt = "synthetic",
    preset: PresetOpt = "heartlike",
    n_cells: CellsOpt = DEFAULT_CELLS,
    heart_path: HeartOpt = Path("data"),
    layer: LayerOpt = None,
    batch_key: BatchOpt = None,
    labels_key: Annotated[str, typer.Option(help="obs column of the cell groups (data "
                          "without the default run without groups).")] = "cell_type",
    n_top_genes: TopGenesOpt = 1200,
    ensemble: EnsembleOpt = "deep",
    members: Annotated[int, typer.Option(help="Ensemble members K.")] = 4,
    seeds: Annotated[
        int, typer.Option(help="Train N scvi.model.SCVI seeds instead (the original experiment).")
    ] = 0,
    markers: Annotated[str, typer.Option(help="auto (heart where its genes are in the data, "
                       "else each group's top genes), none, heart, pbmc3k or a file.")] = "auto",
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
        str | None, typer.Option(help="obs column of the biological samples (donors); "
                                 "recorded for `ensemblevi de` to compare samples.")
    ] = None,
) -> None:
    """The main job: data -> trained ensemble -> marker spread, gene uncertainty, novelty.

    Writes into OUT: model/, results.h5ad, tables/*.csv, figures/*.png, report.html and
    run.json (the input file is never modified). The new result is assembled beside the
    old one and swapped in when complete. A saved model trained on the same data with the
    same options is reused; a different run is replaced only with --force.
    """
    from ensemblevi._interrupt import interruptible
    from ensemblevi.pipeline import RunConfig, RunRefused, StageFailed, run_pipeline

    if quick:
        n_cells, epochs, n_samples = QUICK["n_cells"], min(epochs, QUICK["epochs"]), 3
    config = RunConfig(
        data=data, preset=preset, n_cells=n_cells, heart_path=heart_path, layer=layer,
        batch_key=batch_key, labels_key=labels_key, n_top_genes=n_top_genes,
        ensemble=ensemble, members=members, seeds=seeds, markers=markers,
        marker=tuple(marker or ()), epochs=epochs, n_samples=n_samples, seed=seed,
        resolution=resolution, sample_key=sample_key,
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        with interruptible():
            reading = run_pipeline(config, out, force=force, log=_log,
                                   on_loaded=lambda ad, lay, title: console.print(
                                       summary_table(ad, lay, title=title)),
                                   trust=trust_model)  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    except (RunRefused, FileExistsError) as err:
        _fail(str(err), 1, "refused")
    except StageFailed as err:
        _fail(str(err), 1)
    _print_done(reading, out, t0)


def _open_range(value: float, option: str, low: float, high: float = float("inf")) -> float:
    """``value`` if ``low < value < high``; else the parser's error (exit 2, nothing loaded)."""
    if not low < value < high:
        below = f" and < {high:g}" if high < float("inf") else ""
        raise typer.BadParameter(f"{option} must be > {low:g}{below}, got {value:g}.")
    return value


@app.command("de")
def de_command(
    run_dir: Annotated[Path, typer.Argument(help="Directory written by `ensemblevi run`.")],
    group1: Annotated[str, typer.Option(help="Group to test (a value of --groupby).")],
    groupby: Annotated[str, typer.Option(help="obs column of the groups.")] = "cell_type",
    group2: Annotated[
        str | None, typer.Option(help="Reference group [default: all other cells].")
    ] = None,
    fdr: Annotated[float, typer.Option(help="Target of the posterior expected FDR.",
                                       callback=lambda v: _open_range(v, "--fdr", 0, 1))] = 0.05,
    delta: Annotated[float, typer.Option(help="Smallest |LFC| (log2) that counts.",
                                         callback=lambda v: _open_range(v, "--delta", 0))] = 0.5,
    estimand: Annotated[
        str, typer.Option(help="counts (calibrated on the counts), population or cell_pairs.")
    ] = "counts",
    n_samples: Annotated[int, typer.Option(help="Posterior draws per member.", min=1)] = 50,
    max_cells: Annotated[int, typer.Option(help="Cells per group (subsampled).", min=1)] = 500,
    batch_correction: Annotated[
        bool, typer.Option("--batch-correction", help="Marginalise over batches "
                           "(counts: standardise the means to one batch mix).")
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
        str | None, typer.Option(help="obs column of the biological samples: compare samples, "
                                 "not cells [default: the run's --sample-key].")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="With samples: counts (default), ensemble or "
                                 "pseudobulk (PyDESeq2).")
    ] = None,
    design: Annotated[
        str, typer.Option(help="With samples: auto, between or paired.")
    ] = "auto",
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
    from ensemblevi.pipeline._report import de_reading, null_reading

    try:
        with warnings.catch_warnings():  # the null check's warning is printed below
            warnings.filterwarnings("ignore", message="Null check", category=UserWarning)
            res = run_de(
                run_dir, group1, groupby=groupby, group2=group2, delta=delta, fdr_target=fdr,
                estimand=estimand, n_samples=n_samples, max_cells=max_cells,
                batch_correction=batch_correction, seed=seed, null_check=null_check,
                n_null=n_null, trust=trust_model, sample_key=sample_key, method=method,
                design=design,
            )  # fmt: skip
    except (FileNotFoundError, KeyError, ValueError) as err:
        _fail(str(err))
    except FileExistsError as err:
        _fail(str(err), 1, "refused")
    console.print("- " + console_text(de_reading(res.settings, res.table)), soft_wrap=True)
    if (null := null_reading(res.settings)) is not None:
        warn = res.settings["null_check"]["any_warn"]
        console.print(f"[yellow]- {console_text(null)}[/yellow]" if warn
                      else "- " + console_text(null), soft_wrap=True)  # fmt: skip
    from ensemblevi.pipeline._report import replicates_text

    console.print("- " + console_text(replicates_text(res.settings)), soft_wrap=True)
    columns = (["lfc", "lfc_se", "pval", "padj"] if "pval" in res.table
               else ["proba_de", "lfc_median", "lfc_member_std", "call_flips"])  # fmt: skip
    console.print(console_text(res.table.head(10)[columns].round(3).to_string()))
    console.print(console_text(f"wrote {', '.join(map(str, res.files))}, updated results.h5ad "
                               f"(uns[{res.key!r}]) and report.html"), soft_wrap=True)


@app.command("map")
def map_command(
    model: Annotated[Path, typer.Option("--model", help="Directory written by `ensemblevi run`.")],
    query: Annotated[Path, typer.Option(help="New cells: .h5ad, 10x .h5 or 10x directory.")],
    out: Annotated[Path, typer.Option(help="Output directory of the map.")],
    layer: LayerOpt = None,
    batch_key: Annotated[
        str | None,
        typer.Option(help="obs column of the query's batches [default: one new batch].")
    ] = None,
    groupby: Annotated[
        str | None,
        typer.Option(help="obs column of the groups tested [default: cell_type where the "
                     "query has it, else Leiden clusters].")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Query training epochs (scArches).")] = 100,
    alpha: Annotated[float, typer.Option(help="Target FPR of the per-cell flag, also the "
                                       "flag the group test counts.")] = 0.05,
    sample_key: Annotated[
        str | None,
        typer.Option(help="obs column of the reference run's samples: calibrate on samples "
                     "the run kept out of training, and say which calibration applies.")
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

    _run_job(lambda: run_map(model, query, out, layer=layer, batch_key=batch_key,
                             groupby=groupby, epochs=epochs, alpha=alpha, fdr=fdr, seed=seed,
                             force=force, log=_log, trust=trust_model,
                             sample_key=sample_key), out)  # fmt: skip


@app.command("annotate")
def annotate_command(
    data: Annotated[Path, typer.Option(help="Cells with labels: .h5ad, 10x .h5 or directory.")],
    labels_key: Annotated[str, typer.Option(help="obs column of the cell types.")],
    out: Annotated[Path, typer.Option(help="Output directory of the annotation.")],
    unlabeled_category: Annotated[
        str, typer.Option(help="Value of --labels-key for cells of unknown type.")
    ] = "Unknown",
    holdout: Annotated[
        float, typer.Option(help="Share of each type's labels hidden to measure accuracy "
                            "and calibration.")
    ] = 0.2,
    layer: LayerOpt = None,
    batch_key: Annotated[str | None, typer.Option(help="obs column of the batches.")] = None,
    kind: Annotated[str, typer.Option(help="Ensemble kind: deep, batch, hyperbatch, "
                                      "mcdropout, single.")] = "deep",
    members: Annotated[int, typer.Option(help="Ensemble members K.")] = 4,
    epochs: Annotated[int, typer.Option(help="Epochs of the scVI ensemble.")] = 60,
    scanvi_epochs: Annotated[int, typer.Option(help="Epochs of the scANVI fine-tuning.")] = 20,
    alpha: Annotated[float, typer.Option(help="Target rate of known cells called unknown.")]
    = 0.05,
    score: Annotated[str, typer.Option(help="Unknown rule's score: entropy, "
                                       "mutual_information, max_probability, novelty_knn.")]
    = "entropy",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier annotation.")]
    = False,
    sample_key: Annotated[
        str | None,
        typer.Option(help="obs column of the samples: keep a quarter of them out of "
                     "training and calibrate the unknown rule on them (a new sample's rate).")
    ] = None,
) -> None:
    """Transfer cell types with an ensemble scANVI, say how sure it is, and flag unknowns.

    Writes into OUT: results.h5ad, tables/labels.csv (per cell: type, confidence,
    entropy, mutual information, unknown), tables/label_calibration.csv and confusion.csv
    (on the held-out cells), figures/, model/, annotate.json and report.html, committed at
    once. DATA is only read.
    """
    from ensemblevi.pipeline import run_annotate

    _run_job(lambda: run_annotate(
        data, out, labels_key, unlabeled_category=unlabeled_category, holdout=holdout,
        layer=layer, batch_key=batch_key, ensemble=kind, members=members, epochs=epochs,
        scanvi_epochs=scanvi_epochs, alpha=alpha, score=score, seed=seed, force=force,
        log=_log, sample_key=sample_key), out)  # fmt: skip


def _run_job(job: Callable[[], Any], out: Path) -> None:
    """Run a job writing into ``out``: bad input exits 2, a refused replacement 1; print
    its reading and what it wrote."""
    from ensemblevi._interrupt import interruptible

    t0 = time.perf_counter()
    try:
        with interruptible():
            res = job()
    except (FileNotFoundError, KeyError, ValueError) as err:
        _fail(str(err))
    except FileExistsError as err:
        _fail(str(err), 1)
    _print_done(res.reading, out, t0)


def _log(message: Any) -> None:
    """Print a job's progress line literally (it may hold names from the data or paths)."""
    text, warn = console_text(message), str(message).startswith(("warning", "markers not"))
    console.print(f"[yellow]{text}[/yellow]" if warn else text,
                  soft_wrap=True)  # fmt: skip


def _print_done(reading: list[str], out: Path, t0: float) -> None:
    for line in reading:
        console.print(f"- {console_text(line)}", soft_wrap=True)
    console.print(console_text(f"wrote {out}/report.html, results.h5ad, tables/, figures/, "
                               f"model/ in {time.perf_counter() - t0:.1f} s"))  # fmt: skip


def _fail(message: str, code: int = 2, what: str = "error") -> NoReturn:
    # one line, not wrapped (pasted or grepped whole); escaped: "[bold]" in a name prints
    console.print(f"[red]{what}:[/red] {console_text(message)}", soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Directory of the trained model.")],
    data: DataOpt = "synthetic",
    preset: PresetOpt = "heartlike",
    n_cells: CellsOpt = DEFAULT_CELLS,
    heart_path: HeartOpt = Path("data"),
    layer: LayerOpt = None,
    batch_key: BatchOpt = None,
    n_top_genes: TopGenesOpt = 1200,
    ensemble: EnsembleOpt = "deep",
    members: Annotated[int, typer.Option(help="Members K of the whole ensemble.")] = 4,
    shard: Annotated[
        str | None,
        typer.Option(help="Train only shard I/N of the members (deep; merge with `merge`)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 60,
    batch_size: Annotated[int, typer.Option(help="Cells per minibatch.")] = 128,
    accelerator: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    devices: Annotated[str, typer.Option(help="Devices: auto, a count, or a list.")] = "auto",
    compile_likelihood: Annotated[
        bool | None,
        typer.Option(
            "--compile-likelihood/--no-compile-likelihood",
            help="torch.compile the likelihood kernel [default: when the training is long "
            "enough to repay the compile time].",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (data, initialisation, training).")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a model trained with other options.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted training from its checkpoint.")
    ] = False,
    trust_model: TrustOpt = False,
) -> None:
    """Train an ensemble (or one shard of its members) and save it to OUT.

    With --shard I/N, trains members of shard I of N (deep ensembles); shards trained
    with the same options merge (`ensemblevi merge`) into exactly the ensemble trained in
    one piece. OUT gets model.pt (scvi-tools' format) and train.json (the options, which
    `merge` uses to rebuild the data). OUT must be new, empty or written by `train`; a
    model trained there with other options is replaced only with --force, and stays until
    the new one is complete. Every epoch is checkpointed beside it; an interrupted training
    (exit status 130/143) continues with the same command and --resume.
    """
    from ensemblevi.pipeline import RunRefused, train_command

    spec = _config(
        data=data, preset=preset, n_cells=n_cells, heart_path=heart_path, layer=layer,
        batch_key=batch_key, n_top_genes=n_top_genes, ensemble=ensemble, members=members,
        epochs=epochs, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    try:
        done = train_command(
            spec, out, shard=shard, accelerator=accelerator, devices=devices,
            compile_likelihood=compile_likelihood, force=force, resume=resume,
            log=_log,
            on_loaded=lambda ad, lay, title: console.print(summary_table(ad, lay, title)),
            trust=trust_model,
        )  # fmt: skip
    except RunRefused as err:
        _fail(str(err), 1)
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # NotEnoughMemory too
        _fail(str(err))
    console.print(console_text(done))


@app.command()
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Directories written by `train --shard`.")],
    out: Annotated[Path, typer.Option(help="Directory of the merged model.")],
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Merge a part of the ensemble's shards (not all)."),
    ] = False,
    trust_model: TrustOpt = False,
) -> None:
    """Merge shards trained by `ensemblevi train --shard I/N` into one model in OUT.

    Every shard of the ensemble must be given (the error names the missing members), unless
    --partial merges only those given. OUT must be new, empty or written by `merge`.
    """
    from ensemblevi.pipeline import merge_command

    try:
        console.print(console_text(merge_command(shards, out, partial=partial, trust=trust_model)))
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))


@app.command()
def benchmark(
    suite: Annotated[str, typer.Option(help="fdr, calibration, ood or all.")] = "all",
    out: Annotated[Path, typer.Option(help="Output directory (results are reused).")] = Path(
        "bench_results"
    ),
    reps: Annotated[
        int | None,
        typer.Option(help="Repetitions of the FDR experiment [default: 5; 1 with --quick]."),
    ] = None,
    pbmc: Annotated[
        Path | None, typer.Option(help="pbmc3k.h5ad for the PBMC parts (skipped without).")
    ] = None,
    docs: Annotated[
        Path | None, typer.Option(help="Markdown file whose suite sections are rewritten.")
    ] = None,
    figures: Annotated[Path | None, typer.Option(help="Also save figures here.")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny data and models: checks the plumbing only.")
    ] = False,
    no_train: Annotated[
        bool,
        typer.Option("--no-train", help="Train nothing: report the results saved in OUT so far."),
    ] = False,
    datasets: Annotated[
        str | None,
        typer.Option(
            help="FDR suite: comma-separated presets and data sets to run (lopez2020, draft, "
            "hard, pbmc_thinning, pbmc_null; the last two need --pbmc) [default: all]."
        ),
    ] = None,
) -> None:
    """The benchmark suite: DE FDR against ground truth, count calibration, OOD novelty.

    Each unit of work is saved under OUT as it finishes; a rerun with the same settings
    reuses it, so an interrupted suite resumes. The full suite takes about an hour on 2 CPU
    cores.
    """
    from ensemblevi.benchmark import run_suite

    if reps is not None and reps < 1:
        raise typer.BadParameter(f"--reps must be >= 1, got {reps}.")
    if pbmc is not None and not pbmc.exists():
        console.print(f"[yellow]{console_text(pbmc)} not found: the PBMC parts are skipped"
                      "[/yellow]")
    try:
        names = None if datasets is None else tuple(filter(None, datasets.split(",")))
        written = run_suite(suite, out, reps=reps, quick=quick, pbmc=pbmc, docs=docs,
                            figures=figures, train=not no_train, datasets=names,
                            log=_log)  # fmt: skip
    except ValueError as err:
        _fail(str(err))
    console.print(console_text("wrote " + ", ".join(str(p) for p in written.values())))


@app.command()
def version() -> None:
    """Print the version."""
    from ensemblevi import __version__

    console.print(__version__)


def main() -> None:
    """The ``ensemblevi`` command: an interruption exits 130 (SIGINT) or 143 (SIGTERM).

    The one line printed then says what was kept and how to resume
    (:func:`ensemblevi._interrupt.set_resume_hint`).
    """
    from ensemblevi._interrupt import Interrupted, interruptible, message

    with interruptible():
        try:
            app()
        except Interrupted as err:
            # a progress bar may have left the cursor mid-line: the message gets its own
            console.print(f"\n{console_text(message(err))}", soft_wrap=True)
            sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
