"""Figures of label transfer: the reliability diagram and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ensemblevi._names import from_h5_columns

from ._utils import SaveArg, finish, panels, stored_result, style

KEY = "ensemblevi"


def label_calibration(
    adata: AnnData,
    *,
    key: str = KEY,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Reliability diagram: accuracy against confidence, and each type's overconfidence.

    Left: cells binned by the confidence of their predicted type; bars are the bins'
    accuracy, the diagonal is perfect calibration, the numbers are cells per bin. Right:
    per type, the mean confidence of its calls minus the share of them that are right
    (positive: surer than right).

    Parameters
    ----------
    adata
        AnnData with ``uns[key]["label_calibration"]`` (``tl.label_calibration``).
    key
        The key it was stored under.
    ax
        Two Axes to draw into.
    show
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``label_calibration.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``label_calibration_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    stored = stored_result(adata, key, "label_calibration", "adata, truth_key=...")
    table = pd.DataFrame(stored["reliability"])
    per_type = pd.DataFrame(stored["per_type"])
    summary = stored["summary"]
    with style():
        fig, (rel, types) = panels(2, ax, ncols=2, size=(3.6, 3.4))
        full = table["n_cells"] > 0
        width = float(table["high"].iloc[0] - table["low"].iloc[0])
        mid = (table["low"] + table["high"]) / 2
        rel.bar(
            mid[full], table["accuracy"][full], width=width * 0.9, color="#2e86c1", label="accuracy"
        )
        rel.plot(
            table["confidence"][full],
            table["confidence"][full],
            "o",
            ms=3,
            color="black",
            label="mean confidence",
        )
        rel.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for x, (n, acc) in zip(
            mid[full], table.loc[full, ["n_cells", "accuracy"]].values, strict=True
        ):
            rel.text(x, min(acc + 0.02, 1.02), str(int(n)), ha="center", fontsize=6)
        rel.set_xlim(0, 1)
        rel.set_ylim(0, 1.08)
        rel.set_xlabel("confidence (max probability)")
        rel.set_ylabel("accuracy")
        rel.set_title(
            f"ECE {summary['ece']:.3f}, accuracy {summary['accuracy']:.3f}\n"
            f"NLL {summary['nll']:.3f}, {summary['n_cells']} cells"
        )
        rel.legend(loc="upper left", frameon=False, fontsize=7)
        gap = pd.to_numeric(per_type["overconfidence"], errors="coerce").fillna(0.0)
        y = np.arange(len(per_type))
        types.barh(y, gap, color=["#c0392b" if g > 0 else "#27ae60" for g in gap])
        types.axvline(0, color="black", lw=0.8)
        types.set_yticks(
            y,
            [
                f"{t} (n={n})"
                for t, n in zip(per_type["cell_type"], per_type["n_cells"], strict=True)
            ],
        )
        types.invert_yaxis()
        types.set_xlabel("confidence - precision of its calls")
        types.set_title("per type")
    return finish(fig, [rel, types], "label_calibration", show, save, return_fig)


def label_confusion(
    adata: AnnData,
    *,
    key: str = KEY,
    normalize: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: SaveArg = None,
    return_fig: bool | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Confusion matrix of true (rows) against predicted types, with an "unknown" column.

    Parameters
    ----------
    adata
        AnnData with ``uns[key]["label_calibration"]`` (``tl.label_calibration``).
    key
        The key it was stored under.
    normalize
        Colour by the share of each true type's cells (the counts are printed).
    ax
        Axes to draw into.
    show
        Show the figure; ``None``: follow ``scanpy.settings.autoshow``.
    save
        Write the figure: ``True`` (``label_confusion.<format>`` under
        ``scanpy.settings.figdir``), a suffix (``"_x.png"``: ``label_confusion_x.png``
        there) or a ``pathlib.Path``.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Figure with ``return_fig``, ``None`` when shown, else the Axes.
    """
    stored = stored_result(adata, key, "label_calibration", "adata, truth_key=...")
    table = from_h5_columns(pd.DataFrame(stored["confusion"])).set_index("true")
    counts = table.to_numpy(dtype=float)
    shown = counts / np.maximum(counts.sum(1, keepdims=True), 1) if normalize else counts
    with style():
        n = len(table)
        fig, (axis,) = panels(1, ax, ncols=1, size=(0.45 * n + 2.6, 0.4 * n + 1.8))
        image = axis.imshow(shown, cmap="Blues", vmin=0, aspect="auto")
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                if counts[i, j]:
                    axis.text(
                        j,
                        i,
                        str(int(counts[i, j])),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if shown[i, j] > 0.6 * shown.max() else "black",
                    )
        axis.set_xticks(
            range(counts.shape[1]), [str(c) for c in table.columns], rotation=60, ha="right"
        )
        axis.set_yticks(range(n), [str(i) for i in table.index])
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        fig.colorbar(
            image, ax=axis, label="share of the true type" if normalize else "cells", shrink=0.8
        )
    return finish(fig, [axis], "label_confusion", show, save, return_fig)
