"""Markdown sections of the suite's results, and their place in ``docs/benchmarks/suite.md``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ensemblevi._files import write_text

from ._scoring import TARGETS


def is_ensemble(method: str) -> bool:
    """deep K>1, BatchEnsemble and Hyper-BatchEnsemble rows of the FDR suite."""
    if method.startswith("deep K="):
        return int(method[7:]) > 1
    return "BatchEnsemble" in method


def is_single(method: str) -> bool:
    """The single VAEs of the FDR suite (deep K=1 and the wider ones)."""
    return method == "deep K=1" or method.startswith("single ")


def _table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + " --- |" * len(cols)]
    lines += [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in frame.itertuples(False)
    ]
    return "\n".join(lines)


def _pm(mean: float, sd: float, digits: int = 3) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if np.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def fdr_markdown(summary: pd.DataFrame, records: list[dict]) -> str:
    """Per preset: metrics (mean ± sd over repetitions); then the targets, pass or miss.

    Parameters
    ----------
    summary
        :func:`ensemblevi.benchmark._fdr.summarise` of ``records``.
    records
        The FDR suite's unit records.
    """
    parts = []
    for preset, sub in summary.groupby("preset", sort=False, observed=True):
        rec = next(r for r in records if r["preset"] == preset)
        n = int(sub["n_reps"].max())
        parts.append(
            f"### {preset}: {rec['n_cells']:,} cells x {rec['n_genes']:,} genes, "
            f"{rec['n_de']} DE genes (rep 0), {rec['epochs']} epochs, {n} rep"
            + ("s\n" if n > 1 else "\n")
        )
        rows = []
        for _, r in sub.iterrows():
            if rec["n_de"] == 0:  # a null data set: every call is false
                row = {"method": r["method"]}
                for t in TARGETS:
                    row[f"called @{t:.0%}"] = _pm(r[f"frac@{t:g}"], r[f"frac@{t:g}_sd"], 4)
                rows.append(row)
                continue
            row = {
                "method": r["method"],
                "AUROC": _pm(r["auroc"], r["auroc_sd"]),
                "AUPRC": _pm(r["auprc"], r["auprc_sd"]),
            }
            for t in TARGETS:
                row[f"FDR @{t:.0%}"] = _pm(r[f"fdr@{t:g}"], r[f"fdr@{t:g}_sd"])
                row[f"TPR @{t:.0%}"] = _pm(r[f"tpr@{t:g}"], r[f"tpr@{t:g}_sd"], 2)
            row["FDR-curve l1"] = _pm(r["fdr_l1"], r["fdr_l1_sd"])
            rows.append(row)
        parts.append(_table(pd.DataFrame(rows)) + "\n")
    parts.append("### Targets\n")
    parts.append(
        "Ensembles: |true FDR - target| <= 0.02 at 5/10/20% (mean over repetitions) and "
        "AUPRC >= the best single VAE's (1x, 2x, 4x hidden) and Wilcoxon's.\n"
    )
    rows, null_rows = [], []
    for preset, sub in summary.groupby("preset", sort=False, observed=True):
        sub = sub.set_index("method")
        if next(r for r in records if r["preset"] == preset)["n_de"] == 0:
            for m in sub.index:
                frac = [sub.loc[m, f"frac@{t:g}"] for t in TARGETS]
                null_rows.append(
                    {
                        "data set": preset,
                        "method": m,
                        "called at 5/10/20%": " / ".join(f"{f:.4f}" for f in frac),
                        "target (<= 0.005 at 5%)": "met" if frac[0] <= 0.005 else "missed",
                    }
                )
            continue
        singles = [m for m in sub.index if is_single(m)]
        best_single = sub.loc[singles, "auprc"].max() if singles else np.nan
        wil = sub["auprc"].get("Wilcoxon + BH", np.nan)
        for m in filter(is_ensemble, sub.index):
            gaps = [sub.loc[m, f"fdr@{t:g}"] - t for t in TARGETS]
            worst = max(gaps, key=abs)
            auprc = sub.loc[m, "auprc"]
            rows.append(
                {
                    "preset": preset,
                    "ensemble": m,
                    "FDR - target at 5/10/20%": " / ".join(f"{g:+.3f}" for g in gaps),
                    "FDR target": "met" if abs(worst) <= 0.02 else "missed",
                    "AUPRC - best single": f"{auprc - best_single:+.4f}",
                    "AUPRC - Wilcoxon": f"{auprc - wil:+.4f}",
                    "AUPRC target": "met" if auprc >= max(best_single, wil) else "missed",
                }
            )
    parts.append((_table(pd.DataFrame(rows)) if rows else "No ensembles in this run.") + "\n")
    if null_rows:
        parts.append(
            "Null data sets (no gene is DE): fraction of genes called, at most 0.5% "
            "at a 5% target.\n"
        )
        parts.append(_table(pd.DataFrame(null_rows)) + "\n")
    return "\n".join(parts)


def calibration_markdown(summary: pd.DataFrame, records: list[dict]) -> str:
    """Per data set: held-out NLL, PIT and interval coverage of each model.

    Parameters
    ----------
    summary
        The calibration suite's summary table.
    records
        The calibration suite's unit records.
    """
    parts = []
    levels = sorted(int(c[3:]) for c in summary.columns if c.startswith("cov"))
    for rec in records:
        sub = summary[summary["dataset"] == rec["dataset"]]
        parts.append(
            f"### {rec['dataset']}: {rec['n_train']:,} train / {rec['n_test']:,} "
            f"held-out cells, {rec['n_genes']:,} genes, {rec['epochs']} epochs, "
            f"lr {rec['lr']:g}\n"
        )
        rows = []
        for _, r in sub.iterrows():
            gaps = [100 * (r[f"cov{lv}"] - lv / 100) for lv in levels]
            row = {
                "model": r["model"],
                "held-out NLL": f"{r['heldout_nll']:.2f}",
                "PIT l1": f"{r['pit_l1']:.3f}",
                "PIT var x12": f"{r['pit_var_x12']:.3f}",
            }
            for lv, g in zip(levels, gaps, strict=True):
                row[f"cov {lv}%"] = f"{r[f'cov{lv}']:.3f} ({g:+.1f})"
            row["members: cov 90%"] = f"{r['member_cov90']:.3f}" if "member_cov90" in r else ""
            row["within 2 pts"] = "yes" if max(abs(g) for g in gaps) <= 2 else "no"
            rows.append(row)
        parts.append(_table(pd.DataFrame(rows)) + "\n")
    return "\n".join(parts)


def ood_markdown(summary: pd.DataFrame) -> str:
    """AUROC of the novelty scores for the left-out type, per data set and model.

    Parameters
    ----------
    summary
        The novelty suite's summary table.
    """
    rows = [
        {
            "data": r["dataset"],
            "left out": f"{r['left_out']} ({r['n_unseen']} cells)",
            "vs held-out seen cells": r["n_heldout_seen"],
            "model": r["model"],
            "AUROC novelty_cv": f"{r['auroc_novelty_cv']:.3f}",
            "AUROC novelty_llgap": f"{r['auroc_novelty_llgap']:.3f}",
        }
        for _, r in summary.iterrows()
    ]
    return _table(pd.DataFrame(rows)) + "\n"


def _figure_links(text: str, path: Path) -> str:
    """Point the section's ``figures/NAME`` images at the nearest ``figures`` folder.

    The suite writes its figures into one folder (``docs/figures``) while its page may sit
    below it (``docs/benchmarks/suite.md``): a link relative to the page must climb.
    """
    here = path.resolve().parent
    for folder in (here, *here.parents[:2]):
        if (folder / "figures").is_dir():
            rel = Path(os.path.relpath(folder / "figures", here)).as_posix()
            return text if rel == "figures" else text.replace("](figures/", f"]({rel}/")
    return text


def update_docs(path: Path, suite: str, text: str) -> None:
    """Replace the ``suite`` section of ``path`` (between its markers) or append it.

    Parameters
    ----------
    path
        The Markdown file (created if absent), ``docs/benchmarks/suite.md`` for the
        project's documentation. Image links ``figures/NAME`` in ``text`` are rewritten to
        the nearest ``figures`` folder at or up to two levels above the file.
    suite
        Name in the ``<!-- suite:NAME -->`` markers.
    text
        The new section.
    """
    path = Path(path)
    text = _figure_links(text, path)
    start, end = f"<!-- suite:{suite} -->", f"<!-- /suite:{suite} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    doc = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: block, doc)
    else:
        doc = f"{doc.rstrip()}\n\n{block}\n"
    write_text(path, doc)
