"""Command-line interface: ``ensemblevi --help``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

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


def summary_table(adata, layer: str | None, title: str) -> Table:
    """Shape, layers, the count validation result and obs columns of ``adata``.

    Parameters
    ----------
    adata
        The data.
    layer
        Layer holding the counts (``None``: ``X``).
    title
        Title of the table.
    """
    import warnings

    from ensemblevi.data import validate_counts

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("shape", f"{adata.n_obs:,} cells x {adata.n_vars:,} genes")
    table.add_row("layers", ", ".join(adata.layers.keys()) or "none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rep = validate_counts(adata, layer=layer)
            status = (
                f"[green]valid raw counts[/green] in {rep.source}: {rep.dtype}, "
                f"{'sparse' if rep.sparse else 'dense'}, density {rep.density:.3f}, "
                f"total {rep.total_counts:,.0f}, max {rep.max_count:,.0f}, "
                f"all-zero cells {rep.n_zero_cells}, all-zero genes {rep.n_zero_genes}"
            )
        except ValueError as err:
            status = f"[red]invalid[/red]: {err}"
    table.add_row("counts", status)
    for w in caught:
        table.add_row("warning", str(w.message))
    for col in adata.obs.columns:
        s = adata.obs[col]
        n_na = int(s.isna().sum())
        # a label or batch column with gaps is refused by training: say so here first
        gaps = f", [yellow]{n_na} missing (NaN)[/yellow]" if n_na else ""
        if s.dtype == "category" or s.dtype == object or s.dtype == bool:
            vc = s.value_counts()
            shown = ", ".join(f"{k} {v}" for k, v in vc.head(12).items())
            more = f", ... ({len(vc)} levels)" if len(vc) > 12 else ""
            table.add_row(f"obs[{col!r}]", shown + more + gaps)
        else:
            table.add_row(
                f"obs[{col!r}]",
                f"numeric, mean {s.mean():.3g}, range [{s.min():.3g}, {s.max():.3g}]{gaps}",
            )
    return table


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
        console.print(f"[red]{out} exists[/red]; pass --force to overwrite it.")
        raise typer.Exit(1)
    t0 = time.perf_counter()
    try:
        adata = synthetic(preset=preset, seed=seed, **_parse_overrides(set_ or []))
    except ValueError as err:
        _fail(str(err))
    write_h5ad_atomic(adata, out, overwrite=force)
    console.print(
        f"wrote {out}: {adata.n_obs:,} cells x {adata.n_vars:,} genes, preset {preset}, "
        f"seed {seed} ({time.perf_counter() - t0:.1f} s)"
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
    labels_key: Annotated[str, typer.Option(help="obs column of the cell groups.")] = "cell_type",
    n_top_genes: TopGenesOpt = 1200,
    ensemble: EnsembleOpt = "deep",
    members: Annotated[int, typer.Option(help="Ensemble members K.")] = 4,
    seeds: Annotated[
        int, typer.Option(help="Train N scvi.model.SCVI seeds instead (the original experiment).")
    ] = 0,
    markers: Annotated[str, typer.Option(help="heart, pbmc3k, or a JSON/YAML file.")] = "heart",
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
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results"),
    force: Annotated[
        bool, typer.Option("--force", help="Replace a different run (or a stale model).")
    ] = False,
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
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        with interruptible():
            reading = run_pipeline(config, out, force=force, log=console.print,
                                   on_loaded=lambda ad, lay, title: console.print(
                                       summary_table(ad, lay, title=title)))  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    except (RunRefused, FileExistsError) as err:
        console.print(f"[red]refused:[/red] {err}")
        raise typer.Exit(1) from err
    except StageFailed as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from err
    for line in reading:
        console.print(f"- {line}")
    console.print(f"wrote {out}/report.html, results.h5ad, tables/, figures/, model/ "
                  f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip


@app.command("de")
def de_command(
    run_dir: Annotated[Path, typer.Argument(help="Directory written by `ensemblevi run`.")],
    group1: Annotated[str, typer.Option(help="Group to test (a value of --groupby).")],
    groupby: Annotated[str, typer.Option(help="obs column of the groups.")] = "cell_type",
    group2: Annotated[
        str | None, typer.Option(help="Reference group [default: all other cells].")
    ] = None,
    fdr: Annotated[float, typer.Option(help="Target of the posterior expected FDR.")] = 0.05,
    delta: Annotated[float, typer.Option(help="Smallest |LFC| (log2) that counts.")] = 0.5,
    estimand: Annotated[str, typer.Option(help="population or cell_pairs.")] = "population",
    n_samples: Annotated[int, typer.Option(help="Posterior draws per member.")] = 50,
    max_cells: Annotated[int, typer.Option(help="Cells per group, subsampled above.")] = 500,
    batch_correction: Annotated[
        bool, typer.Option("--batch-correction", help="Marginalise over batches.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the cell subsample and draws.")] = 0,
) -> None:
    """Ensemble differential expression on a run directory, added to its report.

    Writes tables/de_<group1>_vs_<group2|rest>.csv (+ .json settings),
    figures/de_<...>.png, the result into results.h5ad (uns["ensemblevi_de_<...>"], readable
    by scanpy.get.rank_genes_groups_df) and rebuilds report.html with a DE section. Group
    names that do not spell safely as a file name get a short hash of the exact names
    appended, so two groups never share a result. All of it is committed at once.
    """
    from ensemblevi.pipeline import run_de
    from ensemblevi.pipeline._report import de_reading

    try:
        res = run_de(
            run_dir, group1, groupby=groupby, group2=group2, delta=delta, fdr_target=fdr,
            estimand=estimand, n_samples=n_samples, max_cells=max_cells,
            batch_correction=batch_correction, seed=seed,
        )  # fmt: skip
    except (FileNotFoundError, KeyError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    except FileExistsError as err:
        console.print(f"[red]refused:[/red] {err}")
        raise typer.Exit(1) from err
    console.print("- " + de_reading(res.settings, res.table))
    top = res.table.head(10)[["proba_de", "lfc_median", "lfc_member_std", "call_flips"]]
    console.print(top.round(3).to_string())
    tables, figures = run_dir / "tables", run_dir / "figures"
    console.print(f"wrote {tables / res.name}.csv, {figures / res.name}.png, updated "
                  f"results.h5ad (uns[{res.key!r}]) and report.html")  # fmt: skip


def parse_shard(shard: str | None, n_members: int) -> tuple[int, int]:
    """``"i/n"`` (shards numbered 1..n) to this shard's ``(offset, n_members)``.

    Members are split as evenly as possible, the first shards taking one more.
    """
    if shard is None:
        return 0, n_members
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--shard {shard!r} is not I/N (e.g. 2/4).") from None
    if not 1 <= i <= n or n > n_members:
        raise typer.BadParameter(f"--shard {shard}: need 1 <= I <= N <= --members ({n_members}).")
    size, extra = divmod(n_members, n)
    offset = (i - 1) * size + min(i - 1, extra)
    return offset, size + (i <= extra)


def _training_data(spec: dict):
    """The AnnData a `train` spec describes, genes selected and registered for EnsembleSCVI."""
    from ensemblevi.pipeline import training_data

    return training_data(spec)


def _write_train_record(out: Path, spec: dict, model, **extra: Any) -> None:
    """OUT/train.json (atomically): the options, from which `merge` rebuilds the data.

    Parameters
    ----------
    out
        Folder of the model (a stage, committed afterwards).
    spec
        The options of the `train` command.
    model
        The trained model (its member range is recorded).
    **extra
        Further entries (epochs trained, resumed from).
    """
    from ensemblevi._files import write_json

    start, stop = model.member_range
    write_json(out / "train.json", {"spec": spec, "member_range": [start, stop], **extra})


def _fail(message: str, code: int = 2) -> NoReturn:
    # not wrapped to the terminal: a message pasted or grepped stays one line
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _differences(old: dict, new: dict) -> str:
    """``key: old -> new`` for every option that differs (for refusals)."""
    keys = [k for k in {**old, **new} if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


KL_WARMUP_EPOCHS = 400  # scvi-tools' TrainingPlan default (n_epochs_kl_warmup)


def _kl_continuation(done: int) -> dict | None:
    """plan_kwargs that continue scvi-tools' KL warm-up (epoch / 400) after ``done`` epochs.

    A resumed training starts Lightning's epoch count at 0 again; without this its KL
    weight would restart at 0 instead of going on from ``done / 400``.
    """
    if done <= 0:
        return None
    if done >= KL_WARMUP_EPOCHS:
        return {"min_kl_weight": 1.0, "n_epochs_kl_warmup": None}
    return {"min_kl_weight": done / KL_WARMUP_EPOCHS, "n_epochs_kl_warmup": KL_WARMUP_EPOCHS - done}


def _checkpoint_to_resume(target, ckpt_record: dict, epochs: int, resume: bool, force: bool):
    """The checkpoint `train` continues from (``None``: start afresh in a new stage)."""
    from ensemblevi.train import EpochCheckpoint

    out = target.path
    ckpt = EpochCheckpoint.read(target.stage / "checkpoint")
    if not resume:
        if ckpt is not None and not force:
            _fail(
                f"{out} holds the checkpoint of an interrupted training (after epoch "
                f"{ckpt['epochs_done']}, in {ckpt['folder']}); pass --resume to continue it "
                "or --force to start over.",
                1,
            )
        if ckpt is not None:
            console.print(f"--force: discarding the checkpoint of an interrupted training "
                          f"(after epoch {ckpt['epochs_done']})")  # fmt: skip
        target.new_stage()
        return None
    if ckpt is None:
        _fail(f"--resume: there is no checkpoint of an interrupted training in {out}; "
              "run without --resume.")  # fmt: skip
    old = {"member_range": ckpt["member_range"], **ckpt["spec"]}
    why = _differences(old, {"member_range": ckpt_record["member_range"], **ckpt_record["spec"]})
    if why:
        _fail(
            f"--resume: the checkpoint in {out} was trained with other options ({why}); "
            "rerun with its options, or without --resume (with --force) to start over."
        )
    if ckpt["epochs_done"] > epochs:
        _fail(f"--resume: the checkpoint has {ckpt['epochs_done']} epochs, more than "
              f"--epochs {epochs}; pass --epochs {ckpt['epochs_done']} or more.")  # fmt: skip
    return ckpt


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
        bool, typer.Option("--compile-likelihood", help="torch.compile the likelihood kernel.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed (data, initialisation, training).")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a model trained with other options.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted training from its checkpoint.")
    ] = False,
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
    import shutil
    import warnings

    from ensemblevi._files import OutputDirectory
    from ensemblevi._interrupt import deferred, set_resume_hint
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.model._memory import check_training_memory
    from ensemblevi.train import EpochCheckpoint

    if epochs < 1:
        _fail(f"--epochs must be at least 1, got {epochs}: a model trained for no epoch is "
              "its random initialisation.")  # fmt: skip
    for name, value in (("--members", members), ("--batch-size", batch_size)):
        if value < 1:
            _fail(f"{name} must be at least 1, got {value}.")
    offset, k = parse_shard(shard, members)
    spec = _config(
        data=data, preset=preset, n_cells=n_cells, heart_path=heart_path, layer=layer,
        batch_key=batch_key, n_top_genes=n_top_genes, ensemble=ensemble, members=members,
        epochs=epochs, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    member_range = [offset, offset + k]
    # what a checkpoint must match to be resumed (more epochs may be asked for)
    ckpt_record = {"spec": {k_: v for k_, v in spec.items() if k_ != "epochs"},
                   "member_range": member_range}  # fmt: skip
    target = OutputDirectory(out, "train")
    try:
        target.claim()
        with target.locked():
            finished = _read_record(out) if "train.json" in target.files else None
            if finished is not None and not force:
                if finished["spec"] == spec and finished["member_range"] == member_range:
                    console.print(f"{out} already holds this model (same options); nothing to "
                                  "do. Pass --force to train it again.")  # fmt: skip
                    return
                why = _differences(finished["spec"], spec)
                _fail(
                    f"{out} holds a model trained with other options ({why}); pass --force "
                    "to replace it (it stays until the new one is complete) or choose another "
                    "--out.",
                    1,
                )
            ckpt = _checkpoint_to_resume(target, ckpt_record, epochs, resume, force)
            done = 0 if ckpt is None else int(ckpt["epochs_done"])
            kept = f"; the model already in {out} is unchanged" if finished else ""

            def saved(n: int, folder: Path) -> None:
                set_resume_hint(f"kept the checkpoint after epoch {n} of {epochs} in "
                                f"{folder}{kept}; continue with the same command and "
                                "--resume")  # fmt: skip

            if ckpt is None:
                set_resume_hint(f"no epoch had finished, so nothing was kept{kept}; rerun "
                                "the same command to start again")  # fmt: skip
            else:
                saved(done, Path(ckpt["folder"]))
            adata, title = _training_data(spec)
            console.print(
                summary_table(adata, "counts" if "counts" in adata.layers else None, title)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if ckpt is not None:
                    model = EnsembleSCVI.load(ckpt["folder"], adata=adata)
                    console.print(f"resuming {ckpt['folder']} after epoch {done}")
                else:
                    check_training_memory(
                        lambda n: EnsembleSCVI(adata, n_members=n, ensemble=ensemble, seed=seed),
                        k, batch_size, adata.n_vars, accelerator,
                        also_built=members if shard else 0,
                    )  # fmt: skip
                    model = EnsembleSCVI(
                        adata, n_members=k, ensemble=ensemble, seed=seed, member_offset=offset,
                        n_members_total=members,
                    )  # fmt: skip

                span = f" (epochs {done + 1}..{epochs})" if done else ""
                console.print(
                    f"training {model._model_summary_string} for {epochs - done} epochs{span}"
                )
                checkpoint = EpochCheckpoint(
                    model, target.stage / "checkpoint", record=ckpt_record,
                    epochs_before=done, on_save=saved,
                )  # fmt: skip
                if done < epochs:
                    model.train(
                        max_epochs=epochs - done, batch_size=batch_size, seed=seed,
                        callbacks=[checkpoint], plan_kwargs=_kl_continuation(done),
                        accelerator=accelerator, devices=devices,
                        compile_likelihood=compile_likelihood,
                    )  # fmt: skip
            model.save(target.stage, overwrite=True)
            _write_train_record(target.stage, spec, model, epochs_trained=epochs,
                                resumed_after=done or None)  # fmt: skip
            with deferred():  # the checkpoint goes and the model comes in one step
                shutil.rmtree(target.stage / "checkpoint", ignore_errors=True)
                target.commit()
                set_resume_hint(f"training had finished: the model is in {out}")
    except FloatingPointError as err:
        ckpt = EpochCheckpoint.read(target.stage / "checkpoint")
        kept_ckpt = (
            f"The checkpoint after epoch {ckpt['epochs_done']} is kept: --resume continues "
            "from it, --force starts over."
            if ckpt
            else "No epoch had finished, so no checkpoint was kept."
        )
        _fail(f"{err} {kept_ckpt}")
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # NotEnoughMemory too
        _fail(str(err))
    console.print(f"wrote {out} (members {offset}..{offset + k - 1} of {members})")


def _read_record(folder: Path) -> dict:
    """A `train`/`merge` record (train.json); a damaged one is a clear error."""
    path = folder / "train.json"
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        _fail(f"{path} is damaged ({err}); train that directory again.")


@app.command()
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Directories written by `train --shard`.")],
    out: Annotated[Path, typer.Option(help="Directory of the merged model.")],
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Merge a part of the ensemble's shards (not all)."),
    ] = False,
) -> None:
    """Merge shards trained by `ensemblevi train --shard I/N` into one model in OUT.

    Every shard of the ensemble must be given (the error names the missing members), unless
    --partial merges only those given. OUT must be new, empty or written by `merge`.
    """
    import warnings

    from ensemblevi._files import OutputDirectory
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.model._shards import missing_members

    records = []
    for d in shards:
        if not (d / "train.json").exists() or not (d / "model.pt").exists():
            _fail(f"{d} is not a finished `ensemblevi train` directory (train.json and "
                  "model.pt expected).")  # fmt: skip
        records.append(_read_record(d))
    spec = records[0]["spec"]
    different = [str(d) for d, r in zip(shards, records, strict=True) if r["spec"] != spec]
    if different:
        _fail(f"{', '.join(different)} trained with other options than {shards[0]}; only "
              "shards of one `train` command merge.")  # fmt: skip
    gaps = missing_members([r["member_range"] for r in records], spec["members"])
    if gaps and not partial:
        shown = ", ".join(f"{a}..{b - 1}" for a, b in gaps)
        _fail(f"the shards given hold only part of the {spec['members']}-member ensemble: "
              f"members {shown} are missing. Give every shard directory, or pass --partial "
              "to merge only these.")  # fmt: skip
    target = OutputDirectory(out, "merge")
    try:
        target.claim()
        with target.locked():
            adata, _ = _training_data(spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                models = [EnsembleSCVI.load(d, adata=adata) for d in shards]
                merged = EnsembleSCVI.merge(models)
            stage = target.new_stage()
            merged.save(stage)
            _write_train_record(stage, spec, merged, merged_from=[str(d) for d in shards])
            target.commit()
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
    start, stop = merged.member_range
    console.print(f"wrote {out} (members {start}..{stop - 1} of {spec['members']})")


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
        console.print(f"[yellow]{pbmc} not found: the PBMC parts are skipped[/yellow]")
    try:
        written = run_suite(suite, out, reps=reps, quick=quick, pbmc=pbmc, docs=docs,
                            figures=figures, train=not no_train, log=console.print)  # fmt: skip
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    console.print("wrote " + ", ".join(str(p) for p in written.values()))


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
            console.print(f"\n{message(err)}", soft_wrap=True)
            sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
