"""The model commands: ``train``, ``merge``, ``benchmark``, ``version``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ensemblevi._names import console_text
from ensemblevi.cli._app import (
    DEFAULT_CELLS,
    BatchOpt,
    CellsOpt,
    DataOpt,
    EnsembleOpt,
    HeartOpt,
    LayerOpt,
    PresetOpt,
    TopGenesOpt,
    TrustOpt,
    _config,
    _fail,
    _log,
    app,
    console,
)
from ensemblevi.pipeline._summary import summary_table


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
    from ensemblevi.pipeline._train import RunRefused
    from ensemblevi.pipeline._train_command import train_command

    spec = _config(
        data=data,
        preset=preset,
        n_cells=n_cells,
        heart_path=heart_path,
        layer=layer,
        batch_key=batch_key,
        n_top_genes=n_top_genes,
        ensemble=ensemble,
        members=members,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
    )
    try:
        done = train_command(
            spec,
            out,
            shard=shard,
            accelerator=accelerator,
            devices=devices,
            compile_likelihood=compile_likelihood,
            force=force,
            resume=resume,
            log=_log,
            on_loaded=lambda ad, lay, title: console.print(summary_table(ad, lay, title)),
            trust=trust_model,
        )
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
    from ensemblevi.pipeline._train_command import merge_command

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
        console.print(
            f"[yellow]{console_text(pbmc)} not found: the PBMC parts are skipped[/yellow]"
        )
    try:
        names = None if datasets is None else tuple(filter(None, datasets.split(",")))
        written = run_suite(
            suite,
            out,
            reps=reps,
            quick=quick,
            pbmc=pbmc,
            docs=docs,
            figures=figures,
            train=not no_train,
            datasets=names,
            log=_log,
        )
    except ValueError as err:
        _fail(str(err))
    console.print(console_text("wrote " + ", ".join(str(p) for p in written.values())))


@app.command()
def version() -> None:
    """Print the version."""
    from ensemblevi import __version__

    console.print(__version__)
