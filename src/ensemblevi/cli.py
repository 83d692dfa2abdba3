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


@app.command()
def run(
    preset: Annotated[str, typer.Option(help="Synthetic preset used when no --data.")] = "draft",
    seed: Annotated[int, typer.Option(help="Random seed (data, initialisation, training).")] = 0,
    data: Annotated[
        Path | None, typer.Option(help="Real data (.h5ad / 10x) instead of the simulator.")
    ] = None,
    layer: Annotated[str | None, typer.Option(help="Layer holding the counts.")] = None,
    batch_key: Annotated[str | None, typer.Option(help="obs column of the batch.")] = None,
    n_top_genes: Annotated[
        int, typer.Option(help="Highly variable genes kept from real data with more genes.")
    ] = 1200,
    ensemble: Annotated[str, typer.Option(help="deep, batch, mcdropout or single.")] = "deep",
    members: Annotated[int, typer.Option(help="Ensemble members K.")] = 4,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 100,
    n_samples: Annotated[int, typer.Option(help="Latent samples per member.")] = 10,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results"),
    force: Annotated[bool, typer.Option("--force", help="Replace earlier outputs.")] = False,
) -> None:
    """The main job: data -> validated counts -> trained ensemble -> uncertainty.

    Writes OUT/run.h5ad (the data with the ensemblevi_* layers and var columns) and the
    model to OUT/model, both atomically; prints the genes whose denoised expression the
    members agree on least.
    """
    import warnings

    from ensemblevi.data import preprocess, read, synthetic, write_h5ad_atomic
    from ensemblevi.model import EnsembleSCVI

    t0 = time.perf_counter()
    h5ad, model_dir = out / "run.h5ad", out / "model"
    if not force and (h5ad.exists() or model_dir.exists()):
        console.print(f"[red]{out} holds earlier outputs[/red]; pass --force to replace them.")
        raise typer.Exit(1)
    try:
        if data is None:
            adata = synthetic(preset=preset, seed=seed)
            title, layer = f"synthetic preset {preset!r}, seed {seed}", "counts"
            batch_key = batch_key or ("batch" if adata.obs["batch"].nunique() > 1 else None)
        else:
            adata = read(data, layer=layer)
            title = str(data)
        console.print(summary_table(adata, layer, title=title))
        if data is not None and adata.n_vars > n_top_genes:
            preprocess(adata, n_top_genes=n_top_genes, batch_key=batch_key, layer=layer)
            layer = "counts"
            console.print(f"kept {adata.n_vars:,} highly variable genes")
        EnsembleSCVI.setup_anndata(adata, layer=layer, batch_key=batch_key)
        model = EnsembleSCVI(adata, n_members=members, ensemble=ensemble, seed=seed)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    if "synthetic" in adata.uns:
        info = adata.uns["synthetic"]
        n_de = {p: int(adata.var[f"is_de_{p}"].sum()) for p in info["pairs"]}
        console.print(f"ground truth at delta={info['delta']}: DE genes per pair {n_de}")
    console.print(f"training {model._model_summary_string} for {epochs} epochs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=epochs, seed=seed)
        model.get_uncertainty(n_samples=n_samples, seed=seed, key_added="ensemblevi")
    var = adata.var.sort_values("ensemblevi_cv_between", ascending=False)
    table = Table(title="genes the members agree on least", title_justify="left")
    for col in ("gene", "mean expr (per 1e4)", "CV between members", "between share"):
        table.add_column(col)
    for gene, row in var.head(10).iterrows():
        table.add_row(
            str(gene),
            f"{row['ensemblevi_mean']:.2f}",
            f"{row['ensemblevi_cv_between']:.3f}",
            f"{row['ensemblevi_frac_between']:.2f}",
        )
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    model.save(model_dir, overwrite=True)
    write_h5ad_atomic(adata, h5ad, overwrite=True)
    console.print(f"wrote {h5ad} and {model_dir} in {time.perf_counter() - t0:.1f} s")


@app.command()
def version() -> None:
    """Print the version."""
    from ensemblevi import __version__

    console.print(__version__)


def main() -> None:
    app()
