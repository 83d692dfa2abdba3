"""What every figure shares: its style, its axes, and scanpy's show / save / return rules.

Nothing here changes matplotlib's global settings: the style applies only while a figure
is drawn (:func:`style`), so importing ensemblevi leaves the user's ``rcParams`` alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ensemblevi._constants import DEFAULT_KEY
from ensemblevi._files import atomic_file

KEY = DEFAULT_KEY
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9}
#: What ``save`` and ``show`` accept: a path or True (scanpy's ``figdir``), and a flag.
SaveArg = str | os.PathLike | bool | None


def stored_result(adata: AnnData, key: str, name: str) -> dict:
    """``adata.uns[key][name]``, what ``ensemblevi.tl.<name>`` wrote, or a clear error.

    Parameters
    ----------
    adata
        The AnnData.
    key
        The key the tool stored under.
    name
        The tool (and the entry) name.
    """
    stored = adata.uns.get(key, {}).get(name)
    if stored is None:
        raise ValueError(f"No adata.uns[{key!r}][{name!r}]; run ensemblevi.tl.{name} first.")
    return stored


@contextmanager
def style() -> Iterator[None]:
    """The figures' style (9 pt text), for what is drawn inside the block only."""
    with plt.rc_context(STYLE):
        yield


def panels(
    n: int,
    ax: Axes | Sequence[Axes] | None,
    ncols: int = 3,
    size: tuple[float, float] = (2.9, 2.9),
) -> tuple[Figure, list[Axes]]:
    """``n`` axes: the given ones (an Axes for one panel, a sequence for several) or a grid.

    Parameters
    ----------
    n
        Panels needed.
    ax
        Axes to draw into (an Axes, a list or an array of them, e.g. from
        ``plt.subplots``), or ``None`` for a new figure with a grid of ``ncols`` columns
        (unused cells switched off).
    ncols
        Columns of a new grid.
    size
        Width and height of a new grid's panel, inches.
    """
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) < n:
            raise ValueError(
                f"This figure has {n} panels but {len(axes)} axes were given: pass a "
                f"sequence of {n} axes, or select fewer panels."
            )
        return axes[0].figure, axes[:n]
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, grid = plt.subplots(
        nrows,
        ncols,
        figsize=(size[0] * ncols, size[1] * nrows),
        squeeze=False,
        layout="constrained",
    )
    axes = list(grid.flat)
    for extra in axes[n:]:
        extra.axis("off")
    return fig, axes[:n]


def finish(
    fig: Figure,
    axes: list[Axes],
    name: str,
    show: bool | None,
    save: SaveArg,
    return_fig: bool | None,
) -> Figure | Axes | list[Axes] | None:
    """Save and show as scanpy does, and return what scanpy returns.

    Parameters
    ----------
    fig, axes
        The figure drawn and its panels.
    name
        File name (without suffix) when ``save=True``.
    show
        Show the figure (``plt.show()``); ``None``: when matplotlib is interactive.
    save
        A path (its suffix picks the format, PNG without one) or ``True`` for
        ``scanpy.settings.figdir / f"{name}.png"``.
    return_fig
        Return the Figure.

    Returns
    -------
    The Figure with ``return_fig``; else ``None`` when shown; else the Axes (a list for
    several panels).
    """
    if save:
        if save is True:
            import scanpy as sc

            target = Path(sc.settings.figdir) / f"{name}.png"
        else:
            target = Path(save)
        fmt = _format_of(target) or "png"
        save_figure(fig, target, formats=(fmt,))
    if return_fig:
        return fig
    if plt.isinteractive() if show is None else show:
        plt.show()
        return None
    return axes[0] if len(axes) == 1 else axes


def _format_of(path: Path) -> str | None:
    """The figure format ``path``'s suffix names, or ``None`` (``de_CD4.Naive``: none)."""
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = path.suffix.lstrip(".").lower()
    return fmt if fmt in FigureCanvasBase.get_supported_filetypes() else None


def figure_path(path: str | os.PathLike, fmt: str) -> Path:
    """``path`` with the suffix of ``fmt``: a suffix naming a figure format is replaced,
    any other dot stays part of the name (group names such as ``CD4.Naive`` keep theirs).

    Parameters
    ----------
    path
        Target path, with or without a format suffix.
    fmt
        The format (``png``, ``svg``, ``pdf``, ...).
    """
    path = Path(path)
    stem = path.with_suffix("") if _format_of(path) else path
    return stem.with_name(f"{stem.name}.{fmt}")


def save_figure(
    fig: Figure | Axes | Sequence[Axes],
    path: str | os.PathLike,
    formats: tuple[str, ...] = ("png",),
    dpi: int = 200,
) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats``, atomically.

    Each file is written to a temporary file in the same directory and renamed into
    place (``os.replace``): a crash while saving leaves the previous file or none, never
    a truncated one.

    Parameters
    ----------
    fig
        The figure, or an Axes (or list of Axes, as the plots return) of it.
    path
        Target path; a suffix naming a figure format is replaced by each format's, any
        other dot is part of the name (:func:`figure_path`).
    formats
        File formats (``png``, ``svg``, ``pdf``, ...).
    dpi
        Resolution of raster formats.

    Returns
    -------
    The paths written.
    """
    if not isinstance(fig, Figure):
        fig = (fig if isinstance(fig, Axes) else next(iter(fig))).figure
    # figures with a layout engine are laid out already: no second, "tight" draw
    tight = None if fig.get_layout_engine() is not None else "tight"
    out = []
    for fmt in formats:
        target = figure_path(path, fmt)
        with atomic_file(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches=tight)
        out.append(target)
    return out
