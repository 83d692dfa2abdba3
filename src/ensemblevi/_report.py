"""The run report: one self-contained HTML file (figures embedded, no external assets)."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.reading{background:#f6f9ff;border-left:4px solid #4a7bd0;padding:.6em 1em}
.meta{color:#666;font-size:.85em}
"""


def _table(frame: pd.DataFrame, max_rows: int = 30, index: bool = False) -> str:
    table = frame.head(max_rows).to_html(
        index=index, float_format=lambda v: f"{v:.3g}", border=0, escape=True
    )
    return f"<div style='overflow-x:auto'>{table}</div>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_report(
    path: str | os.PathLike,
    title: str,
    reading: list[str],
    sections: list[tuple[str, list]],
    meta: dict,
) -> Path:
    """Write the report atomically.

    ``sections`` is a list of ``(heading, items)``; an item is a DataFrame (a table), a
    ``Path`` to a PNG (embedded), or a string (a paragraph, escaped).
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{html.escape(meta.get('summary', ''))}</p>",
        "<h2>What the results say</h2><div class='reading'><ul>",
        *(f"<li>{html.escape(line)}</li>" for line in reading),
        "</ul></div>",
    ]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, pd.DataFrame):
                parts.append(_table(item))
            elif isinstance(item, Path):
                parts.append(_image(item, item.stem))
            else:
                parts.append(f"<p>{html.escape(str(item))}</p>")
    rows = pd.DataFrame(
        [(k, v) for k, v in meta.items() if k != "summary"], columns=["setting", "value"]
    )
    parts += ["<h2>Configuration, versions, seeds, timings</h2>", _table(rows, 200)]
    parts.append("</body></html>")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path


DE_KEY = "ensemblevi_de_"  # uns key prefix of `ensemblevi de` results in a run's AnnData
DE_COLUMNS = ["gene", "proba_de", "lfc_median", "lfc_q2.5", "lfc_q97.5", "lfc_member_std",
              "member_calls", "call_flips", "expected_fdr"]  # fmt: skip


def _csv(path: Path, index_name: str | None = None) -> pd.DataFrame | None:
    if not path.exists():
        return None
    if index_name is None:
        return pd.read_csv(path)
    frame = pd.read_csv(path, index_col=0)
    frame.index.name = frame.index.name or index_name
    return frame.reset_index()


def de_reading(settings: dict, table: pd.DataFrame) -> str:
    """One sentence on a DE result for the report's reading."""
    calls = table[f"is_de_fdr_{settings['fdr_target']:g}"].astype(bool)
    flips = table["call_flips"].astype(bool)
    return (
        f"Differential expression {settings['group1']} vs {settings['reference']}: "
        f"{int(calls.sum())} of {len(table):,} genes change by at least "
        f"{settings['delta']:g} (log2) at a posterior expected FDR of "
        f"{100 * settings['fdr_target']:g}%; for {int(flips.sum())} genes the members "
        "disagree on the call (some call it, others not): treat those as unsettled."
    )


def render_run_report(out: str | os.PathLike) -> Path:
    """(Re)build ``OUT/report.html`` of ``ensemblevi run`` from what OUT holds.

    Reads ``run.json`` (reading and settings), ``tables/*.csv`` and ``figures/*.png``, so
    later steps (``ensemblevi de``) add their sections by writing their files and calling
    this again. Each DE result ``tables/de_<name>.csv`` (with ``de_<name>.json``, its
    settings, and ``figures/de_<name>.png``) gets a section.
    """
    out = Path(out)
    record = json.loads((out / "run.json").read_text())
    tables, figures = out / "tables", out / "figures"

    def fig(name: str) -> list[Path]:
        return [p] if (p := figures / f"{name}.png").exists() else []

    summary = _csv(tables / "marker_summary.csv")
    genes = _csv(tables / "gene_uncertainty.csv", "gene")
    hyper = _csv(tables / "hyperparameters.csv")
    missing = _csv(tables / "markers_not_usable.csv")
    sections: list[tuple[str, list]] = []
    if summary is not None:
        sections.append(("Marker genes: summary", [summary]))
    sections += [
        ("Model spread", [
            "Each point is a cell: the mean and standard deviation of the marker's denoised "
            "expression across members. Points above the dashed line vary by more than 10%.",
            *fig("model_spread"),
        ]),
        ("Biological spread", [
            "One point per member: the marker's average over the group's cells and its "
            "standard deviation over cells. Members far apart disagree on the population.",
            *fig("biological_spread"),
        ]),
        ("Across-member variation per cell", fig("member_histograms")),
        ("Gene uncertainty", [*fig("gene_uncertainty"),
                              *([genes.head(20)] if genes is not None else [])]),
    ]  # fmt: skip
    if fig("novelty_umap"):
        sections.append(("Cell novelty", fig("novelty_umap")))
    if hyper is not None:
        sections.append(("Tuned hyperparameters (Hyper-BatchEnsemble)", [
            "Each member's interval of each tuned hyperparameter over training (band) and "
            "its mean (line), the value the member uses for prediction.",
            *fig("hyperparameters"),
            hyper,
        ]))  # fmt: skip
    reading = list(record.get("reading", []))
    for settings_file in sorted(tables.glob("de_*.json")):
        name = settings_file.stem
        settings = json.loads(settings_file.read_text())
        table = _csv(tables / f"{name}.csv", "gene")
        if table is None:
            continue
        reading.append(de_reading(settings, table))
        call = f"is_de_fdr_{settings['fdr_target']:g}"
        sections.append((f"Differential expression: {settings['group1']} vs "
                         f"{settings['reference']}", [
            f"Estimand {settings['estimand']}: per posterior draw, the median over each "
            f"group's cells of log2 normalised expression ({settings['n_cells1']:,} and "
            f"{settings['n_cells2']:,} cells); all {settings['n_members']} members' draws "
            f"pooled ({settings['n_samples']} each). proba_de = P(|LFC| >= "
            f"{settings['delta']:g}); genes called by the posterior expected FDR rule at "
            f"{settings['fdr_target']:g}. member_calls: how many members call the gene "
            "on their own; call_flips: some do and some do not. Top 25 genes by proba_de:",
            *fig(name),
            table[[c for c in [*DE_COLUMNS, call] if c in table.columns]].head(25),
        ]))  # fmt: skip
    if missing is not None:
        sections.append(("Markers not usable", [missing]))
    meta = record.get("meta", {"summary": ""})
    return write_report(out / "report.html", "ensemblevi run report", reading, sections, meta)
