"""Figures of the benchmark suite."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ._fdr import curves


def _colors(methods: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _style(method: str) -> str:
    return "--" if ("Wilcoxon" in method or "scvi-tools" in method or "single" in method) else "-"


def fdr_figure(records: list[dict]):
    """Per preset: true FDR against the target (mean and range over repetitions), and the
    ROC and precision-recall curves of repetition 0."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    long = curves(records)
    presets = list(dict.fromkeys(long["preset"]))
    methods = list(dict.fromkeys(long["method"]))
    colors = _colors(methods)
    fig, axes = plt.subplots(len(presets), 3, figsize=(12, 3.3 * len(presets)), squeeze=False)
    for row, preset in zip(axes, presets, strict=True):
        sub = long[long["preset"] == preset]
        n_reps = sub["rep"].nunique()
        for m in methods:
            c = sub[sub["method"] == m].groupby("target")["true_fdr"]
            mean, sd = c.mean(), c.std(ddof=1).fillna(0.0)
            row[0].plot(mean.index, mean, _style(m), color=colors[m], lw=1.4, label=m)
            row[0].fill_between(
                mean.index,
                (mean - sd).clip(0, 1),
                (mean + sd).clip(0, 1),
                color=colors[m],
                alpha=0.07,
                lw=0,
            )
        top = float(sub["target"].max())
        row[0].plot([0, top], [0, top], color="k", lw=0.8, ls=":")
        row[0].set(
            xlabel="FDR target",
            ylabel="true FDR of the calls",
            xlim=(0, top),
            ylim=(0, min(1.0, 2.5 * top)),
            title=f"{preset}: FDR control ({n_reps} reps; band = ±1 sd)",
        )
        rec = next(r for r in records if r["preset"] == preset and r["rep"] == 0)
        truth = np.asarray(rec["truth"], dtype=bool)
        for m in methods:
            score = np.asarray(rec["scores"][m])
            fpr, tpr, _ = roc_curve(truth, score)
            prec, rec_, _ = precision_recall_curve(truth, score)
            auc = rec["metrics"][m]
            row[1].plot(
                fpr, tpr, _style(m), color=colors[m], lw=1.2, label=f"{m} ({auc['auroc']:.3f})"
            )
            row[2].plot(
                rec_, prec, _style(m), color=colors[m], lw=1.2, label=f"{m} ({auc['auprc']:.3f})"
            )
        row[1].plot([0, 1], [0, 1], color="k", lw=0.8, ls=":")
        row[1].set(
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=f"{preset}: ROC, rep 0 (AUROC)",
        )
        row[2].set(
            xlabel="recall",
            ylabel="precision",
            ylim=(0, 1.02),
            title=f"{preset}: precision-recall, rep 0 (AUPRC)",
        )
        row[1].legend(fontsize=6, loc="lower right")
        row[2].legend(fontsize=6, loc="lower left")
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return fig


def calibration_figure(records: list[dict]):
    """Per data set: randomised-PIT histograms (flat = calibrated) and interval coverage
    minus nominal (0 = calibrated) for every model."""
    fig, axes = plt.subplots(len(records), 2, figsize=(9, 3.0 * len(records)), squeeze=False)
    for row, rec in zip(axes, records, strict=True):
        frame = pd.DataFrame(rec["rows"])
        colors = _colors(list(frame["model"]))
        for label, hist in rec["pit_hist"].items():
            h = np.asarray(hist, dtype=float)
            dens = h / h.sum() * len(h)
            edges = np.linspace(0, 1, len(h) + 1)
            row[0].stairs(dens, edges, color=colors[label], lw=1.3, label=label)
        row[0].axhline(1.0, color="k", lw=0.8, ls=":")
        row[0].set(
            xlabel="randomised PIT",
            ylabel="density",
            title=f"{rec['dataset']}: PIT of held-out counts",
        )
        levels = sorted(int(c[3:]) for c in frame.columns if c.startswith("cov"))
        width = 0.8 / len(frame)
        for i, (_, r) in enumerate(frame.iterrows()):
            gaps = [100 * (r[f"cov{lv}"] - lv / 100) for lv in levels]
            row[1].bar(
                np.arange(len(levels)) + i * width,
                gaps,
                width,
                color=colors[r["model"]],
                label=r["model"],
            )
        row[1].axhspan(-2, 2, color="0.9", zorder=0, label="±2 points")
        row[1].axhline(0, color="k", lw=0.8)
        row[1].set_xticks(np.arange(len(levels)) + 0.4 - width / 2, [f"{lv}%" for lv in levels])
        row[1].set(
            xlabel="central interval",
            ylabel="coverage - nominal (points)",
            title=f"{rec['dataset']}: interval coverage",
        )
        row[0].legend(fontsize=7)
        row[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
