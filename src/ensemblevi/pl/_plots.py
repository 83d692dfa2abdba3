"""Paper-ready figures of ensemble uncertainty. Each returns a matplotlib Figure."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

KEY = "ensemblevi"
plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9})


def save_figure(fig, path: str | os.PathLike, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats`` (PNG at 200 dpi, SVG)."""
    out = []
    for fmt in formats:
        target = Path(path).with_suffix(f".{fmt}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=200, bbox_inches="tight")
        out.append(target)
    return out


def _spread(adata: AnnData, key: str) -> dict:
    try:
        return adata.uns[key]["expression_spread"]
    except KeyError:
        raise ValueError(
            f"No expression spread in adata.uns[{key!r}]; run ensemblevi.tl.expression_spread."
        ) from None


def _density(x: np.ndarray, y: np.ndarray, bins: int = 60) -> np.ndarray:
    """Point density from a 2-d histogram (fast at atlas size, unlike a KDE)."""
    if len(x) < 2:
        return np.ones_like(x)
    hist, xe, ye = np.histogram2d(x, y, bins=bins)
    i = np.clip(np.searchsorted(xe, x, side="right") - 1, 0, bins - 1)
    j = np.clip(np.searchsorted(ye, y, side="right") - 1, 0, bins - 1)
    return hist[i, j]


def _grid(pairs: list[tuple[str, str]], ncols: int = 3, size: float = 2.9):
    nrows = int(np.ceil(len(pairs) / ncols))
    ncols = min(ncols, len(pairs))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False, layout="constrained"
    )
    axes = list(axes.flat)
    for ax in axes[len(pairs) :]:
        ax.axis("off")
    return fig, axes


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(frame["group"], frame["gene"], strict=True)))


def model_spread(adata: AnnData, key: str = KEY, ncols: int = 3):
    """Per cell: mean vs standard deviation across members, one panel per marker gene.

    Points are cells of the gene's group, coloured by point density; the dashed line is
    a coefficient of variation of 0.1 (std = 0.1 x mean).
    """
    cells = _spread(adata, key)["cells"]
    pairs = _pairs(cells)
    fig, axes = _grid(pairs, ncols)
    for ax, (group, gene) in zip(axes, pairs, strict=False):
        sel = cells[(cells["group"] == group) & (cells["gene"] == gene)]
        x, y = sel["mean"].to_numpy(), sel["std"].to_numpy()
        order = np.argsort(d := _density(x, y))
        sc = ax.scatter(x[order], y[order], c=d[order], s=4, cmap="viridis", linewidths=0)
        lim = np.array([0, x.max() if len(x) else 1])
        ax.plot(lim, 0.1 * lim, "--", color="0.5", lw=0.8)
        ax.set_title(f"{gene} ({group})")
        ax.set_xlabel("mean across members\n(counts per 10k)")
        ax.set_ylabel("std across members")
    fig.colorbar(sc, ax=axes[: len(pairs)], shrink=0.6, label="cells per bin")
    fig.suptitle("Model spread: members' disagreement per cell (dashed: CV = 0.1)")
    return fig


def biological_spread(adata: AnnData, key: str = KEY, ncols: int = 3):
    """Per member: average over the group's cells vs standard deviation over cells."""
    members = _spread(adata, key)["members"]
    pairs = _pairs(members)
    fig, axes = _grid(pairs, ncols)
    for ax, (group, gene) in zip(axes, pairs, strict=False):
        sel = members[(members["group"] == group) & (members["gene"] == gene)]
        ax.scatter(sel["mean"], sel["std"], s=18, color="tab:blue", edgecolor="k", lw=0.3)
        ax.set_title(f"{gene} ({group})")
        ax.set_xlabel("cell average (counts per 10k)")
        ax.set_ylabel("std over cells")
    fig.suptitle("Biological spread: one point per member")
    return fig


def member_histograms(adata: AnnData, key: str = KEY, ncols: int = 3):
    """Histograms over cells of the across-member coefficient of variation, per marker."""
    spread = _spread(adata, key)
    cells, threshold = spread["cells"], spread["params"]["cv_threshold"]
    pairs = _pairs(cells)
    fig, axes = _grid(pairs, ncols)
    for ax, (group, gene) in zip(axes, pairs, strict=False):
        cv = cells.loc[(cells["group"] == group) & (cells["gene"] == gene), "cv"]
        ax.hist(cv, bins=40, color="tab:gray")
        ax.axvline(threshold, color="tab:red", lw=1, label=f"CV = {threshold}")
        ax.set_title(f"{gene} ({group})")
        ax.set_xlabel("CV across members")
        ax.set_ylabel("cells")
    axes[0].legend(frameon=False)
    fig.suptitle("Across-member CV per cell")
    return fig


def gene_uncertainty(adata: AnnData, key: str = KEY, highlight=None, n_labels: int = 5):
    """Every gene: uncertainty score vs mean denoised expression (log axes).

    ``highlight`` genes (e.g. markers) are circled; the ``n_labels`` least certain genes
    are named.
    """
    col = f"{key}_uncertainty"
    if col not in adata.var:
        raise ValueError(f"No adata.var[{col!r}]; run ensemblevi.tl.gene_uncertainty.")
    var = adata.var
    fig, ax = plt.subplots(figsize=(4.6, 3.6), layout="constrained")
    ax.scatter(var[f"{key}_mean"], var[col], s=5, color="0.5", lw=0)
    if highlight:
        hl = var.loc[var.index.isin(list(highlight))]
        ax.scatter(
            hl[f"{key}_mean"], hl[col], s=30, facecolor="none", edgecolor="tab:red", label="markers"
        )
        for gene, row in hl.iterrows():
            ax.annotate(gene, (row[f"{key}_mean"], row[col]), fontsize=7, color="tab:red")
        ax.legend(frameon=False)
    for gene, row in var.nlargest(n_labels, col).iterrows():
        ax.annotate(gene, (row[f"{key}_mean"], row[col]), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean denoised expression (per 10k)")
    ax.set_ylabel("between-member CV (mean over cells)")
    ax.set_title("Gene uncertainty")
    return fig


def novelty_umap(adata: AnnData, model=None, key: str = KEY, color: str | None = None):
    """UMAP of the ensemble's denoised expression, coloured by novelty (and ``color``).

    The embedding is computed from ``log1p`` of the member-averaged normalised expression
    (never from averaged latent codes, whose spaces are not aligned) and stored in
    ``adata.obsm["X_umap_ensemblevi"]``; pass ``model`` to compute it when absent.
    """
    import scanpy as sc

    basis = "X_umap_ensemblevi"
    if basis not in adata.obsm:
        if model is None:
            raise ValueError(f"No adata.obsm[{basis!r}]; pass the model to compute it.")
        rho = model.get_normalized_expression(adata, library_size=1e4, return_numpy=True)
        tmp = AnnData(np.log1p(rho))
        sc.pp.pca(tmp, n_comps=min(30, tmp.n_vars - 1, tmp.n_obs - 1))
        sc.pp.neighbors(tmp, random_state=0)
        sc.tl.umap(tmp, random_state=0)
        adata.obsm[basis] = tmp.obsm["X_umap"]
    xy = adata.obsm[basis]
    panels = [c for c in (f"{key}_novelty_cv", f"{key}_novelty_llgap", color) if c]
    panels = [c for c in panels if c in adata.obs]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.0 * len(panels), 3.2), squeeze=False, layout="constrained"
    )
    for ax, col in zip(axes.flat, panels, strict=True):
        values = adata.obs[col]
        if values.dtype.kind in "fi":
            sc_ = ax.scatter(*xy.T, c=np.log10(values.clip(lower=1e-6)), s=3, cmap="magma", lw=0)
            fig.colorbar(sc_, ax=ax, shrink=0.8, label=f"log10 {col.removeprefix(key + '_')}")
        else:
            cats = values.astype("category")
            for i, cat in enumerate(cats.cat.categories):
                m = (cats == cat).to_numpy()
                ax.scatter(*xy[m].T, s=3, lw=0, color=plt.cm.tab20(i % 20), label=str(cat))
            ax.legend(
                markerscale=3, fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5)
            )
        ax.set_title(col.removeprefix(key + "_"))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
    return fig


def hyperparameter_trajectories(model, ncols: int = 3):
    """Each member's tuned interval per hyperparameter against training steps (HBE).

    One panel per hyperparameter (log scale): per member the band ``[low, high]`` of its
    log-uniform distribution after each tune step and the line of its mean (the value used
    at prediction); the dotted lines mark the allowed range. Reads
    ``model.hyper_trajectory_`` (written by ``train`` of an ``ensemble="hyperbatch"`` model).
    """
    traj = getattr(model, "hyper_trajectory_", None)
    if traj is None or not len(traj):
        raise ValueError(
            "No hyperparameter trajectory: train an EnsembleSCVI(ensemble='hyperbatch') first."
        )
    hyper = model.module.hyper
    names = list(dict.fromkeys(traj["hyperparameter"]))
    ncols = min(ncols, len(names))
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, name in zip(axes.flat, names, strict=False):
        sub = traj[traj["hyperparameter"] == name]
        for k, m in sub.groupby("member"):
            lo, hi = m["low"].to_numpy(), m["high"].to_numpy()
            mean = (hi - lo) / np.log(hi / lo)
            ax.fill_between(m["step"], lo, hi, color=colors(k % 10), alpha=0.25, lw=0)
            ax.plot(m["step"], mean, color=colors(k % 10), lw=1, label=f"member {k}")
        if hyper is not None and name in hyper.names:
            j = hyper.index(name)
            for bound in (hyper.range_low[j], hyper.range_high[j]):
                ax.axhline(float(bound.exp()), color="0.5", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.set_ylabel("value (log scale)")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.suptitle("Hyper-BatchEnsemble: tuned intervals per member (band) and mean (line)")
    fig.tight_layout()
    return fig


def calibration(results: dict[str, dict], n_bins: int = 20):
    """PIT histograms and interval coverage of one or more models' predictive distributions.

    ``results``: ``{label: ensemblevi.metrics.predictive_calibration(...)}``. Left: each
    model's randomised PIT histogram (flat at 1 when calibrated; U-shaped: over-confident;
    hump: under-confident). Right: randomised coverage of the central intervals against the
    nominal level (on the diagonal when calibrated).
    """
    if not results:
        raise ValueError("calibration needs at least one result to plot.")
    fig, (ax_pit, ax_cov) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    edges = np.linspace(0, 1, n_bins + 1)
    for i, (label, res) in enumerate(results.items()):
        freq = np.histogram(np.ravel(res["pit"]), bins=edges)[0]
        density = freq / max(freq.sum(), 1) * n_bins
        ax_pit.stairs(density, edges, color=f"C{i}", label=label, lw=1.4)
        cov = res["coverage"]
        ax_cov.plot(cov.index, cov["randomized"], "o-", color=f"C{i}", label=label, ms=4)
    ax_pit.axhline(1.0, color="0.4", ls="--", lw=0.8)
    ax_pit.set(xlabel="randomised PIT", ylabel="density", title="PIT histogram")
    ax_cov.plot([0, 1], [0, 1], color="0.4", ls="--", lw=0.8)
    ax_cov.set(xlim=(0.4, 1.0), ylim=(0.4, 1.0), xlabel="nominal level",
               ylabel="observed coverage", title="central interval coverage")  # fmt: skip
    ax_cov.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def de_volcano(data, key: str = "ensemblevi_de", n_labels: int = 8, title: str | None = None):
    """Volcano plot of an ensemble DE result, with its uncertainty.

    ``data``: an AnnData holding ``uns[key]`` from :func:`ensemblevi.tl.differential_expression`,
    or its returned table. Left: posterior median LFC (95% interval as a bar) against the
    probability of a change of at least ``delta``; called genes coloured, genes whose call
    flips between members ringed in black, the ``+-delta`` band dashed. Right: how far the
    members disagree on each gene's LFC (standard deviation of the members' mean LFCs)
    against its size: calls resting on one member's answer sit high on the right.
    """
    if isinstance(data, pd.DataFrame):
        table, params = data, {}
    else:
        if key not in data.uns or "table" not in data.uns[key]:
            raise ValueError(
                f"No DE result in adata.uns[{key!r}]; run ensemblevi.tl.differential_expression."
            )
        table = pd.DataFrame(data.uns[key]["table"]).set_index("gene")
        params = dict(data.uns[key].get("params", {}))
    calls_col = [c for c in table.columns if c.startswith("is_de_fdr_")]
    if not calls_col:
        raise ValueError("The DE table has no is_de_fdr_<target> column.")
    called = table[calls_col[0]].to_numpy(dtype=bool)
    flips = table["call_flips"].to_numpy(dtype=bool)
    lfc, p = table["lfc_median"].to_numpy(), table["proba_de"].to_numpy()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    ax.errorbar(lfc, p, xerr=[lfc - table["lfc_q2.5"], table["lfc_q97.5"] - lfc], fmt="none",
                ecolor="0.8", elinewidth=0.6, zorder=1)  # fmt: skip
    ax.scatter(lfc[~called], p[~called], s=8, color="0.55", label="not called", zorder=2)
    ax.scatter(lfc[called], p[called], s=10, color="C3", label=f"called ({called.sum()})",
               zorder=3)  # fmt: skip
    ax.scatter(lfc[flips], p[flips], s=28, facecolors="none", edgecolors="k", lw=0.5,
               label=f"call flips between members ({flips.sum()})", zorder=4)  # fmt: skip
    delta = params.get("delta")
    if delta is not None:
        for x in (-delta, delta):
            ax.axvline(x, color="0.4", ls="--", lw=0.8)
    if called.any():
        ax.axhline(p[called].min(), color="C3", ls=":", lw=0.8)
    labelled = np.flatnonzero(called if called.any() else p >= 0.5)
    top = labelled[np.argsort(-(p[labelled] + 1e-3 * np.abs(lfc[labelled])))][:n_labels]
    for j, i in enumerate(top):  # staggered: top genes often share p = 1
        ax.annotate(table.index[i], (lfc[i], p[i]), fontsize=6, xytext=(4, -6 - 8 * (j % 4)),
                    textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.3})  # fmt: skip
    target = calls_col[0].removeprefix("is_de_fdr_")
    ax.set(xlabel="LFC (log2, posterior median; bar: 95% interval)",
           ylabel="P(|LFC| >= delta)", ylim=(-0.03, 1.03),
           title=title or f"DE calls at posterior expected FDR {target}")  # fmt: skip
    ax.legend(fontsize=7, loc="center right" if np.median(lfc) < 0 else "center left")
    spread = table["lfc_member_std"].to_numpy()
    ax2.scatter(np.abs(lfc[~called]), spread[~called], s=8, color="0.55")
    ax2.scatter(np.abs(lfc[called]), spread[called], s=10, color="C3")
    ax2.scatter(np.abs(lfc[flips]), spread[flips], s=28, facecolors="none", edgecolors="k",
                lw=0.5)  # fmt: skip
    ax2.set(xlabel="|LFC| (posterior median)", ylabel="between-member SD of the LFC",
            title="member disagreement")  # fmt: skip
    fig.tight_layout()
    return fig
