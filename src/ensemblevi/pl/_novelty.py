"""The UMAP of the denoised expression coloured by novelty, drawn by ``sc.pl.embedding``."""

from __future__ import annotations

from collections.abc import Sequence

from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ensemblevi.tl._embedding import UMAP_KEY

from ._utils import KEY, SaveArg, finish, panels, style


def novelty_umap(
    adata: AnnData,
    *,
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

    One panel per score that ``tl.cell_novelty`` wrote (``<key>_novelty_combined``, the one
    ``is_novel`` decides on, ``<key>_novelty_knn``, ``<key>_novelty_fit``,
    ``<key>_novelty_cv``, ``<key>_novelty_llgap``; ``novelty_expr`` uses no model and is
    left out) and per
    ``color`` column, each drawn by
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
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``novelty_umap.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``novelty_umap_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    import scanpy as sc

    if basis not in adata.obsm:
        raise ValueError(
            f"No adata.obsm[{basis!r}]; run ev.tl.expression_umap(model, adata) (or "
            "ev.tl.uncertainty_analysis(..., embedding=True)) first."
        )
    extra = [color] if isinstance(color, str) else list(color or [])
    scores = [
        c
        for name in (
            "novelty_combined",
            "novelty_knn",
            "novelty_fit",
            "novelty_cv",
            "novelty_llgap",
        )
        if (c := f"{key}_{name}") in adata.obs
    ]
    columns = scores + extra
    if not columns:
        raise ValueError(
            "No novelty scores in adata.obs; run ev.tl.cell_novelty(model, adata) first."
        )
    with style():
        fig, axes = panels(len(columns), ax, ncols=len(columns), size=(4.0, 3.2))
        for axis, col in zip(axes, columns, strict=True):
            sc.pl.embedding(
                adata,
                basis,
                color=col,
                ax=axis,
                show=False,
                save=False,
                size=size,
                norm=LogNorm() if col in scores else None,
                cmap="magma" if col in scores else None,
                title=col.removeprefix(f"{key}_"),
                frameon=True,
            )
            axis.set_xlabel("UMAP 1")
            axis.set_ylabel("UMAP 2")
    return finish(fig, axes, "novelty_umap", show, save, return_fig)


def group_novelty(
    adata: AnnData,
    *,
    key: str = KEY,
    ax: Axes | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Figure | Axes | None:
    """Per group, how novel its cells are; novel groups in red.

    Reads the table ``tl.group_novelty`` stored in ``adata.uns[key]["group_novelty"]``: one
    bar per tested group, the share of its cells the per-cell rule flags with the majority
    test (dashed: the null's share), the AUROC against the reference cells with the rank
    test (0.5: like them), labelled with its cell count and q-value; groups too small to
    test are listed without a bar.

    Parameters
    ----------
    adata
        AnnData that ``tl.group_novelty`` wrote into.
    key
        The prefix it wrote under.
    ax
        Axes to draw into.
    show
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``group_novelty.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``group_novelty_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    import pandas as pd

    stored = adata.uns.get(key, {}).get("group_novelty")
    if stored is None:
        raise ValueError(
            f"No adata.uns[{key!r}]['group_novelty']; run "
            "ev.tl.group_novelty(model, adata, groupby=...) first."
        )
    table = pd.DataFrame(stored["table"]).set_index("group")
    share = "share_flagged" in table  # the majority test: the share of cells flagged
    value = pd.to_numeric(table["share_flagged" if share else "auroc"], errors="coerce")
    base = 0.0 if share else 0.5
    order = value.fillna(-1).sort_values(kind="stable").index
    table, value = table.loc[order], value.loc[order]
    with style():
        height = max(2.0, 0.28 * len(table) + 1.0)
        fig, (axis,) = panels(1, ax, ncols=1, size=(5.2, height))
        novel = table["is_novel"].astype(bool).to_numpy()
        y = range(len(table))
        axis.barh(
            y,
            value.fillna(base).to_numpy() - base,
            left=base,
            color=["#c0392b" if v else "#95a5a6" for v in novel],
        )
        line = stored.get("min_share", 0.5) if share else 0.5
        axis.axvline(line, color="black", lw=0.8, ls="--" if share else "-")
        axis.set_yticks(list(y), [str(g) for g in table.index])
        axis.set_xlim(0, 1.25)
        for i, (g, row) in enumerate(table.iterrows()):
            q = pd.to_numeric(row["qval"], errors="coerce")
            text = (
                f"n={int(row['n_cells'])}, not tested"
                if pd.isna(q)
                else f"n={int(row['n_cells'])}, q={q:.1g}"
            )
            x = base if pd.isna(value[g]) else max(float(value[g]), base)
            axis.text(x + 0.01, i, text, va="center", fontsize=7)
        # two short lines: one long line is wider than the figure and gets cut
        if share:
            axis.set_xlabel(
                f"share of cells flagged by the per-cell rule at "
                f"{100 * stored['cell_alpha']:g}%\n(dashed: the share under the null, min_share)"
            )
        else:
            axis.set_xlabel(f"AUROC of {stored['score']}\nagainst the reference cells")
        axis.set_title(f"Is each {stored['groupby']} group novel? (red: q < {stored['fdr']:g})")
    return finish(fig, [axis], "group_novelty", show, save, return_fig)
