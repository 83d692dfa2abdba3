"""The run report: one self-contained HTML file (figures embedded, no external assets)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pandas as pd

from ensemblevi._files import write_text
from ensemblevi._names import html_text
from ensemblevi.pipeline._readings import (
    DE_COLUMNS,
    _csv,
    de_reading,
    estimand_text,
    null_reading,
    replicates_text,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.reading{background:#f6f9ff;border-left:4px solid #4a7bd0;padding:.6em 1em}
.meta{color:#666;font-size:.85em}
.warn{background:#fff6e5;border-left:4px solid #d08a00;padding:.6em 1em}
.ok{background:#f3faf3;border-left:4px solid #4a9d4a;padding:.6em 1em}
"""


class Alert(str):
    """A report paragraph shown as a warning box (``ok=True``: as a passed check).

    Parameters
    ----------
    text
        The paragraph.
    ok
        Shown as a passed check instead of a warning.
    """

    ok: bool

    def __new__(cls, text: str, ok: bool = False) -> Alert:
        """A new alert paragraph.

        Parameters
        ----------
        text
            The paragraph.
        ok
            Shown as a passed check instead of a warning.
        """
        self = super().__new__(cls, text)
        self.ok = ok
        return self


def _table(frame: pd.DataFrame, max_rows: int = 30, index: bool = False) -> str:
    table = frame.head(max_rows).to_html(
        index=index, float_format=lambda v: f"{v:.3g}", border=0, escape=True
    )
    return f"<div style='overflow-x:auto'>{table}</div>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html_text(alt)}" src="data:image/png;base64,{data}">'


def write_report(
    path: str | os.PathLike,
    title: str,
    reading: list[str],
    sections: list[tuple[str, list]],
    meta: dict,
) -> Path:
    """Write the report atomically.

    Parameters
    ----------
    path
        The HTML file.
    title
        Its title.
    reading
        The plain-language sentences, shown first.
    sections
        ``(heading, items)`` pairs; an item is a DataFrame (a table), a ``Path`` to a PNG
        (embedded), or a string (a paragraph, escaped).
    meta
        Settings shown in the last table; ``meta["summary"]`` is the line under the title.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html_text(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html_text(title)}</h1>",
        f"<p class='meta'>{html_text(meta.get('summary', ''))}</p>",
        "<h2>What the results say</h2><div class='reading'><ul>",
        *(f"<li>{html_text(line)}</li>" for line in reading),
        "</ul></div>",
    ]
    for heading, items in sections:
        parts.append(f"<h2>{html_text(heading)}</h2>")
        for item in items:
            if isinstance(item, pd.DataFrame):
                parts.append(_table(item))
            elif isinstance(item, Path):
                parts.append(_image(item, item.stem))
            elif isinstance(item, Alert):
                kind = "ok" if item.ok else "warn"
                parts.append(f"<p class='{kind}'>{html_text(str(item))}</p>")
            else:
                parts.append(f"<p>{html_text(str(item))}</p>")
    rows = pd.DataFrame(
        [(k, v) for k, v in meta.items() if k != "summary"], columns=["setting", "value"]
    )
    parts += ["<h2>Configuration, versions, seeds, timings</h2>", _table(rows, 200)]
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts))


def _marker_sections(summary: pd.DataFrame, fig) -> list[tuple[str, list]]:
    """The report's marker sections: the summary table and the spread figures."""
    return [
        ("Marker genes: summary", [summary]),
        (
            "Model spread",
            [
                "Each point is a cell: the mean and standard deviation of the marker's denoised "
                "expression across members. Points above the dashed line vary by more than 10%.",
                *fig("model_spread"),
            ],
        ),
        (
            "Biological spread",
            [
                "One point per member: the marker's average over the group's cells and its "
                "standard deviation over cells. Members far apart disagree on the population.",
                *fig("biological_spread"),
            ],
        ),
        ("Across-member variation per cell", fig("member_histograms")),
    ]


def render_run_report(out: str | os.PathLike, stage: str | os.PathLike | None = None) -> Path:
    """(Re)build the ``report.html`` of ``ensemblevi run`` from the files of a run.

    Reads ``run.json`` (reading and settings), ``tables/*.csv`` and ``figures/*.png``, so
    later steps (``ensemblevi de``) add their sections by writing their files and calling
    this again. Each DE result ``tables/de_<name>.csv`` (with ``de_<name>.json``, its
    settings, and ``figures/de_<name>.png``) gets a section.

    Parameters
    ----------
    out
        The run directory.
    stage
        A stage of new files over ``out``: a file there is read instead of the one in
        ``out``, and the report is written there (to be committed with them).
    """
    out = Path(out)
    over = None if stage is None else Path(stage)

    def find(rel: str) -> Path:
        return over / rel if over is not None and (over / rel).exists() else out / rel

    record = json.loads(find("run.json").read_text())

    def fig(name: str) -> list[Path]:
        return [p] if (p := find(f"figures/{name}.png")).exists() else []

    summary = _csv(find("tables/marker_summary.csv"))
    genes = _csv(find("tables/gene_uncertainty.csv"), "gene")
    hyper = _csv(find("tables/hyperparameters.csv"))
    missing = _csv(find("tables/markers_not_usable.csv"))
    sections: list[tuple[str, list]] = []
    if summary is not None:  # a run without markers (or groups) has no marker figures
        sections += _marker_sections(summary, fig)
    sections += [
        (
            "Gene uncertainty",
            [*fig("gene_uncertainty"), *([genes.head(20)] if genes is not None else [])],
        ),
    ]
    if fig("novelty_umap"):
        sections.append(("Cell novelty", fig("novelty_umap")))
    groups = _csv(find("tables/group_novelty.csv"))
    if groups is not None:
        sections.append(
            (
                "Groups that stand out",
                [
                    "Per group, the share of its held-out cells that the per-cell novelty rule "
                    "flags (each against the other half's threshold), tested one-sided against a "
                    "share of one half (binomial, Benjamini-Hochberg across groups). Every group "
                    "here was in training; novelty proper is tested on new cells (`ensemblevi "
                    "map`).",
                    *fig("group_novelty"),
                    groups[
                        [
                            c
                            for c in (
                                "group",
                                "n_cells",
                                "n_tested",
                                "share_flagged",
                                "auroc",
                                "qval",
                                "is_novel",
                            )
                            if c in groups.columns
                        ]
                    ],
                ],
            )
        )
    if hyper is not None:
        sections.append(
            (
                "Tuned hyperparameters (Hyper-BatchEnsemble)",
                [
                    "Each member's interval of each tuned hyperparameter over training (band) and "
                    "its mean (line), the value the member uses for prediction.",
                    *fig("hyperparameters"),
                    hyper,
                ],
            )
        )
    reading = list(record.get("reading", []))
    roots = [out] if over is None else [out, over]
    names = sorted({p.stem for root in roots for p in (root / "tables").glob("de_*.json")})
    for name in names:
        settings = json.loads(find(f"tables/{name}.json").read_text())
        table = _csv(find(f"tables/{name}.csv"), "gene")
        if table is None:
            continue
        reading.append(de_reading(settings, table))
        null = null_reading(settings)
        if null is not None:
            reading.append(null)
        call = f"is_de_fdr_{settings['fdr_target']:g}"
        sections.append(
            (
                f"Differential expression: {settings['group1']} vs {settings['reference']}",
                [
                    replicates_text(settings),
                    *(
                        []
                        if settings.get("inference_unit") == "samples"
                        else [estimand_text(settings)]
                    ),
                    *([Alert(null, ok=not settings["null_check"]["any_warn"])] if null else []),
                    # the files by name: a group's name is never guessed back from a file name
                    f"Files: tables/{name}.csv" + "".join(f", figures/{p.name}" for p in fig(name)),
                    "Top 25 genes by p-value:"
                    if settings.get("inference_unit") == "samples"
                    else "Top 25 genes by proba_de:",
                    *fig(name),
                    table[[c for c in [*DE_COLUMNS, call] if c in table.columns]].head(25),
                ],
            )
        )
    clusters = _csv(find("tables/cluster_stability.csv"))
    if clusters is not None:
        sections.append(
            (
                "Do the clusters hold up?",
                [
                    "Each member was clustered on its own latent space (Leiden); the consensus "
                    "clusters come from how often members put two neighbouring cells together. A "
                    "cluster's stability is the Jaccard index of its best-matching cluster in each "
                    "member, averaged over members (Hennig 2007: below 0.6, not to be trusted); "
                    "mk is the overlap of the members' top-10 marker genes.",
                    *fig("cluster_stability"),
                    *fig("stability_umap"),
                    "One UMAP per member (aligned for display only), coloured by consensus "
                    "cluster:",
                    *fig("member_embeddings"),
                    clusters,
                ],
            )
        )
    if missing is not None:
        sections.append(("Markers not usable", [missing]))
    meta = record.get("meta", {"summary": ""})
    dest = (out if over is None else over) / "report.html"
    return write_report(dest, "ensemblevi run report", reading, sections, meta)
