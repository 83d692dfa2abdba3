"""Stage 1 of a run: load, check, find the markers and the batch column, select genes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from ensemblevi.pipeline._config import RunConfig

Log = Callable[[Any], None]


@dataclass
class Prepared:
    """The data of a run, ready for training.

    Parameters
    ----------
    adata
        Genes selected; counts in ``layer``.
    layer
        Layer of the counts (``None``: ``X``).
    batch_key
        The batch column used (the option, or ``"batch"`` where detected).
    title
        Where the data came from, in words.
    markers
        The markers found in the data, per group.
    missing
        Markers (or groups) not usable, and why (empty when all are).
    labels_key
        The groups' ``obs`` column used (``None``: the run has no groups).
    notes
        What the run did differently from what was asked, and why, for the report.
    """

    adata: AnnData
    layer: str | None
    batch_key: str | None
    title: str
    markers: dict[str, list[str]] = field(default_factory=dict)
    missing: pd.DataFrame = field(default_factory=pd.DataFrame)
    labels_key: str | None = None
    notes: list[str] = field(default_factory=list)


def load_data(config: RunConfig) -> tuple[AnnData, str | None, str]:
    """``(adata, layer, title)`` for ``config.data``: synthetic, heart or a file.

    Parameters
    ----------
    config
        The run's settings (``data``, ``preset``, ``n_cells``, ``seed``, ``layer``,
        ``heart_path``).
    """
    from ensemblevi.data import heart_cell_atlas, read, synthetic

    if config.data == "synthetic":
        adata = synthetic(preset=config.preset, seed=config.seed, n_cells=config.n_cells)
        title = f"synthetic preset {config.preset!r}, {config.n_cells:,} cells, seed {config.seed}"
        return adata, "counts", title
    if config.data == "heart":
        adata = heart_cell_atlas(save_path=config.heart_path)
        return adata, config.layer, "heart cell atlas subsample"
    return read(config.data, layer=config.layer), config.layer, str(config.data)


#: the labels column looked for when none is named; data without it runs without groups
DEFAULT_LABELS_KEY = "cell_type"
#: fewest genes a run trains on: no fewer than the latent dimensions (scVI's 10)
MIN_GENES = 10
#: fewest cells: the training/validation split and the neighbour graphs need some
MIN_CELLS = 20


def _no_markers(config: RunConfig) -> bool:
    return config.markers is None or str(config.markers).lower() == "none"


def _marker_set(config: RunConfig) -> dict[str, list[str]]:
    from ensemblevi.tl._markers import load_markers, parse_marker_options

    if _no_markers(config) and not config.marker:
        return {}
    named = "heart" if config.markers == "auto" else config.markers
    marker_set = {} if _no_markers(config) else load_markers(named)
    for group, genes in parse_marker_options(list(config.marker)).items():
        marker_set.setdefault(group, []).extend(genes)
    return marker_set


def _labels_key(adata: AnnData, labels_key: str | None, notes: list[str]) -> str | None:
    """The groups' column the run uses: ``None`` where the default one is absent."""
    if labels_key == DEFAULT_LABELS_KEY and labels_key not in adata.obs:
        notes.append(
            f"The data has no obs[{labels_key!r}] column, so the run has no cell "
            "groups: the marker and group sections are skipped, and the clusters "
            "are the consensus Leiden clusters. Pass --labels-key COLUMN to use "
            "groups."
        )
        return None
    return labels_key


def _found_markers(
    config: RunConfig,
    marker_set: dict,
    adata: AnnData,
    labels_key: str | None,
    layer: str | None,
    notes: list[str],
    log: Log,
):
    """The markers of the run found in the data, and the table of those that are not."""
    from ensemblevi.tl._markers import check_markers, data_markers

    if not marker_set and not (config.markers == "auto" and labels_key is not None):
        if labels_key is not None:  # --markers none
            notes.append(
                "No marker genes were asked for (--markers none): the marker section is skipped."
            )
        return {}, pd.DataFrame()
    if labels_key is None:  # markers are per group: without groups there is nothing to read
        return {}, pd.DataFrame()
    groups = adata.obs[labels_key].astype(str).unique()
    found, missing = check_markers(marker_set, adata.var_names, groups)
    if not found and config.markers == "auto" and not config.marker:
        found = data_markers(adata, labels_key, layer=layer)
        notes.append(
            f"No marker set was given and the heart atlas' markers do not fit the "
            f"data (their genes or groups are absent), so each {labels_key} group's "
            "top genes in the data (highest mean log-normalised expression against "
            "the other cells) are its markers here; pass --markers FILE to choose "
            "them, or --markers none to skip the section."
        )
        return found, pd.DataFrame()
    if len(missing):
        log("markers not usable:\n" + missing.to_string(index=False))
    if not found:
        raise ValueError(
            "None of the marker genes are in the data; see the table above. Pass "
            "the markers of these data (--markers FILE, --marker TYPE=GENE,GENE), "
            "or --markers none."
        )
    return found, missing


def _check_obs(adata: AnnData, labels_key: str | None, batch_key: str | None) -> None:
    # every column the run will use is checked now: after training is too late
    columns = list(map(str, adata.obs.columns))
    for option, key in (("--labels-key", labels_key), ("--batch-key", batch_key)):
        if key is not None and key not in adata.obs:
            raise ValueError(
                f"{option} {key!r} is not an obs column; the data has: "
                f"{columns or 'no obs columns'}."
            )
    if labels_key is not None:
        n_nan = int(adata.obs[labels_key].isna().sum())
        if n_nan:
            # a NaN label would otherwise become a group called 'nan'
            raise ValueError(
                f"obs[{labels_key!r}] has no label for {n_nan:,} of {adata.n_obs:,} cells "
                "(NaN). Label them (e.g. adata.obs[key] = adata.obs[key].astype(object)"
                ".fillna('unlabelled')), drop them (adata[adata.obs[key].notna()]) and save "
                "the file again, or choose another --labels-key."
            )
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()
        raise ValueError(
            f"{len(dup):,} cell names occur more than once (e.g. {list(dup[:3])}); per-cell "
            "results would be ambiguous. Make them unique (adata.obs_names_make_unique()) "
            "and save the file again."
        )


def prepare_data(
    config: RunConfig,
    log: Log = print,
    on_loaded: Callable[[AnnData, str | None, str], None] | None = None,
) -> Prepared:
    """Load the data, check every column and marker the run uses, and select genes.

    Everything that could stop the run later (a missing or NaN-holding column, duplicate
    cell names, a marker file that does not parse, no marker in the data) raises a
    ``ValueError`` here, before any training.

    Parameters
    ----------
    config
        The run's settings (validated here too).
    log
        Where progress lines go.
    on_loaded
        Called with ``(adata, layer, title)`` once the data is read, before genes are
        selected (the CLI prints its summary table there).
    """
    from ensemblevi.data import preprocess
    from ensemblevi.data._validate import check_size

    config.validate()
    marker_set = _marker_set(config)  # a bad marker file fails before the data is read
    adata, layer, title = load_data(config)
    if on_loaded is not None:
        on_loaded(adata, layer, title)
    batch_key = config.batch_key
    if batch_key is None and "batch" in adata.obs and adata.obs["batch"].nunique() > 1:
        batch_key = "batch"
    notes: list[str] = []
    labels_key = _labels_key(adata, config.labels_key, notes)
    _check_obs(adata, labels_key, batch_key)
    check_size(
        adata,
        min_cells=MIN_CELLS,
        min_genes=MIN_GENES,
        what="the data",
        why=f"a run trains on at least {MIN_GENES} genes (no fewer than the latent "
        f"dimensions) and {MIN_CELLS} cells",
    )
    if config.sample_key is not None and config.sample_key not in adata.obs:
        raise ValueError(
            f"--sample-key {config.sample_key!r} is not an obs column; the data "
            f"has: {list(map(str, adata.obs.columns))}."
        )
    if adata.n_vars > config.n_top_genes:
        wanted = [g for genes in marker_set.values() for g in genes]
        preprocess(
            adata,
            n_top_genes=config.n_top_genes,
            batch_key=batch_key,
            layer=layer,
            keep_genes=wanted or None,
        )
        layer = "counts"
        log(f"kept {adata.n_vars:,} genes (highly variable + markers)")
        check_size(
            adata,
            min_cells=MIN_CELLS,
            min_genes=MIN_GENES,
            what="the data after gene selection",
            why="raise --n-top-genes, or pass data with more genes expressed",
        )
    found, missing = _found_markers(config, marker_set, adata, labels_key, layer, notes, log)
    for note in notes:
        log(note)
    return Prepared(adata, layer, batch_key, title, found, missing, labels_key, notes)


def training_data(spec: dict) -> tuple[AnnData, str]:
    """The AnnData a ``train`` spec describes, genes selected and registered for EnsembleSCVI.

    Parameters
    ----------
    spec
        The options of ``ensemblevi train`` (``data``, ``preset``, ``n_cells``,
        ``heart_path``, ``layer``, ``batch_key``, ``n_top_genes``, ``seed``, ...).
    """
    from ensemblevi.model import EnsembleSCVI

    keys = ("data", "preset", "n_cells", "layer", "batch_key", "n_top_genes", "seed")
    config = RunConfig(
        **{k: spec[k] for k in keys},
        heart_path=Path(spec["heart_path"]),
        labels_key=None,
        markers=None,
    )
    prepared = prepare_data(config, log=lambda *_: None)
    EnsembleSCVI.setup_anndata(prepared.adata, layer=prepared.layer, batch_key=prepared.batch_key)
    return prepared.adata, prepared.title
