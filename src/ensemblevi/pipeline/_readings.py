"""What a run's report and console say about each result: one sentence per reading, shared by
the CLI summary and the HTML report.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ensemblevi._names import read_table

DE_KEY = "ensemblevi_de_"  # uns key prefix of `ensemblevi de` results in a run's AnnData


DE_COLUMNS = [
    "gene",
    "proba_de",
    "lfc_median",
    "lfc_q2.5",
    "lfc_q97.5",
    "lfc_counts",
    "model_proba_de",
    "model_lfc_median",
    "lfc_member_std",
    "member_calls",
    "call_flips",
    "expected_fdr",
    "lfc",
    "lfc_se",
    "t",
    "pval",
    "padj",
]


def replicates_text(settings: dict) -> str:
    """What the DE's replicates were: samples per side, or cells (and what that means).

    Parameters
    ----------
    settings
        The result's settings (``tables/de_<name>.json``).
    """
    reps = settings.get("replicates")
    if settings.get("inference_unit") == "samples" and isinstance(reps, dict):
        text = (
            f"Replicates: the samples of obs[{settings.get('sample_key')!r}], "
            f"{reps['n_samples1']} vs {reps['n_samples2']} ({reps['design']} design); "
            f"{settings['statement']}."
        )
        if not reps.get("calibrated", True):
            text += (
                " Fewer than 3 samples per side: the FDR was not shown to hold here "
                "(docs/de_replicates.md)."
            )
        return text
    text = f"Replicates: none; {settings.get('statement', 'cells are the replicates')}."
    if settings.get("unused_sample_columns"):
        text += (
            " The data has sample-like column(s) "
            f"{', '.join(map(repr, settings['unused_sample_columns']))}: rerun with "
            "--sample-key to compare samples."
        )
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
    rule = (
        f"proba_de = P(|LFC| >= {settings['delta']:g}); genes called by the posterior "
        f"expected FDR rule at {settings['fdr_target']:g}."
    )
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
        rule = (
            "PyDESeq2's Benjamini-Hochberg"
            if settings.get("method") == "pseudobulk"
            else "Storey-adjusted Benjamini-Hochberg"
        )
        return (
            f"Differential expression {settings['group1']} vs {settings['reference']}, "
            f"comparing samples ({reps.get('n_samples1')} vs {reps.get('n_samples2')}, "
            f"{reps.get('design')}): {int(calls.sum())} of {len(table):,} genes called at a "
            f"{rule} FDR of {100 * settings['fdr_target']:g}%."
        )
    flips = table["call_flips"].astype(bool)
    unit = (
        " These calls treat cells as replicates: they describe these cells, not the "
        "population they came from."
        if settings.get("inference_unit") == "cells"
        else ""
    )
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
        f"(CV {genes.iloc[0]['cv_between']:.2f}); the median gene has CV "
        f"{genes['cv_between'].median():.2f}."
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
        on = novelty.get(
            "fpr_measured_on", "halves of the calibration cells, each against the other's threshold"
        )
        text += (
            f" Measured on {on}: {100 * fpr:.1f}% of the calibration cells were flagged, "
            f"against a target of {100 * novelty['alpha']:g}%."
        )
    text += " " + calibration_text(novelty)
    return text + (
        " To find the cells and populations the model has not seen, map new "
        "cells onto it: `ensemblevi map --model <this run> --query new.h5ad`."
    )


def calibration_text(novelty: dict) -> str:
    """Which calibration the novelty thresholds have, and for which new cells the rate holds.

    Parameters
    ----------
    novelty
        What :func:`ensemblevi.tl.cell_novelty` stored (``calibration_kind``,
        ``rate_holds_for``, ``calibration_sample_names``, ``sample_key``).
    """
    kind = novelty.get("calibration_kind", "cells of the training samples")
    holds = novelty.get(
        "rate_holds_for",
        "new cells of the samples the model trained on (samples unknown: pass --sample-key "
        "to calibrate on unseen ones)",
    )
    names = novelty.get("calibration_sample_names")
    if kind == "unseen samples" and names:
        shown = ", ".join(map(str, list(names)[:6])) + (" ..." if len(names) > 6 else "")
        where = (
            f"calibrated on unseen samples: the samples {shown} of "
            f"obs[{novelty.get('sample_key')!r}] were kept out of training and set the "
            "thresholds"
        )
    else:
        where = f"calibrated on {kind}"
    return f"The thresholds are {where}; the stated rate holds for {holds}." + threshold_text(
        novelty
    )


def threshold_text(info: dict) -> str:
    """How a threshold was set from several calibration samples (`` ""`` when pooled).

    Parameters
    ----------
    info
        What a rule stored (``threshold_rule``: :func:`ensemblevi.tl._thresholds.threshold_rule`).
    """
    from ensemblevi.tl._thresholds import POOLED_RULE

    rule = info.get("threshold_rule", POOLED_RULE)
    return "" if rule == POOLED_RULE else f" Each threshold is {rule}."


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
        where = (
            "of the model's own cells stands out from the others"
            if own
            else ("of the query is unlike the reference")
        )
        return [f"No {groupby} group {where} at FDR {100 * fdr:g}% ({tested} groups tested)."]
    lines = []
    for name, row in novel.iterrows():
        q = "q < 1e-10" if row["qval"] < 1e-10 else f"q = {row['qval']:.2g}"
        what = (
            "has most of its held-out cells flagged although it was in training (the "
            "model fits it poorly: too few cells, or a mix of kinds)"
            if own
            else "is unlike anything the model trained on"
        )
        share = (
            f"{100 * row['share_flagged']:.0f}% of its cells flagged, "
            if "share_flagged" in row and pd.notna(row["share_flagged"])
            else ""
        )
        lines.append(
            f"{groupby} {name} ({int(row['n_cells']):,} cells) {what}: {share}"
            f"AUROC {row['auroc']:.2f}, {q}."
        )
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
    text = (
        f"Each of the {n_members} members is a training run: clustered on its own (Leiden, "
        f"resolution {clusters['params']['resolution']:g}), they agree with mean ARI "
        f"{clusters['mean_ari']:.2f}, and a cell keeps on average "
        f"{100 * neighbourhood['mean']:.0f}% of its {neighbourhood['n_neighbors'] - 1} "
        f"nearest neighbours from one member to another (Jaccard). "
    )
    if bad.empty:
        text += (
            f"All {len(table)} consensus clusters are reproducible (best-match Jaccard "
            f">= {threshold:g} on average over members)."
        )
    else:
        names = ", ".join(
            f"{c} ({int(n)} cells, {v:.2f})"
            for c, n, v in zip(bad["cluster"], bad["n_cells"], bad["stability"], strict=True)
        )
        text += (
            f"{len(bad)} of {len(table)} consensus clusters are not reproducible "
            f"(best-match Jaccard below {threshold:g}): {names}; do not report them "
            "as populations without other evidence."
        )
    return [text]
