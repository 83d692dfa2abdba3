"""``ensemblevi map``: new cells mapped onto a finished run's ensemble and tested for novelty.

The query is mapped with scArches (:meth:`EnsembleSCVI.load_query_data`: the reference's
weights, every member's, frozen except the new batches' columns), trained briefly, then
scored: per cell (:func:`ensemblevi.tl.cell_novelty`) and per group
(:func:`ensemblevi.tl.group_novelty`), both calibrated on the *reference's* held-out cells,
never on the query's own (which may be the unseen cells). The run directory is only read.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ensemblevi._files import staged_output, write_csv, write_json
from ensemblevi._interrupt import set_resume_hint
from ensemblevi._warnings import quiet_third_party
from ensemblevi.pipeline._de import check_run_dir, read_run_result
from ensemblevi.pipeline._readings import group_reading, threshold_text
from ensemblevi.pipeline._report import write_report

Log = Callable[[str], Any]
#: ``obs`` column of the query's clusters where it has no ``groupby`` column
CLUSTER_KEY = "ensemblevi_leiden"
#: the batch the query's cells get where it names none
QUERY_BATCH = "query"
#: least share of the reference's genes a query must have: the others are filled with zero
#: counts, and past half of them missing a cell's novelty measures the gene set, not the cell
MIN_SHARED_GENES = 0.5
#: fewest query cells: the query model holds some out, and groups need cells to be tested
MIN_QUERY_CELLS = 10


@dataclass
class MapResult:
    """A query mapped onto a run's ensemble.

    Parameters
    ----------
    adata
        The query (the reference's genes) with the scores in ``obs`` and ``uns``.
    cells
        ``cell_novelty``'s per-cell table.
    groups
        ``group_novelty``'s per-group table.
    groupby
        The ``obs`` column the groups came from (``ensemblevi_leiden`` where clustered).
    reading
        The report's sentences.
    """

    adata: AnnData
    cells: pd.DataFrame
    groups: pd.DataFrame
    groupby: str
    reading: list[str]


def prepare_query(
    query: AnnData, reference, batch_key: str | None = None, log: Log = print
) -> AnnData:
    """A copy of ``query`` set out as the reference was: its counts layer, batch, genes.

    A query holding fewer than half of the reference's genes (:data:`MIN_SHARED_GENES`)
    is refused with a ``ValueError`` naming how many it shares.

    Parameters
    ----------
    query
        The query's cells, raw counts in ``X``.
    reference
        The trained reference :class:`~ensemblevi.model.EnsembleSCVI`.
    batch_key
        ``obs`` column of the query's batches; ``None``: the reference's batch column where
        the query has it, else one new batch ``"query"``.
    log
        Where notes go.
    """
    from ensemblevi.model import EnsembleSCVI

    genes = reference.adata.var_names
    shared = int(genes.isin(query.var_names).sum())
    if shared < MIN_SHARED_GENES * len(genes):
        raise ValueError(
            f"The query has {shared:,} of the reference's {len(genes):,} genes "
            f"({100 * shared / len(genes):.0f}%); mapping needs at least "
            f"{100 * MIN_SHARED_GENES:.0f}%, as the missing ones are filled with zero counts "
            "and would make every cell look unlike the reference. Check that both use the "
            "same gene names (symbols vs Ensembl ids, upper/lower case; the reference's "
            f"begin {list(genes[:3])}, the query's {list(query.var_names[:3])}), or map onto a "
            "run trained on the query's genes."
        )
    setup = reference.adata_manager.registry["setup_args"]
    q = AnnData(X=query.X.copy(), obs=query.obs.copy(), var=query.var[[]].copy())
    if setup.get("layer") is not None:
        q.layers[setup["layer"]] = q.X.copy()
    ref_batch = setup.get("batch_key")
    if batch_key is not None and batch_key not in q.obs:
        raise ValueError(
            f"batch_key {batch_key!r} is not a column of the query's obs; name "
            "one, or None to map the query as one new batch."
        )
    if ref_batch is None:
        log(
            "the reference was trained without a batch column: the query is mapped with the "
            "reference's weights as they are (only the decoder's batch norms adapt)"
        )
    elif batch_key is not None:
        q.obs[ref_batch] = q.obs[batch_key].astype(str).to_numpy()
    elif ref_batch not in q.obs:
        q.obs[ref_batch] = QUERY_BATCH
        log(
            f"the query has no {ref_batch!r} column: its cells are mapped as one new batch "
            f"{QUERY_BATCH!r}"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        q = EnsembleSCVI.prepare_query_anndata(q, reference, inplace=False)
    for w in caught:
        log(f"warning: {w.message}")
    return q


def _groups(q: AnnData, groupby: str | None, seed: int) -> str:
    if groupby is not None:
        return groupby
    if "cell_type" in q.obs:
        return "cell_type"
    import scanpy as sc

    # clusters of the query on the ensemble's denoised-expression graph (tl.umap kept it)
    sc.tl.leiden(
        q,
        adjacency=q.obsp["ensemblevi_connectivities"],
        key_added=CLUSTER_KEY,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return CLUSTER_KEY


def map_reading(
    cells: dict, groups: pd.DataFrame, groupby: str, n_cells: int, fdr: float
) -> list[str]:
    """The map report's sentences on its cells and groups.

    Parameters
    ----------
    cells
        What ``cell_novelty`` stored (``uns[...]["cell_novelty"]``).
    groups
        ``group_novelty``'s table.
    groupby
        The groups' ``obs`` column.
    n_cells
        Query cells.
    fdr
        The groups' FDR level.
    """
    decides = cells.get("decides", "novelty_knn")
    fpr = cells.get(f"{decides}_fpr_heldout")
    text = (
        f"{cells['n_flagged']:,} of {n_cells:,} query cells "
        f"({100 * cells['n_flagged'] / max(n_cells, 1):.1f}%) are flagged as unlike the "
        f"reference's training data ({decides} above its "
        f"{100 * (1 - cells['alpha']):g}th percentile on {cells['calibrated_on']}"
    )
    if fpr is not None:
        text += (
            f"; on the reference's own held-out cells this rule flagged "
            f"{100 * fpr:.1f}% against a target of {100 * cells['alpha']:g}%, measured "
            f"on {cells.get('fpr_measured_on', 'halves of the calibration cells')}"
        )
    kind = cells.get("calibration_kind", "cells of the training samples")
    holds = cells.get("rate_holds_for", "new cells of the samples the model trained on")
    calibration = (
        f"Calibration: {kind}; the stated false-positive rate holds for {holds}."
        f"{threshold_text(cells)} "
        "A cell flag says this one cell lies farther from the reference's training "
        "cells, or is fitted worse by the model's decoders, than all but that share of "
        "the calibration cells; a group call says "
        "that most of a group's cells are flagged (a population the reference did "
        "not have), which holds even where single flags are noisy."
    )
    return [text + ").", calibration, *group_reading(groups, groupby, fdr)]


def _run_sample_key(run_dir: Path) -> str | None:
    """The ``--sample-key`` of the run in ``run_dir`` where it kept samples out, else None."""
    import json

    try:
        config = json.loads((run_dir / "run.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return None
    if config.get("sample_key") is None or config.get("holdout_samples") == 0:
        return None
    return str(config["sample_key"])


def run_map(
    run_dir: str | Path,
    query: str | Path,
    out: str | Path,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    groupby: str | None = None,
    epochs: int = 100,
    alpha: float = 0.05,
    fdr: float = 0.05,
    seed: int = 0,
    force: bool = False,
    log: Log = print,
    trust: bool = False,
    sample_key: str | None = None,
) -> MapResult:
    """Map a query file onto the ensemble of a finished run; write its novelty into ``out``.

    Writes ``results.h5ad`` (the query with ``obs[ensemblevi_novelty_*]``,
    ``ensemblevi_is_novel`` and ``uns["ensemblevi"]``), ``tables/cell_novelty.csv``,
    ``tables/group_novelty.csv``, ``figures/novelty_umap.png``,
    ``figures/group_novelty.png``, the query model (``model/``), ``map.json`` and
    ``report.html``, staged and committed at once; a previous map in ``out`` stays whole
    until then.

    Parameters
    ----------
    run_dir
        Directory of a finished ``ensemblevi run`` (only read).
    query
        ``.h5ad`` / 10x file of the new cells (raw counts; any genes: the reference's are
        taken, missing ones as zeros).
    out
        Output directory: new, empty, or an earlier ``ensemblevi map``'s (replaced only
        with ``force``).
    layer
        Layer of the query holding the counts (``None``: ``X``).
    batch_key
        ``obs`` column of the query's batches (see :func:`prepare_query`).
    groupby
        ``obs`` column of the groups tested; ``None``: ``cell_type`` where the query has
        it, else its cells are clustered (Leiden on the ensemble's denoised-expression
        graph, ``obs["ensemblevi_leiden"]``).
    epochs
        Query training epochs.
    alpha
        Target false-positive rate of the per-cell rule, also the rule the group test
        counts flags of (one alpha for both: at 1% the per-cell threshold sat above where
        an unseen type's cells fall, 0.6% of unseen B cells flagged, while the groups'
        5% rule flagged 94% of them; issue 35).
    fdr
        Benjamini-Hochberg level of the group test.
    seed
        Seed of the query training, the scores' draws and the clustering.
    force
        Replace an earlier map in ``out``.
    log
        Where progress notes go.
    trust
        Also read a run's model in scvi-tools' pickled format (an older ensemblevi's):
        loading it unpickles it, which runs any code the file carries.
    sample_key
        ``obs`` column of the *reference's* samples: where the run kept whole samples out of
        training, the thresholds are set on them (the rate of a new sample); otherwise the
        report says the rate holds for new cells of the training samples only. ``None``:
        the run's own ``--sample-key`` (``run.json``), if any.
    """
    from ensemblevi import tl
    from ensemblevi._seeding import seeded_globally
    from ensemblevi.data import read
    from ensemblevi.data._validate import check_size
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.tl._novelty_rule import MIN_VALIDATION_CELLS

    run_dir, out_path = Path(run_dir), Path(out)
    check_run_dir(run_dir)
    if not 0 < alpha < 1 or not 0 < fdr < 1:
        raise ValueError(f"alpha and fdr are rates in (0, 1), got {alpha} and {fdr}.")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if out_path.resolve() == run_dir.resolve():
        raise ValueError(
            f"--out {out_path} is the run directory; the map goes to a "
            "directory of its own (e.g. --out map_<sample>)."
        )
    raw = read(query, layer=layer)  # validated raw counts: the error names the fix
    check_size(
        raw,
        min_cells=MIN_QUERY_CELLS,
        what="the query",
        why="the query model holds some of them out to check its training, and the "
        "groups are tested on them",
    )
    if layer is not None:
        raw.X = raw.layers[layer]
    for option, column in (("--groupby", groupby), ("--batch-key", batch_key)):
        if column is not None and column not in raw.obs:
            raise ValueError(
                f"{option} {column!r} is not a column of the query's obs "
                f"({', '.join(map(str, raw.obs.columns[:8])) or 'none'}); name "
                "one, or leave the option out."
            )
    if sample_key is None:  # the run's samples, where it kept some out of training
        sample_key = _run_sample_key(run_dir)
        if sample_key is not None:
            log(f"calibrating on the samples the run kept out (its --sample-key {sample_key!r})")
    if sample_key is not None:  # refused before anything is written
        import anndata

        backed = anndata.read_h5ad(run_dir / "results.h5ad", backed="r")
        columns = list(backed.obs.columns)
        backed.file.close()
        if sample_key not in columns:
            raise ValueError(
                f"--sample-key {sample_key!r} is not a column of the run's cells "
                f"(results.h5ad obs: {', '.join(map(str, columns[:8]))}); name the "
                "reference's column of samples."
            )
    t0 = time.perf_counter()
    with staged_output(out_path, "map", replace=force) as dest:
        set_resume_hint(
            f"Nothing was lost: {run_dir} and {out_path} are unchanged; rerun the command."
        )
        ref_adata = read_run_result(run_dir)
        with quiet_third_party():
            reference = EnsembleSCVI.load(run_dir / "model", adata=ref_adata, trust=trust)
        val = getattr(reference, "validation_indices", None)
        n_val = 0 if val is None else len(val)
        if n_val < MIN_VALIDATION_CELLS:
            raise ValueError(
                f"The run's model held out {n_val} cells; calibrating the rule "
                f"needs at least {MIN_VALIDATION_CELLS} (a run on more cells)."
            )
        q = prepare_query(raw, reference, batch_key, log)
        with seeded_globally(seed):
            qmodel = EnsembleSCVI.load_query_data(q, reference)
        log(
            f"mapping {q.n_obs:,} query cells onto the run's {reference.n_members}-member "
            f"{reference.ensemble} ensemble: {epochs} epochs"
        )
        qmodel.train(max_epochs=epochs, seed=seed)
        train_s = time.perf_counter() - t0
        cells = tl.cell_novelty(
            qmodel, q, alpha=alpha, seed=seed, reference_model=reference, sample_key=sample_key
        )
        tl.expression_umap(qmodel, q, seed=seed, graph_key="ensemblevi_connectivities")
        key = _groups(q, groupby, seed)
        groups = tl.group_novelty(
            qmodel,
            q,
            groupby=key,
            fdr=fdr,
            seed=seed,
            reference_model=reference,
            cell_alpha=alpha,
            sample_key=sample_key,
        )
        info = q.uns["ensemblevi"]["cell_novelty"]
        reading = map_reading(info, groups, key, q.n_obs, fdr)
        record = {
            "run_dir": str(run_dir),
            "query": str(query),
            "layer": layer,
            "batch_key": batch_key,
            "groupby": key,
            "epochs": epochs,
            "alpha": alpha,
            "fdr": fdr,
            "seed": seed,
            "n_query_cells": q.n_obs,
            "sample_key": sample_key,
            "calibration_kind": info["calibration_kind"],
            "reference": f"{reference.ensemble} x {reference.n_members}",
            "time.train (s)": round(train_s, 1),
            "time.total (s)": round(time.perf_counter() - t0, 1),
        }
        _write(dest.stage, q, qmodel, cells, groups, key, reading, record)
    set_resume_hint(None)
    return MapResult(q, cells, groups, key, reading)


def _write(
    stage: Path,
    q: AnnData,
    qmodel,
    cells: pd.DataFrame,
    groups: pd.DataFrame,
    key: str,
    reading: list[str],
    record: dict,
) -> None:
    import matplotlib.pyplot as plt

    from ensemblevi import pl
    from ensemblevi.data._io import write_h5ad_atomic
    from ensemblevi.pl._utils import save_figure

    for name, draw in {
        "novelty_umap": lambda: pl.novelty_umap(q, color=key, return_fig=True),
        "group_novelty": lambda: pl.group_novelty(q, return_fig=True),
    }.items():
        fig = draw()
        save_figure(fig, stage / "figures" / name)
        plt.close(fig)
    write_csv(cells, stage / "tables" / "cell_novelty.csv")
    write_csv(groups, stage / "tables" / "group_novelty.csv")
    # a query model is saved with its query's AnnData apart: results.h5ad holds it
    qmodel.save(str(stage / "model"), save_anndata=False, overwrite=True)
    write_h5ad_atomic(q, stage / "results.h5ad", overwrite=True)
    write_json(stage / "map.json", {**record, "reading": reading})
    shown = groups.reset_index()[
        ["group", "n_cells", "n_tested", "share_flagged", "auroc", "qval", "is_novel"]
    ]
    write_report(
        stage / "report.html",
        "ensemblevi map report",
        reading,
        [
            (
                "Novel populations",
                [
                    f"Per {key} group, the share of its cells the per-cell rule flags (at "
                    f"{record['alpha']:.0%}), "
                    "tested one-sided against a share of one half (binomial, Benjamini-Hochberg "
                    "across groups): a novel group is one most of whose cells lie outside what the "
                    "model trained on. AUROC: its novelty_combined against the reference's "
                    "held-out cells.",
                    stage / "figures" / "group_novelty.png",
                    shown,
                ],
            ),
            (
                "Novel cells",
                [
                    stage / "figures" / "novelty_umap.png",
                    f"{int(np.sum(cells['is_novel'])):,} cells flagged.",
                ],
            ),
        ],
        {
            "summary": f"{record['n_query_cells']:,} query cells mapped onto "
            f"{record['run_dir']} ({record['reference']})",
            **{k: v for k, v in record.items() if k != "reading"},
        },
    )
