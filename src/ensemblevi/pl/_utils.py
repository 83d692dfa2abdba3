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
#: What ``save`` accepts: ``True``, a suffix under scanpy's ``figdir`` or a ``Path``.
SaveArg = str | os.PathLike | bool | None


def stored_result(adata: AnnData, key: str, name: str, args: str = "model, adata") -> dict:
    """``adata.uns[key][name]``, what ``ensemblevi.tl.<name>`` wrote, or a clear error.

    Parameters
    ----------
    adata
        The AnnData.
    key
        The key the tool stored under.
    name
        The tool (and the entry) name.
    args
        The tool's arguments as the error message shows them.

    Returns
    -------
    The stored entry.

    Raises
    ------
    ValueError
        Nothing is stored: the message names the call that stores it.
    """
    stored = adata.uns.get(key, {}).get(name)
    if stored is None:
        raise ValueError(f"No adata.uns[{key!r}][{name!r}]; run ev.tl.{name}({args}) first.")
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
    """Save and show as scanpy's plots do, and return what they return.

    The one place every ``pl`` function ends in, so that ``save``, ``show`` and
    ``return_fig`` mean the same everywhere.

    Parameters
    ----------
    fig, axes
        The figure drawn and its panels.
    name
        The plot's name: the file name with ``save=True``, the prefix of a ``save`` suffix.
    show
        Show the figure (``plt.show()``); ``None``: follow ``scanpy.settings.autoshow``.
    save
        Where to write the figure (:func:`save_target`); ``None``/``False``: nowhere.
    return_fig
        Return the Figure.

    Returns
    -------
    The Figure with ``return_fig``; else ``None`` when shown; else the Axes (a list for
    several panels).
    """
    import scanpy as sc

    if save is not None and save is not False:
        target = save_target(name, save)
        save_figure(fig, target, formats=(target.suffix.lstrip("."),))
    if return_fig:
        return fig
    if sc.settings.autoshow if show is None else show:
        plt.show()
        return None
    return axes[0] if len(axes) == 1 else axes


def save_target(name: str, save: str | os.PathLike | bool) -> Path:
    """The file a plot's ``save`` argument names, as scanpy's ``save`` does.

    Parameters
    ----------
    name
        The plot's name (``gene_uncertainty``).
    save
        ``True``: ``{figdir}/{name}.{file_format_figs}``; a ``str``: a suffix, written as
        ``{figdir}/{name}{save}`` (``"_heart.png"`` gives ``gene_uncertainty_heart.png``;
        without a format suffix ``file_format_figs`` is appended), with ``figdir`` and
        ``file_format_figs`` from ``scanpy.settings``; a :class:`pathlib.Path` (any
        ``os.PathLike``, never a ``str``): that file itself, its suffix the format (PNG
        without one).

    Returns
    -------
    The path to write.

    Raises
    ------
    TypeError
        ``save`` is none of these.
    """
    import scanpy as sc

    if save is True:
        return Path(sc.settings.figdir) / f"{name}.{sc.settings.file_format_figs}"
    if isinstance(save, str):
        fmt = _format_of(Path(save))
        stem = save if fmt else f"{save}.{sc.settings.file_format_figs}"
        return Path(sc.settings.figdir) / f"{name}{stem}"
    if isinstance(save, os.PathLike):
        path = Path(save)
        return path if _format_of(path) else figure_path(path, "png")
    raise TypeError(
        f"save={save!r}: pass True (the default name under scanpy.settings.figdir), a str "
        "suffix such as '_heart.png' (written under figdir), or a pathlib.Path of the file."
    )


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


#: directions tried around a point, right first (where a reader looks for a label)
_DIRECTIONS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))


def place_labels(
    axis: Axes,
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str],
    *,
    colors: Sequence[str] | str = "black",
    fontsize: float = 6,
    gap: float = 2.0,
    marker: float = 2.0,
    step: float = 4.0,
    max_rings: int = 60,
) -> list:
    """Name points without two names overlapping, or a name covering a named point.

    Written by hand: adjustText (the usual library) is not a dependency, and its
    force-based iteration gives a layout that moves with small changes of the data. This is
    greedy and deterministic: labels are placed in the order given (put the most important
    first), each at the first spot, in rings of ``step`` points around its point and 8
    directions per ring, whose box overlaps no box placed before, no named point and not
    the legend, inside the axes where such a spot exists (else the nearest free spot
    outside). Labels moved off their point get a thin leader line. Boxes are measured in
    points with the figure's renderer once the figure is laid out, so call this last, when
    everything else is drawn; the labels are left out of the layout
    (``set_in_layout(False)``) so that placing them does not move the axes.

    Parameters
    ----------
    axis
        The axes the points are drawn in.
    x, y
        Data coordinates of the points to name.
    labels
        Their names, most important first.
    colors
        Text colour, one for all or one per label.
    fontsize
        Font size, points.
    gap
        Distance between a point and its label's box, points.
    marker
        Half the size of a named point's marker, points: no name covers it.
    step
        Distance between rings of candidate spots, points.
    max_rings
        Rings tried before the nearest free spot outside the axes is taken.

    Returns
    -------
    The ``Annotation`` artists, in the order of ``labels``.
    """
    if not len(labels):
        return []
    fig = axis.figure
    if isinstance(colors, str):
        colors = [colors] * len(labels)
    fig.canvas.draw()  # lays the figure out: the anchors' display positions are final
    scale = 72.0 / fig.dpi  # display pixels -> points
    anchors = axis.transData.transform(np.column_stack([x, y]).astype(float)) * scale
    frame = axis.get_window_extent()
    xmin, ymin, xmax, ymax = (v * scale for v in (frame.x0, frame.y0, frame.x1, frame.y1))
    taken = [(ax_ - marker, ay - marker, ax_ + marker, ay + marker) for ax_, ay in anchors]
    legend = axis.get_legend()
    if legend is not None:  # names stay off the legend too
        box = legend.get_window_extent()
        taken.append((box.x0 * scale, box.y0 * scale, box.x1 * scale, box.y1 * scale))
    renderer = fig.canvas.get_renderer()
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out = []
    for i, label in enumerate(labels):
        px, py = anchors[i]
        probe = axis.text(0, 0, label, fontsize=fontsize)
        box = probe.get_window_extent(renderer)
        probe.remove()
        hw, hh = box.width * scale / 2, box.height * scale / 2
        reach = gap + marker  # from the point to the label's box
        best = _free_spot(px, py, hw, hh, taken, (xmin, ymin, xmax, ymax), reach, step, max_rings)
        taken.append(best)
        cx, cy = (best[0] + best[2]) / 2, (best[1] + best[3]) / 2
        moved = abs(cx - px) > hw + reach + 0.5 or abs(cy - py) > hh + reach + 0.5
        ann = axis.annotate(
            label,
            (xs[i], ys[i]),
            xytext=(cx - px, cy - py),
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=fontsize,
            color=colors[i],
            annotation_clip=False,
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.45"} if moved else None,
        )
        ann.set_in_layout(False)
        out.append(ann)
    return out


def _free_spot(px, py, hw, hh, taken, frame, gap, step, max_rings) -> tuple:
    """The first box ``(x0, y0, x1, y1)`` of half-size ``hw, hh`` beside ``(px, py)`` that
    overlaps nothing in ``taken``: inside ``frame`` if any of ``max_rings`` rings has one,
    else the first free one outside, else (never seen) the outermost candidate."""
    outside = None
    for ring in range(max_rings + 1):
        for ux, uy in _DIRECTIONS:
            cx = px + ux * (hw + gap + ring * step)
            cy = py + uy * (hh + gap + ring * step)
            cand = (cx - hw, cy - hh, cx + hw, cy + hh)
            if any(_overlap(cand, t) for t in taken):
                continue
            x0, y0, x1, y1 = frame
            if x0 <= cand[0] and cand[2] <= x1 and y0 <= cand[1] and cand[3] <= y1:
                return cand
            outside = outside or cand
    return outside or cand


def _overlap(a: tuple, b: tuple) -> bool:
    """Whether boxes ``(x0, y0, x1, y1)`` overlap (touching edges do not)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def name_groups(axis: Axes, xy: np.ndarray, values: Sequence) -> list:
    """Name each category of ``values`` at the median of its points, without overlap.

    What scanpy's ``legend_loc="on data"`` does, with its labels placed by
    :func:`place_labels`: scanpy puts each name at its group's median whatever is there,
    and groups scattered over an embedding share a median, so their names pile up. Larger
    groups are placed first. Call it when all panels are drawn. Numeric ``values`` get no
    names (they have a colour bar).

    Parameters
    ----------
    axis
        The axes the embedding is drawn in.
    xy
        ``(n, 2)`` coordinates of the points as drawn.
    values
        The category of each point.

    Returns
    -------
    The name artists (empty for numeric ``values``).
    """
    import pandas as pd

    values = pd.Series(np.asarray(values))
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return []
    xy = np.asarray(xy, dtype=float)
    groups = values.astype(str).value_counts().index  # largest first
    mid = np.array([np.median(xy[(values.astype(str) == g).to_numpy()], axis=0) for g in groups])
    return place_labels(axis, mid[:, 0], mid[:, 1], list(groups), fontsize=7, marker=1.0)
