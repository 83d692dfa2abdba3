"""The Typer app, its console and the helpers every command shares."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from ensemblevi._names import console_text

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


def _config(**kwargs) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}


def _open_range(value: float, option: str, low: float, high: float = float("inf")) -> float:
    """``value`` if ``low < value < high``; else the parser's error (exit 2, nothing loaded)."""
    if not low < value < high:
        below = f" and < {high:g}" if high < float("inf") else ""
        raise typer.BadParameter(f"{option} must be > {low:g}{below}, got {value:g}.")
    return value


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
    console.print(f"[yellow]{text}[/yellow]" if warn else text, soft_wrap=True)


def _print_done(reading: list[str], out: Path, t0: float) -> None:
    for line in reading:
        console.print(f"- {console_text(line)}", soft_wrap=True)
    console.print(
        console_text(
            f"wrote {out}/report.html, results.h5ad, tables/, figures/, "
            f"model/ in {time.perf_counter() - t0:.1f} s"
        )
    )


def _fail(message: str, code: int = 2, what: str = "error") -> NoReturn:
    # one line, not wrapped (pasted or grepped whole); escaped: "[bold]" in a name prints
    console.print(f"[red]{what}:[/red] {console_text(message)}", soft_wrap=True)
    raise typer.Exit(code)


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
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-model",
        help=(
            "Also load models in scvi-tools' pickled format (older ensemblevi saves): unpickling "
            "runs any code the file carries, so only for files from a source you trust."
        ),
    ),
]
