"""The table ``ensemblevi`` prints about the data it has loaded, before any training."""

from __future__ import annotations

from rich.table import Table

from ensemblevi._names import console_text


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

    table = Table(title=console_text(title), show_header=False, title_justify="left")
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
            status = f"[red]invalid[/red]: {console_text(err)}"
    table.add_row("counts", status)
    for w in caught:
        table.add_row("warning", console_text(w.message))
    for col in adata.obs.columns:
        s = adata.obs[col]
        n_na = int(s.isna().sum())
        # a label or batch column with gaps is refused by training: say so here first
        gaps = f", [yellow]{n_na} missing (NaN)[/yellow]" if n_na else ""
        if s.dtype == "category" or s.dtype == object or s.dtype == bool:
            vc = s.value_counts()
            shown = ", ".join(f"{k} {v}" for k, v in vc.head(12).items())
            more = f", ... ({len(vc)} levels)" if len(vc) > 12 else ""
            table.add_row(console_text(f"obs[{col!r}]"), console_text(shown + more) + gaps)
        else:
            table.add_row(
                console_text(f"obs[{col!r}]"),
                f"numeric, mean {s.mean():.3g}, range [{s.min():.3g}, {s.max():.3g}]{gaps}",
            )
    return table
