"""Figures of what ``tl.expression_spread`` and ``tl.gene_uncertainty`` stored."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ._utils import KEY, SaveArg, finish, panels, style

Returned = Figure | Axes | list[Axes] | None


def _spread(adata: AnnData, key: str) -> dict:
    try:
        return adata.uns[key]["expression_spread"]
    except KeyError:
        raise ValueError(
            f"No expression spread in adata.uns[{key!r}]; run ensemblevi.tl.expression_spread."
        ) from None


def _pairs(frame: pd.DataFrame, genes: Sequence[str] | None) -> list[tuple[str, str]]:
    pairs = list(dict.fromkeys(zip(frame["group"], frame["gene"], strict=True)))
    if genes is not None:
        pairs = [p for p in pairs if p[1] in set(genes)]
        if not pairs:
            raise ValueError(f"None of {list(genes)} are in the stored expression spread.")
    return pairs


def _rows(frame: pd.DataFrame, group: str, gene: str) -> pd.DataFrame:
    return frame[(frame["group"] == group) & (frame["gene"] == gene)]


def model_spread(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    key: str = KEY,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Returned:
    """Per cell: mean vs standard deviation across members, one panel per marker gene.

    Points are cells of the gene's group, coloured by point density (the ``density``
    that ``tl.expression_spread`` stored); the dashed line is the stored CV threshold
    (``std = cv_threshold x mean``).

    Parameters
    ----------
    adata
        AnnData holding ``uns[key]["expression_spread"]``.
    genes
        Only these marker genes' panels (default: all).
    key
        The ``uns`` key the spread was written under.
    ncols
        Panels per row of a new figure.
    ax
        Axes to draw into: one per panel (a single Axes for one panel).
    show
        Show the figure; ``None``: when matplotlib is interactive.
    save
        Write the figure: a path (suffix: format) or ``True`` (``model_spread.png`` in
        scanpy's ``figdir``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    spread = _spread(adata, key)
    cells, threshold = spread["cells"], spread["params"]["cv_threshold"]
    pairs = _pairs(cells, genes)
    norm = Normalize(0, cells["density"].max())  # one colour scale for all panels
    with style():
        fig, axes = panels(len(pairs), ax, ncols)
        for axis, (group, gene) in zip(axes, pairs, strict=True):
            sel = _rows(cells, group, gene).sort_values("density")  # dense points on top
            points = axis.scatter(
                sel["mean"],
                sel["std"],
                c=sel["density"],
                s=4,
                norm=norm,
                cmap="viridis",
                linewidths=0,
            )
            axis.axline((0, 0), slope=threshold, ls="--", color="0.5", lw=0.8)
            axis.set_xlim(left=0)
            axis.set_ylim(bottom=0)
            axis.set_title(f"{gene} ({group})")
            axis.set_xlabel("mean across members\n(counts per 10k)")
            axis.set_ylabel("std across members")
        fig.colorbar(points, ax=axes, shrink=0.6, label="cells per bin")
        if ax is None:
            fig.suptitle(f"Model spread: members' disagreement per cell (dashed: CV = {threshold})")
    return finish(fig, axes, "model_spread", show, save, return_fig)


def biological_spread(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    key: str = KEY,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Returned:
    """Per member: average over the group's cells vs standard deviation over cells.

    Parameters
    ----------
    adata
        AnnData holding ``uns[key]["expression_spread"]``.
    genes
        Only these marker genes' panels (default: all).
    key
        The ``uns`` key the spread was written under.
    ncols
        Panels per row of a new figure.
    ax
        Axes to draw into: one per panel (a single Axes for one panel).
    show
        Show the figure; ``None``: when matplotlib is interactive.
    save
        Write the figure: a path or ``True`` (``biological_spread.png`` in ``figdir``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    members = _spread(adata, key)["members"]
    pairs = _pairs(members, genes)
    with style():
        fig, axes = panels(len(pairs), ax, ncols)
        for axis, (group, gene) in zip(axes, pairs, strict=True):
            sel = _rows(members, group, gene)
            axis.scatter(sel["mean"], sel["std"], s=18, color="tab:blue", edgecolor="k", lw=0.3)
            axis.set_title(f"{gene} ({group})")
            axis.set_xlabel("cell average (counts per 10k)")
            axis.set_ylabel("std over cells")
        if ax is None:
            fig.suptitle("Biological spread: one point per member")
    return finish(fig, axes, "biological_spread", show, save, return_fig)


def member_histograms(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    key: str = KEY,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Returned:
    """Histograms over cells of the across-member coefficient of variation, per marker.

    The red line is the stored CV threshold of an uncertain cell.

    Parameters
    ----------
    adata
        AnnData holding ``uns[key]["expression_spread"]``.
    genes
        Only these marker genes' panels (default: all).
    key
        The ``uns`` key the spread was written under.
    ncols
        Panels per row of a new figure.
    ax
        Axes to draw into: one per panel (a single Axes for one panel).
    show
        Show the figure; ``None``: when matplotlib is interactive.
    save
        Write the figure: a path or ``True`` (``member_histograms.png`` in ``figdir``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    spread = _spread(adata, key)
    cells, threshold = spread["cells"], spread["params"]["cv_threshold"]
    pairs = _pairs(cells, genes)
    with style():
        fig, axes = panels(len(pairs), ax, ncols)
        for axis, (group, gene) in zip(axes, pairs, strict=True):
            axis.hist(
                _rows(cells, group, gene)["cv"], bins=40, color="tab:gray", histtype="stepfilled"
            )  # one patch, not one per bar: draws faster
            axis.axvline(threshold, color="tab:red", lw=1, label=f"CV = {threshold}")
            axis.set_title(f"{gene} ({group})")
            axis.set_xlabel("CV across members")
            axis.set_ylabel("cells")
        axes[0].legend(frameon=False)
        if ax is None:
            fig.suptitle("Across-member CV per cell")
    return finish(fig, axes, "member_histograms", show, save, return_fig)


def gene_uncertainty(
    adata: AnnData,
    highlight: Sequence[str] | None = None,
    n_labels: int = 5,
    key: str = KEY,
    ax: Axes | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Returned:
    """Every gene: uncertainty score vs mean denoised expression (log axes).

    Parameters
    ----------
    adata
        AnnData holding the ``var`` columns of ``tl.gene_uncertainty``.
    highlight
        Genes to circle and name (e.g. markers).
    n_labels
        Name the genes ranked 1 to ``n_labels`` (least certain; the stored rank).
    key
        The prefix the scores were written under.
    ax
        Axes to draw into.
    show
        Show the figure; ``None``: when matplotlib is interactive.
    save
        Write the figure: a path or ``True`` (``gene_uncertainty.png`` in ``figdir``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    col, mean = f"{key}_uncertainty", f"{key}_mean"
    if col not in adata.var:
        raise ValueError(f"No adata.var[{col!r}]; run ensemblevi.tl.gene_uncertainty.")
    var = adata.var
    with style():
        fig, (axis,) = panels(1, ax, size=(4.6, 3.6))
        axis.scatter(var[mean], var[col], s=5, color="0.5", lw=0)
        if highlight:
            hl = var.loc[var.index.isin(list(highlight))]
            axis.scatter(
                hl[mean], hl[col], s=30, facecolor="none", edgecolor="tab:red", label="markers"
            )
            for gene, row in hl.iterrows():
                axis.annotate(gene, (row[mean], row[col]), fontsize=7, color="tab:red")
            axis.legend(frameon=False)
        for gene, row in var[var[f"{col}_rank"] <= n_labels].iterrows():
            axis.annotate(gene, (row[mean], row[col]), fontsize=6)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("mean denoised expression (per 10k)")
        axis.set_ylabel("between-member CV (mean over cells)")
        axis.set_title("Gene uncertainty")
    return finish(fig, [axis], "gene_uncertainty", show, save, return_fig)
