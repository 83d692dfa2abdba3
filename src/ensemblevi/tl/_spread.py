"""Model spread and biological spread of marker genes, and per-gene uncertainty scores.

Written by hand (no library summarises an ensemble's disagreement this way). Everything
streams over cell chunks through ``EnsembleSCVI.iter_uncertainty`` (see ``_stream``): at
no time is a members x samples x cells x genes array held, and only the requested genes
are kept. :func:`ensemblevi.tl.uncertainty_analysis` computes both in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ensemblevi._constants import DEFAULT_KEY
from ensemblevi._names import h5_columns
from ensemblevi.data._validate import require_obs_columns
from ensemblevi.model.base._uncertainty import UncertaintySummary

from ._checks import validated
from ._kind_note import kind_note
from ._markers import check_markers
from ._stream import SummaryReducer, stream

KEY = DEFAULT_KEY


def _group_labels(adata: AnnData, groupby: str | None) -> pd.Series:
    if groupby is None:
        return pd.Series("all cells", index=adata.obs_names)
    require_obs_columns(adata, [groupby])
    return adata.obs[groupby].astype(str)


class SpreadReducer:
    """The marker genes' values that :func:`expression_spread` summarises, per chunk.

    Parameters
    ----------
    adata
        AnnData registered with the model.
    genes, groupby, groups
        As in :func:`expression_spread`.
    """

    def __init__(
        self,
        adata: AnnData,
        genes: Mapping[str, Sequence[str]] | Sequence[str] | None,
        groupby: str | None,
        groups: Sequence[str] | None = None,
    ) -> None:
        labels = _group_labels(adata, groupby)
        if genes is None:
            raise ValueError("Pass genes: a list of genes or a marker set {group: [genes]}.")
        if isinstance(genes, Mapping):
            found, missing = check_markers(genes, adata.var_names, labels.unique())
            if not found:
                raise ValueError(f"None of the marker genes are usable:\n{missing.to_string()}")
            plan = {g: list(v) for g, v in found.items() if groups is None or g in groups}
        else:
            _, missing = check_markers({"genes": list(genes)}, adata.var_names)
            if len(missing):
                raise ValueError(f"Genes not in the data:\n{missing.to_string()}")
            use = groups if groups is not None else sorted(labels.unique())
            plan = {g: list(genes) for g in use}
        self.plan, self.missing, self.labels = plan, missing, labels
        self.cells = np.flatnonzero(labels.isin(list(plan)).to_numpy())
        if not len(self.cells):
            raise ValueError(f"No cells in the groups {list(plan)} of obs[{groupby!r}].")
        wanted = {g for v in plan.values() for g in v}
        self.genes = [g for g in adata.var_names if g in wanted]  # the order of the chunks
        # filled in the order the chunks arrive; allocated once, at the first chunk
        self._pos = np.empty(len(self.cells), dtype=np.int64)
        self._members: np.ndarray | None = None  # (K, cells, G)
        self._vb = np.empty((len(self.cells), len(self.genes)))
        self._vw = np.empty_like(self._vb)
        self._n = 0

    def add(self, pos: np.ndarray, parts, members: torch.Tensor) -> None:
        """Keep the chunk's member means and between/within variances (float64).

        Parameters
        ----------
        pos
            The chunk's cells: positions in the AnnData.
        parts
            Their variance parts, each ``(B, G)``.
        members
            The members' means over latent samples ``(K, B, G)``.
        """
        # written into arrays allocated once: appending a small array per chunk fragmented
        # the heap around the chunks' large blocks (the atlas pass' resident memory grew by
        # 1.5 GB at 6,000 cells; docs/benchmarks/speed.md)
        if self._members is None:
            self._members = np.empty((members.shape[0], len(self.cells), len(self.genes)))
        rows = slice(self._n, self._n + len(pos))
        self._pos[rows] = pos
        self._members[:, rows] = members.double().cpu().numpy()  # (K, B, G): marker genes
        self._vb[rows] = parts.var_between.double().cpu().numpy()
        self._vw[rows] = parts.var_within.double().cpu().numpy()
        self._n += len(pos)

    def finish(
        self, adata: AnnData, cv_threshold: float, params: dict, key_added: str
    ) -> dict[str, pd.DataFrame]:
        """The tables of :func:`expression_spread`, also written to ``adata.uns``.

        Parameters
        ----------
        adata
            The AnnData the chunks came from.
        cv_threshold
            A cell is *uncertain* when its across-member CV exceeds this.
        params
            Settings stored next to the tables.
        key_added
            Results go to ``adata.uns[key_added]["expression_spread"]``.
        """
        n = self._n
        pos, per_member = self._pos[:n], self._members[:, :n]  # (K, cells, G)
        vb, vw = self._vb[:n], self._vw[:n]
        mean, std = per_member.mean(0), per_member.std(0)
        col = {g: i for i, g in enumerate(self.genes)}
        cell_groups = self.labels.to_numpy()[pos]
        tiny = np.finfo(float).tiny
        rows_cells, rows_members, rows_summary = [], [], []
        for group, gene_list in self.plan.items():
            sel = cell_groups == group
            for gene in gene_list:
                j = col[gene]
                mu, sd = mean[sel, j], std[sel, j]
                cv = sd / np.maximum(mu, tiny)
                rows_cells.append(
                    pd.DataFrame(
                        {
                            "cell": adata.obs_names[pos[sel]],
                            "group": group,
                            "gene": gene,
                            "mean": mu,
                            "std": sd,
                            "cv": cv,
                        }
                    )
                )
                for k in range(per_member.shape[0]):
                    vals = per_member[k, sel, j]
                    rows_members.append((group, gene, k, vals.mean(), vals.std()))
                b, w = vb[sel, j].mean(), vw[sel, j].mean()
                rows_summary.append(
                    {
                        "group": group,
                        "gene": gene,
                        "n_cells": int(sel.sum()),
                        "mean": mu.mean(),
                        "std": mu.std(),
                        "cv": mu.std() / max(mu.mean(), tiny),
                        "median": np.median(mu),
                        "q2.5": np.quantile(mu, 0.025),
                        "q97.5": np.quantile(mu, 0.975),
                        "member_cv": cv.mean(),
                        "var_between": b,
                        "var_within": w,
                        "frac_between": b / max(b + w, tiny),
                        "frac_uncertain_cells": float((cv > cv_threshold).mean()),
                    }
                )
        out = {
            "cells": pd.concat(rows_cells, ignore_index=True),
            "members": pd.DataFrame(
                rows_members, columns=["group", "gene", "member", "mean", "std"]
            ),
            "summary": pd.DataFrame(rows_summary),
        }
        adata.uns.setdefault(key_added, {})["expression_spread"] = {
            "summary": out["summary"],
            "members": out["members"],
            "cells": out["cells"],
            "params": {**params, "cv_threshold": float(cv_threshold)},
            "missing": self.missing.astype(str),  # h5ad-safe, also when empty
        }
        return out


def _settings(model, groupby, n_samples, library_size, seed) -> dict:
    return {
        "groupby": groupby or "",
        "n_samples": int(n_samples),
        "library_size": float(library_size),
        "seed": int(seed),
        "n_members": int(model.n_members),
        "ensemble": model.ensemble,
    }


def expression_spread(
    model,
    adata: AnnData | None = None,
    *,
    genes: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    groupby: str | None = None,
    groups: Sequence[str] | None = None,
    n_samples: int = 10,
    library_size: float = 1e4,
    cv_threshold: float = 0.1,
    seed: int = 0,
    key_added: str = KEY,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Spread of marker genes' denoised expression across members and across cells.

    For each gene and group of cells: per cell, the mean and standard deviation across
    members of the member's denoised expression (its mean over ``n_samples`` latent
    samples, per ``library_size`` counts): the *model spread*; per member, the average
    and standard deviation over the group's cells: the *biological spread*; and a summary.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI` (any kind, or ``from_scvi``).
    adata
        AnnData registered with the model (default: the model's).
    genes
        A marker set ``{group: [genes]}`` (each gene is summarised in its group's cells),
        or a list of genes (summarised in every group).
    groupby, groups
        ``obs`` column of the groups and the groups to use (default: all, or the marker
        set's groups).
    n_samples
        Latent samples per member and cell.
    library_size
        Counts per cell the denoised expression is expressed in.
    cv_threshold
        A cell is counted as *uncertain* when its across-member CV exceeds this (stored
        with the results: the figures draw this threshold).
    seed
        Seed of the latent samples.
    key_added
        Results go to ``adata.uns[key_added]["expression_spread"]``.
    progress
        Show a progress bar.

    Returns
    -------
    ``{"cells", "members", "summary"}``: per (cell, gene) mean, std and CV across members;
    per (group, gene, member) mean and std over cells; per (group, gene) ``mean``, ``std``,
    ``cv``, ``median``, ``q2.5``, ``q97.5`` (over cells, of the member-mean expression),
    ``member_cv`` (mean over cells of the across-member CV), ``var_between``,
    ``var_within`` (means over cells), ``frac_between`` and ``frac_uncertain_cells``.
    """
    adata = validated(model, adata, "expression_spread")
    kind_note(model, adata, "expression_spread", key_added)
    reducer = SpreadReducer(adata, genes, groupby, groups)
    stream(model, adata, [reducer], n_samples, library_size, seed, progress=progress)
    settings = _settings(model, groupby, n_samples, library_size, seed)
    return reducer.finish(adata, cv_threshold, settings, key_added)


def gene_summary(adata: AnnData, groupby: str | None) -> tuple[UncertaintySummary, list[str]]:
    """The all-cells, all-genes summary that :func:`gene_uncertainty` reduces to.

    Parameters
    ----------
    adata
        AnnData registered with the model.
    groupby
        ``obs`` column of the groups (``None``: one group of all cells).

    Returns
    -------
    The empty summary (feed it through :class:`~ensemblevi.tl._stream.SummaryReducer`) and
    the group names in code order.
    """
    labels = _group_labels(adata, groupby)
    names = sorted(labels.unique())
    codes = pd.Categorical(labels, categories=names).codes
    return UncertaintySummary(adata.n_obs, adata.n_vars, codes, len(names)), names


def write_gene_uncertainty(
    adata: AnnData,
    summary: UncertaintySummary,
    names: list[str],
    groupby: str | None,
    params: dict,
    key_added: str = KEY,
) -> pd.DataFrame:
    """Write the per-gene scores of a filled :func:`gene_summary` into ``adata``.

    Parameters
    ----------
    adata
        The AnnData the summary was computed on.
    summary, names
        The filled summary and its group names (from :func:`gene_summary`).
    groupby
        ``obs`` column of the groups, or ``None``.
    params
        Settings stored in ``adata.uns[key_added]["gene_uncertainty"]``.
    key_added
        Prefix of the ``var``/``varm`` entries.

    Returns
    -------
    The per-gene table, least certain genes first.
    """
    genes = summary.genes(adata.var_names)
    table = pd.DataFrame(
        {
            "cv_between": genes["cv_between"],
            "mean": genes["mean"],
            "frac_between": genes["frac_between"],
        }
    )
    table["rank"] = table["cv_between"].rank(ascending=False, method="min").astype(int)
    for col in ("cv_between", "mean", "frac_between"):
        adata.var[f"{key_added}_{col}"] = table[col].to_numpy()
    adata.var[f"{key_added}_cv_between_rank"] = table["rank"].to_numpy()
    if groupby is not None:
        by_group = summary.genes_by_group(adata.var_names, names)
        # group names become HDF5 names in results.h5ad: "/A" would be a path
        adata.varm[f"{key_added}_cv_between_by_group"] = h5_columns(by_group)
        for g in names:
            table[f"cv_between_{g}"] = by_group[g].to_numpy()
    adata.uns.setdefault(key_added, {})["gene_uncertainty"] = params
    return table.sort_values("cv_between", ascending=False)


def gene_uncertainty(
    model,
    adata: AnnData | None = None,
    *,
    groupby: str | None = None,
    n_samples: int = 10,
    library_size: float = 1e4,
    seed: int = 0,
    key_added: str = KEY,
    progress: bool = True,
) -> pd.DataFrame:
    """An uncertainty score for every gene (and per group), ranked.

    The score of a gene is the mean over cells of its between-member coefficient of
    variation, ``sqrt(var_between) / mean`` of the denoised expression: how far the members
    disagree on its level, relative to the level (``UncertaintySummary``'s
    ``cv_between``). Streamed over cells.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata
        AnnData registered with the model (default: the model's).
    groupby
        ``obs`` column of groups to score separately too (``None``: all cells only).
    n_samples
        Latent samples per member and cell.
    library_size
        Counts per cell the denoised expression is expressed in.
    seed
        Seed of the latent samples.
    key_added
        Writes ``adata.var[f"{key_added}_cv_between"]`` (score; the name
        ``model.get_uncertainty`` writes the same number under), ``..._cv_between_rank``
        (1 = least certain), ``..._mean`` (mean denoised expression per ``library_size``)
        and ``..._frac_between`` (between-member share of between + within variance); per
        group the scores go to ``adata.varm[f"{key_added}_cv_between_by_group"]``.
    progress
        Show a progress bar.

    Returns
    -------
    The per-gene table, least certain genes first.
    """
    adata = validated(model, adata, "gene_uncertainty")
    kind_note(model, adata, "gene_uncertainty", key_added)
    summary, names = gene_summary(adata, groupby)
    stream(
        model, adata, [SummaryReducer(summary)], n_samples, library_size, seed, progress=progress
    )
    params = _settings(model, groupby, n_samples, library_size, seed)
    return write_gene_uncertainty(adata, summary, names, groupby, params, key_added)
