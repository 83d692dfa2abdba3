"""Figures of the stability across members: per-cluster bars, the UMAP, member layouts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ensemblevi.tl._embedding import UMAP_KEY

from ._utils import KEY, SaveArg, finish, name_groups, panels, stored_result, style


def cluster_stability(
    adata: AnnData,
    *,
    key: str = KEY,
    ax: Axes | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Figure | Axes | None:
    """Per consensus cluster, its stability across members, with the threshold.

    One bar per cluster of ``tl.cluster_stability``: the mean over members of the Jaccard
    index of the cluster's best-matching member cluster (grey bars below the dashed
    threshold: not reproducible), labelled with its cell count and, where computed, the
    marker-set Jaccard.

    Parameters
    ----------
    adata
        AnnData that ``tl.cluster_stability`` wrote into.
    key
        The prefix it wrote under.
    ax
        Axes to draw into.
    show
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``cluster_stability.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``cluster_stability_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    stored = stored_result(adata, key, "cluster_stability")
    table = pd.DataFrame(stored["table"])
    threshold = stored["params"]["threshold"]
    with style():
        fig, (axis,) = panels(1, ax, ncols=1, size=(max(4.0, 0.45 * len(table) + 1.5), 3.2))
        x = np.arange(len(table))
        ok = table["reproducible"].astype(bool).to_numpy()
        axis.bar(x, table["stability"], color=np.where(ok, "#2e86c1", "#b3b6b7"))
        axis.axhline(threshold, color="black", ls="--", lw=0.8)
        axis.text(
            -0.5,
            1.06,
            f"dashed: threshold {threshold:g} (grey bars: not "
            "reproducible); mk: marker-set Jaccard",
            ha="left",
            fontsize=7,
        )
        for i, row in table.iterrows():
            label = f"n={int(row['n_cells'])}"
            if "marker_jaccard" in table:
                label += f"\nmk {row['marker_jaccard']:.2f}"
            axis.text(i, min(row["stability"], 0.97) + 0.01, label, ha="center", fontsize=6)
        axis.set_xticks(x, [str(c) for c in table["cluster"]])
        axis.set_ylim(0, 1.12)
        axis.set_xlim(-0.6, len(table) - 0.4)
        axis.set_xlabel("consensus Leiden cluster")
        axis.set_ylabel("stability (mean best-match Jaccard)")
        axis.set_title(
            f"Do the clusters hold up across {len(stored['ari'])} members? "
            f"(mean ARI {stored['mean_ari']:.2f})"
        )
    return finish(fig, [axis], "cluster_stability", show, save, return_fig)


def stability_umap(
    adata: AnnData,
    *,
    basis: str = UMAP_KEY,
    key: str = KEY,
    size: float | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Figure | Axes | list[Axes] | None:
    """The ensemble's UMAP coloured by neighbourhood stability, consensus clusters and
    each cell's agreement with its cluster (``sc.pl.embedding`` panels).

    Parameters
    ----------
    adata
        AnnData holding ``obsm[basis]`` and what ``tl.cluster_stability`` wrote.
    basis
        ``obsm`` key of the embedding (default: the denoised-expression UMAP).
    key
        The prefix of the stability columns.
    size
        Point size (default: scanpy's).
    ax
        Three Axes to draw into.
    show
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``stability_umap.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``stability_umap_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    import scanpy as sc

    stored_result(adata, key, "cluster_stability")
    if basis not in adata.obsm:
        raise ValueError(
            f"No adata.obsm[{basis!r}]; run ev.tl.expression_umap(model, adata) (or "
            "ev.tl.uncertainty_analysis(..., embedding=True)) first."
        )
    columns = [
        f"{key}_neighbourhood_stability",
        f"{key}_consensus_leiden",
        f"{key}_cluster_agreement",
    ]
    with style():
        fig, axes = panels(3, ax, ncols=3, size=(4.0, 3.2))
        for axis, col in zip(axes, columns, strict=True):
            numeric = not col.endswith("leiden")
            sc.pl.embedding(
                adata,
                basis,
                color=col,
                ax=axis,
                show=False,
                save=False,
                size=size,
                cmap="viridis" if numeric else None,
                vmin=0 if numeric else None,
                vmax=1 if numeric else None,
                title=col.removeprefix(f"{key}_"),
                legend_loc=None if not numeric else "right margin",
                frameon=True,
            )
            axis.set_xlabel("UMAP 1")
            axis.set_ylabel("UMAP 2")
        # the clusters' names last, once the layout is final
        name_groups(axes[1], adata.obsm[basis], adata.obs[columns[1]])
    return finish(fig, axes, "stability_umap", show, save, return_fig)


def _aligned(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``source`` rotated, reflected, scaled and shifted onto ``target`` (least squares)."""
    from scipy.linalg import orthogonal_procrustes

    mt, ms = target.mean(0), source.mean(0)
    a, b = target - mt, source - ms
    rot, scale = orthogonal_procrustes(b, a)
    return b @ rot * (scale / (b**2).sum()) + mt


def member_embeddings(
    adata: AnnData,
    *,
    color: str | None = None,
    key: str = KEY,
    size: float | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Figure | Axes | list[Axes] | None:
    """One UMAP per member (``tl.member_umaps``), aligned onto the first for display only.

    Each member's layout is rotated, reflected, scaled and shifted onto the first one's
    (orthogonal Procrustes), so the panels can be compared by eye; nothing is computed on
    the aligned coordinates. Coloured by the consensus clusters by default.

    Parameters
    ----------
    adata
        AnnData holding ``obsm["X_umap_member_<k>"]``.
    color
        ``obs`` column (default: ``<key>_consensus_leiden`` where there, else none).
    key
        The prefix of the stability columns.
    size
        Point size (default: scanpy's).
    ax
        One Axes per member layout.
    show
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``member_embeddings.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``member_embeddings_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    import scanpy as sc

    keys = sorted(
        (k for k in adata.obsm if k.startswith("X_umap_member_")),
        key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    if not keys:
        raise ValueError(
            "No adata.obsm['X_umap_member_<k>']; run ev.tl.member_umaps(model, adata) first."
        )
    if color is None and f"{key}_consensus_leiden" in adata.obs:
        color = f"{key}_consensus_leiden"
    first = np.asarray(adata.obsm[keys[0]])
    tmp = AnnData(obs=adata.obs[[color]].copy() if color else pd.DataFrame(index=adata.obs_names))
    if color and f"{color}_colors" in adata.uns:
        tmp.uns[f"{color}_colors"] = adata.uns[f"{color}_colors"]
    with style():
        fig, axes = panels(len(keys), ax, ncols=min(len(keys), 4), size=(3.2, 3.0))
        for axis, k in zip(axes, keys, strict=True):
            tmp.obsm["X_shown"] = _aligned(first, np.asarray(adata.obsm[k]))
            sc.pl.embedding(
                tmp,
                "X_shown",
                color=color,
                ax=axis,
                show=False,
                save=False,
                size=size,
                title=f"member {k.rsplit('_', 1)[1]}",
                frameon=True,
                legend_loc=None,
            )
            axis.set_xlabel("UMAP 1 (aligned)")
            axis.set_ylabel("UMAP 2")
        if color and color in tmp.obs:  # the groups' names last, once the layout is final
            for axis, k in zip(axes, keys, strict=True):
                name_groups(axis, _aligned(first, np.asarray(adata.obsm[k])), tmp.obs[color])
    if color and f"{color}_colors" in tmp.uns:
        adata.uns[f"{color}_colors"] = tmp.uns[f"{color}_colors"]
    return finish(fig, axes, "member_embeddings", show, save, return_fig)
