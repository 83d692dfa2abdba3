"""Figures of a model's own records and of results passed in: HBE trajectories,
calibration, DE volcano."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._utils import SaveArg, finish, panels, place_labels, style

Returned = Figure | Axes | list[Axes] | None
AxesArg = Axes | Sequence[Axes] | None


def hyperparameter_trajectories(
    model,
    *,
    ncols: int = 3,
    ax: AxesArg = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Returned:
    """Each member's tuned interval per hyperparameter against training steps (HBE).

    One panel per hyperparameter (log scale): per member the band ``[low, high]`` of its
    log-uniform distribution after each tune step and the line of its mean (the value used
    at prediction); the dotted lines mark the allowed range. Reads
    ``model.hyper_trajectory_`` (written by ``train`` of an ``ensemble="hyperbatch"`` model).

    Parameters
    ----------
    model
        A trained ``EnsembleSCVI(ensemble="hyperbatch")`` (or ``ConvVAE``).
    ncols
        Panels per row of a new figure.
    ax
        Axes to draw into: one per hyperparameter.
    show
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``hyperparameters.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``hyperparameters_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    traj = getattr(model, "hyper_trajectory_", None)
    if traj is None or not len(traj):
        raise ValueError(
            "No hyperparameter trajectory: train an EnsembleSCVI(ensemble='hyperbatch') first."
        )
    hyper = model.module.hyper
    names = list(dict.fromkeys(traj["hyperparameter"]))
    with style():
        fig, axes = panels(len(names), ax, ncols, size=(3.2, 2.6))
        for axis, name in zip(axes, names, strict=True):
            sub = traj[traj["hyperparameter"] == name]
            for k, m in sub.groupby("member"):
                lo, hi = m["low"].to_numpy(), m["high"].to_numpy()
                # mean of the log-uniform on [lo, hi] (not in the stored trajectory)
                mean = m["mean"] if "mean" in m else (hi - lo) / np.log(hi / lo)
                axis.fill_between(m["step"], lo, hi, color=f"C{k % 10}", alpha=0.25, lw=0)
                axis.plot(m["step"], mean, color=f"C{k % 10}", lw=1, label=f"member {k}")
            if hyper is not None and name in hyper.names:
                j = hyper.index(name)
                for bound in (hyper.range_low[j], hyper.range_high[j]):
                    axis.axhline(float(bound.exp()), color="0.5", ls=":", lw=0.8)
            axis.set_yscale("log")
            axis.set_title(name)
            axis.set_xlabel("training step")
            axis.set_ylabel("value (log scale)")
        axes[0].legend(fontsize=7, frameon=False)
        if ax is None:
            fig.suptitle("Hyper-BatchEnsemble: tuned intervals per member (band) and mean (line)")
    return finish(fig, axes, "hyperparameters", show, save, return_fig)


def calibration(
    results: dict[str, dict],
    *,
    n_bins: int = 20,
    ax: AxesArg = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Returned:
    """PIT histograms and interval coverage of one or more models' predictive distributions.

    Left: each model's randomised PIT histogram (flat at 1 when calibrated; U-shaped:
    over-confident; hump: under-confident). Right: randomised coverage of the central
    intervals against the nominal level (on the diagonal when calibrated).

    Parameters
    ----------
    results
        ``{label: ensemblevi.metrics.predictive_calibration(...)}`` (each with ``pit`` and
        ``coverage``).
    n_bins
        Bins of the PIT histogram.
    ax
        Two axes to draw into (PIT, coverage).
    show
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``calibration.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``calibration_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    if not results:
        raise ValueError("calibration needs at least one result to plot.")
    with style():
        fig, (ax_pit, ax_cov) = panels(2, ax, ncols=2, size=(4.2, 3.4))
        edges = np.linspace(0, 1, n_bins + 1)
        for i, (label, res) in enumerate(results.items()):
            ax_pit.hist(
                np.ravel(res["pit"]),
                bins=edges,
                density=True,
                histtype="step",
                color=f"C{i}",
                label=label,
                lw=1.4,
            )
            cov = res["coverage"]
            ax_cov.plot(cov.index, cov["randomized"], "o-", color=f"C{i}", label=label, ms=4)
        ax_pit.axhline(1.0, color="0.4", ls="--", lw=0.8)
        ax_pit.set(xlabel="randomised PIT", ylabel="density", title="PIT histogram")
        ax_cov.plot([0, 1], [0, 1], color="0.4", ls="--", lw=0.8)
        ax_cov.set(
            xlim=(0.4, 1.0),
            ylim=(0.4, 1.0),
            xlabel="nominal level",
            ylabel="observed coverage",
            title="central interval coverage",
        )
        ax_cov.legend(fontsize=7, frameon=False)
    return finish(fig, [ax_pit, ax_cov], "calibration", show, save, return_fig)


def _de_table(data: AnnData | pd.DataFrame, key: str) -> tuple[pd.DataFrame, dict]:
    if isinstance(data, pd.DataFrame):
        return data, {}
    if key not in data.uns or "table" not in data.uns[key]:
        raise ValueError(
            f"No DE result in adata.uns[{key!r}]; run "
            "ev.tl.differential_expression(model, adata, groupby=..., group1=...) first."
        )
    table = pd.DataFrame(data.uns[key]["table"]).set_index("gene")
    return table, dict(data.uns[key].get("params", {}))


def de_volcano(
    data: AnnData | pd.DataFrame,
    *,
    key: str = "ensemblevi_de",
    n_labels: int = 8,
    title: str | None = None,
    ax: AxesArg = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Returned:
    """Volcano plot of an ensemble DE result, with its uncertainty.

    Left: posterior median LFC (95% interval as a bar) against the probability of a change
    of at least ``delta``; called genes coloured, genes whose call flips between members
    ringed in black, the ``+-delta`` band dashed. Right: how far the members disagree on
    each gene's LFC (standard deviation of the members' mean LFCs) against its size: calls
    resting on one member's answer sit high on the right.

    Parameters
    ----------
    data
        An AnnData holding ``uns[key]`` from :func:`ensemblevi.tl.differential_expression`,
        or its returned table.
    key
        The ``uns`` key of the DE result.
    n_labels
        Name this many called genes (most probable first).
    title
        Title of the volcano panel (default: the FDR target).
    ax
        Two axes to draw into (volcano, member disagreement).
    show
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``de_volcano.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``de_volcano_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    table, params = _de_table(data, key)
    calls_col = [c for c in table.columns if c.startswith("is_de_fdr_")]
    if not calls_col:
        raise ValueError("The DE table has no is_de_fdr_<target> column.")
    called = table[calls_col[0]].to_numpy(dtype=bool)
    flips = table["call_flips"].to_numpy(dtype=bool)
    lfc, p = table["lfc_median"].to_numpy(), table["proba_de"].to_numpy()
    with style():
        if ax is None:
            import matplotlib.pyplot as plt

            fig, (axis, ax2) = plt.subplots(
                1, 2, figsize=(10, 4.2), layout="constrained", gridspec_kw={"width_ratios": [3, 2]}
            )
        else:
            fig, (axis, ax2) = panels(2, ax)
        axis.errorbar(
            lfc,
            p,
            xerr=[lfc - table["lfc_q2.5"], table["lfc_q97.5"] - lfc],
            fmt="none",
            ecolor="0.8",
            elinewidth=0.6,
            zorder=1,
        )
        axis.scatter(lfc[~called], p[~called], s=8, color="0.55", label="not called", zorder=2)
        axis.scatter(
            lfc[called], p[called], s=10, color="C3", label=f"called ({called.sum()})", zorder=3
        )
        axis.scatter(
            lfc[flips],
            p[flips],
            s=28,
            facecolors="none",
            edgecolors="k",
            lw=0.5,
            label=f"call flips between members ({flips.sum()})",
            zorder=4,
        )
        delta = params.get("delta")
        if delta is not None:
            for x in (-delta, delta):
                axis.axvline(x, color="0.4", ls="--", lw=0.8)
        if called.any():
            axis.axhline(p[called].min(), color="C3", ls=":", lw=0.8)
        labelled = np.flatnonzero(called if called.any() else p >= 0.5)
        top = labelled[np.argsort(-(p[labelled] + 1e-3 * np.abs(lfc[labelled])))][:n_labels]
        target = calls_col[0].removeprefix("is_de_fdr_")
        axis.set(
            xlabel="LFC (log2, posterior median; bar: 95% interval)",
            ylabel="P(|LFC| >= delta)",
            ylim=(-0.03, 1.03),
            title=title or f"DE calls at posterior expected FDR {target}",
        )
        axis.legend(fontsize=7, loc="center right" if np.median(lfc) < 0 else "center left")
        spread = table["lfc_member_std"].to_numpy()
        ax2.scatter(np.abs(lfc[~called]), spread[~called], s=8, color="0.55")
        ax2.scatter(np.abs(lfc[called]), spread[called], s=10, color="C3")
        ax2.scatter(
            np.abs(lfc[flips]), spread[flips], s=28, facecolors="none", edgecolors="k", lw=0.5
        )
        ax2.set(
            xlabel="|LFC| (posterior median)",
            ylabel="between-member SD of the LFC",
            title="member disagreement",
        )
        # last, once both panels are drawn (the layout is final); top genes often share
        # p = 1: placed so that no two names overlap
        place_labels(axis, lfc[top], p[top], [str(table.index[i]) for i in top], fontsize=6)
    return finish(fig, [axis, ax2], "de_volcano", show, save, return_fig)
