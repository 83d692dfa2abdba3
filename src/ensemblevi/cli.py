"""Command-line interface: ``ensemblevi --help``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

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
    """Shape, layers, the count validation result and obs columns of ``adata``."""
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
        if s.dtype == "category" or s.dtype == object or s.dtype == bool:
            vc = s.value_counts()
            shown = ", ".join(f"{k} {v}" for k, v in vc.head(12).items())
            more = f", ... ({len(vc)} levels)" if len(vc) > 12 else ""
            table.add_row(f"obs[{col!r}]", shown + more)
        else:
            table.add_row(
                f"obs[{col!r}]",
                f"numeric, mean {s.mean():.3g}, range [{s.min():.3g}, {s.max():.3g}]",
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
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
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
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    console.print(summary_table(adata, layer, title=str(path)))


QUICK = {"n_cells": 1000, "epochs": 10, "n_samples": 3}
DEFAULT_CELLS = 3000  # the embedded default, sized to finish in a few minutes here


def _load_data(data: str, preset: str, n_cells: int, seed: int, layer, heart_path: Path):
    """(adata, layer, title) for ``--data``: synthetic, heart or a file."""
    from ensemblevi.data import heart_cell_atlas, read, synthetic

    if data == "synthetic":
        adata = synthetic(preset=preset, seed=seed, n_cells=n_cells)
        return adata, "counts", f"synthetic preset {preset!r}, {n_cells:,} cells, seed {seed}"
    if data == "heart":
        return heart_cell_atlas(save_path=heart_path), layer, "heart cell atlas subsample"
    return read(data, layer=layer), layer, str(data)


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
    force: Annotated[bool, typer.Option("--force", help="Replace a different run.")] = False,
) -> None:
    """The main job: data -> trained ensemble -> marker spread, gene uncertainty, novelty.

    Writes into OUT: model/, results.h5ad, tables/*.csv, figures/*.png, report.html and
    run.json (the input file is never modified). A model already in OUT from the same
    configuration is reused; a different run is replaced only with --force.
    """
    import platform
    import warnings
    from importlib.metadata import version as pkg_version

    import ensemblevi as ev
    from ensemblevi._report import DE_KEY, render_run_report
    from ensemblevi.data import preprocess, write_h5ad_atomic
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.pl import save_figure

    if quick:
        n_cells, epochs, n_samples = QUICK["n_cells"], min(epochs, QUICK["epochs"]), 3
    config = _config(
        data=data, preset=preset, n_cells=n_cells, layer=layer, batch_key=batch_key,
        labels_key=labels_key, n_top_genes=n_top_genes, ensemble=ensemble, members=members,
        seeds=seeds, markers=markers, marker=marker or [], epochs=epochs, n_samples=n_samples,
        seed=seed,
    )  # fmt: skip
    run_json, model_dir = out / "run.json", out / "model"
    previous = json.loads(run_json.read_text())["config"] if run_json.exists() else None
    if previous is not None and previous != config and not force:
        console.print(
            f"[red]{out} holds a different run[/red] ({run_json}); pass --force to replace it "
            "or choose another --out."
        )
        raise typer.Exit(1)
    reuse = previous == config and (model_dir / "model.pt").exists()
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()
    try:
        adata, layer, title = _load_data(data, preset, n_cells, seed, layer, heart_path)
        marker_set = ev.tl.load_markers(markers)
        for group, genes in ev.tl.parse_marker_options(marker or []).items():
            marker_set.setdefault(group, []).extend(genes)
        console.print(summary_table(adata, layer, title=title))
        if batch_key is None and "batch" in adata.obs and adata.obs["batch"].nunique() > 1:
            batch_key = "batch"
        if adata.n_vars > n_top_genes:
            wanted = [g for v in marker_set.values() for g in v]
            preprocess(
                adata, n_top_genes=n_top_genes, batch_key=batch_key, layer=layer,
                keep_genes=wanted,
            )  # fmt: skip
            layer = "counts"
            console.print(f"kept {adata.n_vars:,} genes (highly variable + markers)")
        groups = adata.obs[labels_key].astype(str).unique() if labels_key in adata.obs else None
        found, missing = ev.tl.check_markers(marker_set, adata.var_names, groups)
        if len(missing):
            console.print("[yellow]markers not usable:[/yellow]\n" + missing.to_string(index=False))
        if not found:
            raise ValueError("None of the marker genes are in the data; see the table above.")
        timings["data"] = time.perf_counter() - t
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            setup = {"layer": layer, "batch_key": batch_key}
            if reuse:
                EnsembleSCVI.setup_anndata(adata, **setup)
                model = EnsembleSCVI.load(model_dir, adata=adata)
                console.print(f"reusing the trained model in {model_dir}")
            elif seeds:
                console.print(f"training {seeds} scvi.model.SCVI seeds for {epochs} epochs")
                model = ev.tl.seed_ensemble(
                    adata, n_seeds=seeds, save_dir=out / "seeds", setup_kwargs=setup,
                    max_epochs=epochs,
                )  # fmt: skip
            else:
                EnsembleSCVI.setup_anndata(adata, **setup)
                model = EnsembleSCVI(adata, n_members=members, ensemble=ensemble, seed=seed)
                console.print(f"training {model._model_summary_string} for {epochs} epochs")
                model.train(max_epochs=epochs, seed=seed)
        timings["training"] = time.perf_counter() - t
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err

    t = time.perf_counter()
    analysis = ev.tl.uncertainty_analysis(
        model, adata, found, groupby=labels_key, n_samples=n_samples, seed=seed,
        embedding=model.n_members > 1,
    )  # fmt: skip
    spread, genes, novelty = analysis["spread"], analysis["genes"], analysis["novelty"]
    timings["analysis"] = time.perf_counter() - t

    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    figures = out / "figures"
    # the report is built from what is on disk: a replaced run's outputs must go (DE results
    # stay only while the trained model they came from is reused)
    for stale in [*(out / "tables").glob("*.*"), *figures.glob("*.png")]:
        if not (reuse and stale.name.startswith("de_")):
            stale.unlink()
    marker_genes = [g for v in found.values() for g in v]
    figs = {
        "model_spread": ev.pl.model_spread(adata),
        "biological_spread": ev.pl.biological_spread(adata),
        "member_histograms": ev.pl.member_histograms(adata),
        "gene_uncertainty": ev.pl.gene_uncertainty(adata, highlight=marker_genes),
    }
    if novelty is not None:
        figs["novelty_umap"] = ev.pl.novelty_umap(adata, color=labels_key)
    hyper = model.get_hyperparameters() if model.ensemble == "hyperbatch" else None
    if hyper is not None:
        figs["hyperparameters"] = ev.pl.hyperparameter_trajectories(model)
    for name, fig in figs.items():
        save_figure(fig, figures / name)
    summary = spread["summary"]
    tables = {
        "markers_not_usable": missing if len(missing) else None,
        "marker_summary": summary,
        "gene_uncertainty": genes,
        "cell_novelty": novelty,
        "hyperparameters": hyper,
        "run_metadata": _config_frame(config),
    }
    for name, frame in tables.items():
        if frame is not None:
            index = name not in ("marker_summary", "hyperparameters", "markers_not_usable")
            _write_csv(frame, out / "tables" / f"{name}.csv", index=index)
    timings["figures"] = time.perf_counter() - t
    if not reuse:
        model.save(model_dir, overwrite=True)
    elif (out / "results.h5ad").exists():  # keep the DE results of `ensemblevi de`
        import anndata

        old = anndata.read_h5ad(out / "results.h5ad")
        adata.uns.update({k: v for k, v in old.uns.items() if k.startswith(DE_KEY)})
    write_h5ad_atomic(adata, out / "results.h5ad", overwrite=True)

    top = summary.sort_values("member_cv", ascending=False).iloc[0]
    reading = [
        f"Across the {model.n_members} members, the marker whose denoised level the members "
        f"agree on least is {top['gene']} in {top['group']}: a typical cell's value varies by "
        f"{100 * top['member_cv']:.0f}% between members (coefficient of variation), and "
        f"{100 * top['frac_uncertain_cells']:.0f}% of its cells exceed the CV threshold of "
        f"{_spread_threshold(adata)}.",
        "For the markers, between-member disagreement is "
        f"{100 * summary['frac_between'].mean():.0f}% of the model's uncertainty on average "
        "(the rest is the latent posterior within a member): retraining would move these "
        "values more than resampling one model shows.",
        f"The least certain gene overall is {genes.index[0]} "
        f"(CV {genes.iloc[0]['uncertainty']:.2f}); the median gene has CV "
        f"{genes['uncertainty'].median():.2f}.",
    ]
    if novelty is not None:
        info = adata.uns["ensemblevi"]["cell_novelty"]
        fpr = info.get("novelty_cv_fpr_heldout")
        reading.append(
            f"{info['n_flagged']} of {adata.n_obs:,} cells are flagged as unlike the training "
            f"data (threshold: the {100 * (1 - info['alpha']):.0f}th percentile on "
            f"{info['calibrated_on']}"
            + (
                f"; measured false-positive rate on other held-out cells {100 * fpr:.1f}%)."
                if fpr is not None
                else ")."
            )
        )
    meta = {
        "summary": f"{title}; {adata.n_obs:,} cells x {adata.n_vars:,} genes; "
        f"{model.ensemble} ensemble of {model.n_members}",
        **{f"config.{k}": v for k, v in config.items()},
        **{f"time.{k} (s)": round(v, 1) for k, v in timings.items()},
        "python": platform.python_version(),
        "ensemblevi": ev.__version__,
        **{name: pkg_version(name) for name in ("torch", "scvi-tools", "scanpy", "anndata")},
    }
    timings["total"] = time.perf_counter() - t0
    record = {
        "config": config,
        "timings": timings,
        "versions": {
            k: meta[k] for k in ("ensemblevi", "torch", "scvi-tools", "scanpy", "anndata")
        },
        "reading": reading,
        "meta": meta,
    }
    tmp = out / ".run.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(run_json)
    render_run_report(out)
    for line in reading:
        console.print(f"- {line}")
    console.print(
        f"wrote {out}/report.html, results.h5ad, tables/, figures/, model/ "
        f"in {timings['total']:.1f} s"
    )


def _config_frame(config: dict):
    import pandas as pd

    return pd.DataFrame({"value": [json.dumps(v) for v in config.values()]}, index=list(config))


def _spread_threshold(adata) -> float:
    return adata.uns["ensemblevi"]["expression_spread"]["params"]["cv_threshold"]


def _write_csv(frame, path: Path, index: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=index)
    tmp.replace(path)


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
    by scanpy.get.rank_genes_groups_df) and rebuilds report.html with a DE section.
    """
    import re
    import warnings

    import anndata

    import ensemblevi as ev
    from ensemblevi._report import DE_KEY, de_reading, render_run_report
    from ensemblevi.data import write_h5ad_atomic
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.pl import save_figure

    needed = [run_dir / "run.json", run_dir / "results.h5ad", run_dir / "model" / "model.pt"]
    absent = [str(p) for p in needed if not p.exists()]
    if absent:
        console.print(f"[red]error:[/red] {run_dir} is not a finished `ensemblevi run` "
                      f"directory (missing: {', '.join(absent)}); run `ensemblevi run --out "
                      f"{run_dir}` first.")  # fmt: skip
        raise typer.Exit(2)
    name = "de_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{group1}_vs_{group2 or 'rest'}")
    key = DE_KEY + name[3:]
    adata = anndata.read_h5ad(run_dir / "results.h5ad")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = EnsembleSCVI.load(run_dir / "model", adata=adata)
        table = ev.tl.differential_expression(
            model, adata, groupby=groupby, group1=group1, group2=group2, delta=delta,
            fdr_target=fdr, estimand=estimand, n_samples=n_samples, max_cells=max_cells,
            batch_correction=batch_correction, seed=seed, key_added=key,
        )  # fmt: skip
    except (KeyError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    tables, figures = run_dir / "tables", run_dir / "figures"
    settings = {**adata.uns[key]["params"], "group1": group1}
    fig = ev.pl.de_volcano(adata, key=key, title=f"{group1} vs {group2 or 'rest'}")
    save_figure(fig, figures / name)
    _write_csv(table, tables / f"{name}.csv", index=True)
    tmp = tables / f".{name}.json.tmp"
    tmp.write_text(json.dumps(settings, indent=2, default=str))
    tmp.replace(tables / f"{name}.json")
    write_h5ad_atomic(adata, run_dir / "results.h5ad", overwrite=True)
    render_run_report(run_dir)
    console.print("- " + de_reading(settings, table))
    top = table.head(10)[["proba_de", "lfc_median", "lfc_member_std", "call_flips"]]
    console.print(top.round(3).to_string())
    console.print(f"wrote {tables / name}.csv, {figures / name}.png, updated results.h5ad "
                  f"(uns[{key!r}]) and report.html")  # fmt: skip


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
    from ensemblevi.data import preprocess
    from ensemblevi.model import EnsembleSCVI

    adata, layer, title = _load_data(
        spec["data"], spec["preset"], spec["n_cells"], spec["seed"], spec["layer"],
        Path(spec["heart_path"]),
    )  # fmt: skip
    batch_key = spec["batch_key"]
    if batch_key is None and "batch" in adata.obs and adata.obs["batch"].nunique() > 1:
        batch_key = "batch"
    if adata.n_vars > spec["n_top_genes"]:
        preprocess(adata, n_top_genes=spec["n_top_genes"], batch_key=batch_key, layer=layer)
        layer = "counts"
    EnsembleSCVI.setup_anndata(adata, layer=layer, batch_key=batch_key)
    return adata, title


def _write_train_record(out: Path, spec: dict, model) -> None:
    """OUT/train.json (atomically): the options, from which `merge` rebuilds the data."""
    start, stop = model.member_range
    tmp = out / ".train.json.tmp"
    tmp.write_text(json.dumps({"spec": spec, "member_range": [start, stop]}, indent=2))
    tmp.replace(out / "train.json")
    console.print(f"wrote {out} (members {start}..{stop - 1} of {spec['members']})")


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
) -> None:
    """Train an ensemble (or one shard of its members) and save it to OUT.

    With --shard I/N, trains members of shard I of N (deep ensembles); shards trained
    with the same options merge (`ensemblevi merge`) into exactly the ensemble trained in
    one piece. OUT gets model.pt (scvi-tools' format) and train.json (the options, which
    `merge` uses to rebuild the data). An interrupted training leaves the last finished
    epoch in OUT.
    """
    import warnings

    from ensemblevi.model import EnsembleSCVI

    offset, k = parse_shard(shard, members)
    spec = _config(
        data=data, preset=preset, n_cells=n_cells, heart_path=heart_path, layer=layer,
        batch_key=batch_key, n_top_genes=n_top_genes, ensemble=ensemble, members=members,
        epochs=epochs, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    try:
        adata, title = _training_data(spec)
        console.print(summary_table(adata, "counts" if "counts" in adata.layers else None, title))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = EnsembleSCVI(
                adata, n_members=k, ensemble=ensemble, seed=seed, member_offset=offset,
                n_members_total=members,
            )  # fmt: skip
            console.print(f"training {model._model_summary_string} for {epochs} epochs")
            model.train(
                max_epochs=epochs, batch_size=batch_size, seed=seed, checkpoint_path=out,
                accelerator=accelerator, devices=devices, compile_likelihood=compile_likelihood,
            )  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    _write_train_record(out, spec, model)


@app.command()
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Directories written by `train --shard`.")],
    out: Annotated[Path, typer.Option(help="Directory of the merged model.")],
) -> None:
    """Merge shards trained by `ensemblevi train --shard I/N` into one model in OUT."""
    import warnings

    from ensemblevi.model import EnsembleSCVI

    records = []
    for d in shards:
        path = d / "train.json"
        if not path.exists() or not (d / "model.pt").exists():
            console.print(f"[red]error:[/red] {d} is not a finished `ensemblevi train` "
                          "directory (train.json and model.pt expected).")  # fmt: skip
            raise typer.Exit(2)
        records.append(json.loads(path.read_text()))
    spec = records[0]["spec"]
    different = [str(d) for d, r in zip(shards, records, strict=True) if r["spec"] != spec]
    if different:
        console.print(f"[red]error:[/red] {', '.join(different)} trained with other options "
                      f"than {shards[0]}; only shards of one `train` command merge.")  # fmt: skip
        raise typer.Exit(2)
    try:
        adata, _ = _training_data(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models = [EnsembleSCVI.load(d, adata=adata) for d in shards]
            merged = EnsembleSCVI.merge(models)
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    merged.save(out, overwrite=True)
    _write_train_record(out, spec, merged)


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
    app()
