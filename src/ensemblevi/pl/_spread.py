"""Figures of what ``tl.expression_spread`` and ``tl.gene_uncertainty`` stored."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ._utils import KEY, SaveArg, finish, panels, place_labels, style

Returned = Figure | Axes | list[Axes] | None


def point_density(x: np.ndarray, y: np.ndarray, *, max_points: int = 2000) -> np.ndarray:
    """Gaussian kernel density (``scipy.stats.gaussian_kde``) at each point, over its max.

    The kernel is fitted on at most ``max_points`` points (a seeded subsample: the
    figure's colours are the same on every draw) and evaluated at all of them, so a panel of
    an atlas' 18,641 cells costs a fraction of a second.

    Parameters
    ----------
    x, y
        The points' coordinates.
    max_points
        Points the kernel is fitted on.

    Returns
    -------
    The density at each point divided by the largest (1 everywhere for fewer than 3
    points or points on a line, where no 2-d density exists).
    """
    from scipy.stats import gaussian_kde

    xy = np.vstack([x, y]).astype(float)
    if xy.shape[1] < 3:
        return np.ones(xy.shape[1])
    fit = xy
    if xy.shape[1] > max_points:
        fit = xy[:, np.random.default_rng(0).choice(xy.shape[1], max_points, replace=False)]
    try:
        density = gaussian_kde(fit)(xy)
    except np.linalg.LinAlgError:  # singular covariance: the points lie on a line
        return np.ones(xy.shape[1])
    return density / density.max()


def _spread(adata: AnnData, key: str) -> dict:
    try:
        return adata.uns[key]["expression_spread"]
    except KeyError:
        raise ValueError(
            f"No expression spread in adata.uns[{key!r}]; run "
            "ev.tl.expression_spread(model, adata, genes=markers) first."
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
    *,
    genes: Sequence[str] | None = None,
    key: str = KEY,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Returned:
    """Per cell: mean vs standard deviation across members, one panel per marker gene.

    Points are cells of the gene's group, coloured by the density of points around them
    (:func:`point_density`, relative to the panel's densest, so that the bulk of the cells
    shows under the outliers); the dashed line is the stored CV threshold
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
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``model_spread.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``model_spread_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    spread = _spread(adata, key)
    cells, threshold = spread["cells"], spread["params"]["cv_threshold"]
    pairs = _pairs(cells, genes)
    norm = Normalize(0, 1)  # densities relative to each panel's densest: one scale
    with style():
        fig, axes = panels(len(pairs), ax, ncols)
        for axis, (group, gene) in zip(axes, pairs, strict=True):
            sel = _rows(cells, group, gene)
            density = point_density(sel["mean"].to_numpy(), sel["std"].to_numpy())
            order = np.argsort(density, kind="stable")  # dense points on top
            points = axis.scatter(
                sel["mean"].to_numpy()[order],
                sel["std"].to_numpy()[order],
                c=density[order],
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
        fig.colorbar(points, ax=axes, shrink=0.6, label="density of cells (relative)")
        if ax is None:
            fig.suptitle(f"Model spread: members' disagreement per cell (dashed: CV = {threshold})")
    return finish(fig, axes, "model_spread", show, save, return_fig)


def biological_spread(
    adata: AnnData,
    *,
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
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``biological_spread.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``biological_spread_x.png``
        there) or a ``pathlib.Path``.
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
    *,
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
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``member_histograms.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``member_histograms_x.png``
        there) or a ``pathlib.Path``.
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
    *,
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
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``gene_uncertainty.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``gene_uncertainty_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    col, mean = f"{key}_cv_between", f"{key}_mean"
    if col not in adata.var or f"{col}_rank" not in adata.var:
        raise ValueError(
            f"No adata.var[{col!r}] with its rank; run ev.tl.gene_uncertainty(model, adata"
            + ("" if key == KEY else f", key_added={key!r}")
            + ") first."
        )
    var = adata.var
    with style():
        fig, (axis,) = panels(1, ax, size=(4.6, 3.6))
        axis.scatter(var[mean], var[col], s=5, color="0.6", lw=0, rasterized=len(var) > 5000)
        hl = var.loc[var.index.isin(list(highlight or []))]
        if len(hl):
            axis.scatter(
                hl[mean], hl[col], s=30, facecolor="none", edgecolor="tab:red", label="markers"
            )
            axis.legend(frameon=False, loc="lower left")
        top = var[(var[f"{col}_rank"] <= n_labels) & ~var.index.isin(hl.index)]
        top = top.sort_values(f"{col}_rank")
        axis.scatter(top[mean], top[col], s=9, color="black", lw=0)
        axis.set_xscale("log")
        axis.set_yscale("log")
        _plain_log_ticks(axis.xaxis, var[mean])
        _plain_log_ticks(axis.yaxis, var[col])
        axis.set_xlabel("mean denoised expression (per 10k)")
        axis.set_ylabel("between-member CV (mean over cells)")
        axis.set_title("Gene uncertainty")
        named = pd.concat([top, hl])  # the least certain genes first, then the markers
        place_labels(
            axis,
            named[mean].to_numpy(),
            named[col].to_numpy(),
            [str(g) for g in named.index],
            colors=["black"] * len(top) + ["tab:red"] * len(hl),
            fontsize=6.5,
            marker=3.5,  # the markers' rings (s=30) stay clear
        )
    return finish(fig, [axis], "gene_uncertainty", show, save, return_fig)


def _plain_log_ticks(axis_obj, values: pd.Series) -> None:
    """Log-axis ticks as plain numbers at 1-2-5 steps (1 per decade beyond 2.5 decades):
    matplotlib's default labels the minor ticks of a short range as ``2 x 10^0``, ``3 x
    10^0`` ..., which run into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = values[values > 0]
    decades = np.log10(positive.max() / positive.min()) if len(positive) > 1 else 1.0
    axis_obj.set_major_locator(LogLocator(subs=(1.0,) if decades > 2.5 else (1.0, 2.0, 5.0)))
    axis_obj.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis_obj.set_minor_formatter(NullFormatter())
