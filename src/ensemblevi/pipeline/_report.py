"""The run report: one self-contained HTML file (figures embedded, no external assets)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pandas as pd

from ensemblevi._files import write_text
from ensemblevi._names import html_text, read_table

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


DE_KEY = "ensemblevi_de_"  # uns key prefix of `ensemblevi de` results in a run's AnnData
DE_COLUMNS = ["gene", "proba_de", "lfc_median", "lfc_q2.5", "lfc_q97.5", "lfc_counts",
              "model_proba_de", "model_lfc_median", "lfc_member_std", "member_calls",
              "call_flips", "expected_fdr", "lfc", "lfc_se", "t", "pval", "padj"]  # fmt: skip


def replicates_text(settings: dict) -> str:
    """What the DE's replicates were: samples per side, or cells (and what that means).

    Parameters
    ----------
    settings
        The result's settings (``tables/de_<name>.json``).
    """
    reps = settings.get("replicates")
    if settings.get("inference_unit") == "samples" and isinstance(reps, dict):
        text = (f"Replicates: the samples of obs[{settings.get('sample_key')!r}], "
                f"{reps['n_samples1']} vs {reps['n_samples2']} ({reps['design']} design); "
                f"{settings['statement']}.")  # fmt: skip
        if not reps.get("calibrated", True):
            text += (" Fewer than 3 samples per side: the FDR was not shown to hold here "
                     "(docs/de_replicates.md).")  # fmt: skip
        return text
    text = f"Replicates: none; {settings.get('statement', 'cells are the replicates')}."
    if settings.get("unused_sample_columns"):
        text += (" The data has sample-like column(s) "
                 f"{', '.join(map(repr, settings['unused_sample_columns']))}: rerun with "
                 "--sample-key to compare samples.")  # fmt: skip
    return text


def _csv(path: Path, index_name: str | None = None) -> pd.DataFrame | None:
    if not path.exists():
        return None
    # our own tables: a group or gene called "NA" stays "NA", not NaN
    if index_name is None:
        return read_table(path)
    frame = read_table(path, index_col=0)
    frame.index.name = frame.index.name or index_name
    return frame.reset_index()


def estimand_text(settings: dict) -> str:
    """How the DE section's numbers were made, for the report.

    Parameters
    ----------
    settings
        The result's settings (``tables/de_<name>.json``).
    """
    cells = f"{settings['n_cells1']:,} and {settings['n_cells2']:,} cells"
    rule = (f"proba_de = P(|LFC| >= {settings['delta']:g}); genes called by the posterior "
            f"expected FDR rule at {settings['fdr_target']:g}.")  # fmt: skip
    if settings["estimand"] == "counts":
        return (
            f"Estimand counts: the log2 ratio of the groups' mean normalised counts ({cells}), "
            "its posterior by empirical Bayes within strata of the ensemble's probability "
            f"of a change (all {settings['n_members']} members, {settings['n_samples']} "
            f"draws each); the model's own answer is model_proba_de / model_lfc_median, the "
            f"counts' LFC before shrinkage lfc_counts. {rule} member_calls: how many members' "
            "strata give the call; call_flips: some do and some do not."
        )
    return (
        f"Estimand {settings['estimand']}: per posterior draw, the median over each group's "
        f"cells of log2 normalised expression ({cells}); all {settings['n_members']} "
        f"members' draws pooled ({settings['n_samples']} each). {rule} member_calls: how "
        "many members call the gene on their own; call_flips: some do and some do not."
    )


def de_reading(settings: dict, table: pd.DataFrame) -> str:
    """One sentence on a DE result for the report's reading.

    Parameters
    ----------
    settings
        The result's settings (``tables/de_<name>.json``).
    table
        The result's table.
    """
    calls = table[f"is_de_fdr_{settings['fdr_target']:g}"].astype(bool)
    if settings.get("inference_unit") == "samples":
        reps = settings.get("replicates", {})
        return (
            f"Differential expression {settings['group1']} vs {settings['reference']}, "
            f"comparing samples ({reps.get('n_samples1')} vs {reps.get('n_samples2')}, "
            f"{reps.get('design')}): {int(calls.sum())} of {len(table):,} genes called at a "
            f"Benjamini-Hochberg FDR of {100 * settings['fdr_target']:g}%."
        )
    flips = table["call_flips"].astype(bool)
    unit = (" These calls treat cells as replicates: they describe these cells, not the "
            "population they came from." if settings.get("inference_unit") == "cells" else "")
    return (
        f"Differential expression {settings['group1']} vs {settings['reference']}: "
        f"{int(calls.sum())} of {len(table):,} genes change by at least "
        f"{settings['delta']:g} (log2) at a posterior expected FDR of "
        f"{100 * settings['fdr_target']:g}%; for {int(flips.sum())} genes the members "
        "disagree on the call (some call it, others not): treat those as unsettled." + unit
    )


def null_reading(settings: dict) -> str | None:
    """One sentence on a DE result's null check (``None`` when it was not run).

    Parameters
    ----------
    settings
        The result's settings; ``settings["null_check"]`` is the summary of
        :func:`ensemblevi.model.base._de_null.run_null_check`.
    """
    null = settings.get("null_check")
    if not null:
        return None
    n_called, frac = null["n_called"][0], null["fraction_called"][0]
    reps = ", ".join(f"{n} ({100 * f:.2g}%)" for n, f in zip(n_called, frac, strict=True))
    verdict = (
        "WARNING: the test calls genes where nothing changes, so its FDR does not hold on "
        "these data; read the calls above as holding more false ones than the target says."
        if null["any_warn"]
        else "the test passes the check."
    )
    return (
        f"Null check: the same test on {null['n_null']} random halves of "
        f"{settings['group1']} ({null['n_cells_half1'][0]:,} vs "
        f"{null['n_cells_half2'][0]:,} cells, no true change, so every call is false) "
        f"called {reps} of {null['n_genes']:,} genes, mean {null['mean_called'][0]:.3g} "
        f"({100 * null['mean_fraction_called'][0]:.2g}%), at the "
        f"{100 * null['fdr_target']:g}% target ({null['rule']}): {verdict}"
    )


def run_reading(
    summary: pd.DataFrame | None,
    genes: pd.DataFrame,
    n_members: int,
    cv_threshold: float | None,
    novelty: dict | None = None,
    n_cells: int | None = None,
) -> list[str]:
    """The plain-language sentences ("What the results say") of a run report.

    Parameters
    ----------
    summary
        ``expression_spread``'s per-marker summary (``gene``, ``group``, ``member_cv``,
        ``frac_uncertain_cells``, ``frac_between``); ``None``: the run had no markers.
    genes
        ``gene_uncertainty``'s table, most uncertain gene first (``uncertainty``).
    n_members
        Members of the ensemble.
    cv_threshold
        The CV above which a cell counts as uncertain.
    novelty
        ``uns["ensemblevi"]["cell_novelty"]`` (``n_flagged``, ``alpha``, ``calibrated_on``,
        ``<score>_fpr_heldout``, ``n_tested``), ``{"skipped": why}``, or ``None`` when
        novelty was not computed.
    n_cells
        Cells analysed (needed with ``novelty``).
    """
    reading = []
    if n_members < 2:
        # one model has no between-member spread: a CV of 0 is by construction, not a finding
        reading.append(
            "This model has a single member, so there is no between-member spread: the "
            "member CVs are 0 by construction and say nothing about how far retraining "
            "would move the values. Train an ensemble (e.g. --members 4) to measure it."
        )
    elif summary is not None and len(summary):
        top = summary.sort_values("member_cv", ascending=False).iloc[0]
        share = summary["frac_between"].mean()
        reading += [
            f"Across the {n_members} members, the marker whose denoised level the members "
            f"agree on least is {top['gene']} in {top['group']}: a typical cell's value "
            f"varies by {100 * top['member_cv']:.0f}% between members (coefficient of "
            f"variation), and {100 * top['frac_uncertain_cells']:.0f}% of its cells exceed "
            f"the CV threshold of {cv_threshold}.",
            "For the markers, between-member disagreement is "
            f"{100 * share:.0f}% of the model's uncertainty on average (the rest is the "
            "latent posterior within a member): retraining would move these values "
            + ("more" if share > 0.5 else "less")
            + " than resampling one model shows.",
        ]
    reading.append(
        f"The least certain gene overall is {genes.index[0]} "
        f"(CV {genes.iloc[0]['uncertainty']:.2f}); the median gene has CV "
        f"{genes['uncertainty'].median():.2f}."
    )
    if novelty is not None and "skipped" in novelty:
        reading.append(f"Novelty was not tested: {novelty['skipped']}.")
    elif novelty is not None:
        reading.append(novelty_text(novelty, n_cells))
    return reading


def novelty_text(novelty: dict, n_cells: int) -> str:
    """The report's sentence on the novelty rule, from ``uns[...]["cell_novelty"]``.

    Parameters
    ----------
    novelty
        What :func:`ensemblevi.tl.cell_novelty` stored.
    n_cells
        Cells scored.
    """
    decides = novelty.get("decides", "novelty_knn")
    fpr = novelty.get(f"{decides}_fpr_heldout")
    tested = novelty.get("n_tested", n_cells)
    text = (
        f"Novelty is tested only on cells the model did not train on ({tested:,} of "
        f"{n_cells:,} here): the cells it trained on are never called novel, because every "
        f"score is biased on them. {novelty['n_flagged']:,} of the tested cells are flagged "
        f"as unlike the training data ({decides} above its "
        f"{100 * (1 - novelty['alpha']):.0f}th percentile on {novelty['calibrated_on']})."
    )
    if fpr is not None:
        text += (f" Each held-out cell was tested against a threshold from the other half: "
                 f"{100 * fpr:.1f}% of them were flagged, against a target of "
                 f"{100 * novelty['alpha']:g}%.")  # fmt: skip
    return text + (" To find the cells and populations the model has not seen, map new "
                   "cells onto it: `ensemblevi map --model <this run> --query new.h5ad`.")


def group_reading(groups: pd.DataFrame, groupby: str, fdr: float, own: bool = False) -> list[str]:
    """The report's sentences on ``group_novelty``'s table: each novel group, or none.

    Parameters
    ----------
    groups
        ``group_novelty``'s table (index: the groups).
    groupby
        The groups' ``obs`` column.
    fdr
        The table's Benjamini-Hochberg level.
    own
        The groups are of the model's own cells (each group's held-out cells against the
        other groups'): every group was seen in training, so a call is a group the model
        fits worse than the rest, not an unseen one.
    """
    novel = groups[groups["is_novel"].astype(bool)]
    tested = int(pd.to_numeric(groups["qval"], errors="coerce").notna().sum())
    if novel.empty:
        where = "of the model's own cells stands out from the others" if own else (
            "of the query is unlike the reference")
        return [f"No {groupby} group {where} at FDR {100 * fdr:g}% ({tested} groups tested)."]
    lines = []
    for name, row in novel.iterrows():
        q = "q < 1e-10" if row["qval"] < 1e-10 else f"q = {row['qval']:.2g}"
        what = ("has most of its held-out cells flagged although it was in training (the "
                "model fits it poorly: too few cells, or a mix of kinds)" if own else
                "is unlike anything the model trained on")  # fmt: skip
        share = (f"{100 * row['share_flagged']:.0f}% of its cells flagged, "
                 if "share_flagged" in row and pd.notna(row["share_flagged"]) else "")
        lines.append(f"{groupby} {name} ({int(row['n_cells']):,} cells) {what}: {share}"
                     f"AUROC {row['auroc']:.2f}, {q}.")  # fmt: skip
    return lines


def stability_reading(clusters: dict, neighbourhood: dict) -> list[str]:
    """The report's sentences on the cluster and neighbourhood stability.

    Parameters
    ----------
    clusters
        ``uns["ensemblevi"]["cluster_stability"]``.
    neighbourhood
        ``uns["ensemblevi"]["neighbourhood_stability"]``.
    """
    table = pd.DataFrame(clusters["table"])
    n_members = len(clusters["ari"])
    bad = table[~table["reproducible"].astype(bool)]
    threshold = clusters["params"]["threshold"]
    text = (f"Each of the {n_members} members is a training run: clustered on its own (Leiden, "
            f"resolution {clusters['params']['resolution']:g}), they agree with mean ARI "
            f"{clusters['mean_ari']:.2f}, and a cell keeps on average "
            f"{100 * neighbourhood['mean']:.0f}% of its {neighbourhood['n_neighbors'] - 1} "
            f"nearest neighbours from one member to another (Jaccard). ")
    if bad.empty:
        text += (f"All {len(table)} consensus clusters are reproducible (best-match Jaccard "
                 f">= {threshold:g} on average over members).")
    else:
        names = ", ".join(f"{c} ({int(n)} cells, {v:.2f})" for c, n, v in
                          zip(bad["cluster"], bad["n_cells"], bad["stability"], strict=True))
        text += (f"{len(bad)} of {len(table)} consensus clusters are not reproducible "
                 f"(best-match Jaccard below {threshold:g}): {names}; do not report them "
                 "as populations without other evidence.")
    return [text]


def _marker_sections(summary: pd.DataFrame, fig) -> list[tuple[str, list]]:
    """The report's marker sections: the summary table and the spread figures."""
    return [
        ("Marker genes: summary", [summary]),
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
    ]  # fmt: skip


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
        ("Gene uncertainty", [*fig("gene_uncertainty"),
                              *([genes.head(20)] if genes is not None else [])]),
    ]  # fmt: skip
    if fig("novelty_umap"):
        sections.append(("Cell novelty", fig("novelty_umap")))
    groups = _csv(find("tables/group_novelty.csv"))
    if groups is not None:
        sections.append(("Groups that stand out", [
            "Per group, the share of its held-out cells that the per-cell novelty rule "
            "flags (each against the other half's threshold), tested one-sided against a "
            "share of one half (binomial, Benjamini-Hochberg across groups). Every group "
            "here was in training; novelty proper is tested on new cells (`ensemblevi "
            "map`).",
            *fig("group_novelty"),
            groups[[c for c in ("group", "n_cells", "n_tested", "share_flagged", "auroc", "qval",
                                  "is_novel")
                    if c in groups.columns]],
        ]))  # fmt: skip
    if hyper is not None:
        sections.append(("Tuned hyperparameters (Hyper-BatchEnsemble)", [
            "Each member's interval of each tuned hyperparameter over training (band) and "
            "its mean (line), the value the member uses for prediction.",
            *fig("hyperparameters"),
            hyper,
        ]))  # fmt: skip
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
        sections.append((f"Differential expression: {settings['group1']} vs "
                         f"{settings['reference']}", [
            replicates_text(settings),
            *([] if settings.get("inference_unit") == "samples" else [estimand_text(settings)]),
            *([Alert(null, ok=not settings["null_check"]["any_warn"])] if null else []),
            # the files by name: a group's name is never guessed back from a file name
            f"Files: tables/{name}.csv" + "".join(f", figures/{p.name}" for p in fig(name)),
            "Top 25 genes by p-value:" if settings.get("inference_unit") == "samples"
            else "Top 25 genes by proba_de:",
            *fig(name),
            table[[c for c in [*DE_COLUMNS, call] if c in table.columns]].head(25),
        ]))  # fmt: skip
    clusters = _csv(find("tables/cluster_stability.csv"))
    if clusters is not None:
        sections.append(("Do the clusters hold up?", [
            "Each member was clustered on its own latent space (Leiden); the consensus "
            "clusters come from how often members put two neighbouring cells together. A "
            "cluster's stability is the Jaccard index of its best-matching cluster in each "
            "member, averaged over members (Hennig 2007: below 0.6, not to be trusted); "
            "mk is the overlap of the members' top-10 marker genes.",
            *fig("cluster_stability"), *fig("stability_umap"),
            "One UMAP per member (aligned for display only), coloured by consensus cluster:",
            *fig("member_embeddings"),
            clusters,
        ]))  # fmt: skip
    if missing is not None:
        sections.append(("Markers not usable", [missing]))
    meta = record.get("meta", {"summary": ""})
    dest = (out if over is None else over) / "report.html"
    return write_report(dest, "ensemblevi run report", reading, sections, meta)
