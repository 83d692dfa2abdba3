"""The UMAP of the denoised expression coloured by novelty, drawn by ``sc.pl.embedding``."""

from __future__ import annotations

from collections.abc import Sequence

from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ensemblevi.tl import UMAP_KEY

from ._utils import KEY, SaveArg, finish, panels, style


def novelty_umap(
    adata: AnnData,
    color: str | Sequence[str] | None = None,
    basis: str = UMAP_KEY,
    key: str = KEY,
    size: float | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Figure | Axes | list[Axes] | None:
    """The stored UMAP coloured by the novelty scores (log scale) and by ``color``.

    One panel per score that ``tl.cell_novelty`` wrote (``<key>_novelty_knn``,
    ``<key>_novelty_cv``, ``<key>_novelty_llgap``) and per ``color`` column, each drawn by
    ``scanpy.pl.embedding`` (like it, categorical colours are stored in
    ``adata.uns[f"{color}_colors"]``). Scores of 0 are drawn in grey (off a log scale).

    Parameters
    ----------
    adata
        AnnData holding ``obsm[basis]`` (``tl.uncertainty_analysis(..., embedding=True)``
        or ``tl.expression_umap``) and the novelty scores.
    color
        Further ``obs`` column(s) or genes to colour by (e.g. the cell types).
    basis
        ``obsm`` key of the embedding.
    key
        The prefix the novelty scores were written under.
    size
        Point size (default: scanpy's, ``120000 / n_cells``).
    ax
        Axes to draw into: one per panel (a single Axes for one panel).
    show
        Show the figure; ``None``: when matplotlib is interactive.
    save
        Write the figure: a path or ``True`` (``novelty_umap.png`` in ``figdir``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    import scanpy as sc

    if basis not in adata.obsm:
        raise ValueError(
            f"No adata.obsm[{basis!r}]; run ensemblevi.tl.uncertainty_analysis(..., "
            "embedding=True) or ensemblevi.tl.expression_umap first."
        )
    extra = [color] if isinstance(color, str) else list(color or [])
    scores = [c for c in (f"{key}_novelty_knn", f"{key}_novelty_cv", f"{key}_novelty_llgap")
              if c in adata.obs]
    columns = scores + extra
    if not columns:
        raise ValueError("No novelty scores in adata.obs; run ensemblevi.tl.cell_novelty.")
    with style():
        fig, axes = panels(len(columns), ax, ncols=len(columns), size=(4.0, 3.2))
        for axis, col in zip(axes, columns, strict=True):
            sc.pl.embedding(
                adata, basis, color=col, ax=axis, show=False, save=False, size=size,
                norm=LogNorm() if col in scores else None, cmap="magma" if col in scores else None,
                title=col.removeprefix(f"{key}_"), frameon=True,
            )  # fmt: skip
            axis.set_xlabel("UMAP 1")
            axis.set_ylabel("UMAP 2")
    return finish(fig, axes, "novelty_umap", show, save, return_fig)
