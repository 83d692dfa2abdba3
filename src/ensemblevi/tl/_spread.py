"""Model spread and biological spread of marker genes, and per-gene uncertainty scores.

Written by hand (no library summarises an ensemble's disagreement this way). Everything
streams over cell chunks through ``EnsembleSCVI.iter_uncertainty``: at no time is a
members x samples x cells x genes array held, and only the requested genes are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ensemblevi.data import require_obs_columns

from ._markers import check_markers

KEY = "ensemblevi"


def _group_labels(adata: AnnData, groupby: str | None) -> pd.Series:
    if groupby is None:
        return pd.Series("all cells", index=adata.obs_names)
    require_obs_columns(adata, [groupby])
    return adata.obs[groupby].astype(str)


def expression_spread(
    model,
    adata: AnnData | None = None,
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
    cv_threshold
        A cell is counted as *uncertain* when its across-member CV exceeds this.
    key_added
        Results go to ``adata.uns[key_added]["expression_spread"]``.

    Returns
    -------
    ``{"cells", "members", "summary"}``: per (cell, gene) mean, std and CV across members;
    per (group, gene, member) mean and std over cells; per (group, gene) ``mean``, ``std``,
    ``cv``, ``median``, ``q2.5``, ``q97.5`` (over cells, of the member-mean expression),
    ``member_cv`` (mean over cells of the across-member CV), ``var_between``,
    ``var_within`` (means over cells), ``frac_between`` and ``frac_uncertain_cells``.
    """
    adata = model._validate_anndata(adata)
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
    all_genes = list(dict.fromkeys(g for v in plan.values() for g in v))
    cells = np.flatnonzero(labels.isin(list(plan)).to_numpy())
    if not len(cells):
        raise ValueError(f"No cells in the groups {list(plan)} of obs[{groupby!r}].")
    # iter_uncertainty returns the genes in adata.var_names order
    wanted = set(all_genes)
    col = {g: i for i, g in enumerate(g for g in adata.var_names if g in wanted)}
    means, stds, member_means, between, within = [], [], [], [], []
    for _, parts, members in model.iter_uncertainty(
        adata, cells, all_genes, n_samples, library_size, seed=seed, progress=progress
    ):
        m = members.double().cpu().numpy()  # (K, B, G)
        means.append(m.mean(0))
        stds.append(m.std(0))
        member_means.append(m)
        between.append(parts.var_between.double().cpu().numpy())
        within.append(parts.var_within.double().cpu().numpy())
    mean, std = np.concatenate(means), np.concatenate(stds)
    per_member = np.concatenate(member_means, axis=1)  # (K, cells, G): small (marker genes)
    vb, vw = np.concatenate(between), np.concatenate(within)
    cell_groups = labels.to_numpy()[cells]
    tiny = np.finfo(float).tiny
    rows_cells, rows_members, rows_summary = [], [], []
    for group, gene_list in plan.items():
        sel = cell_groups == group
        for gene in gene_list:
            j = col[gene]
            mu, sd = mean[sel, j], std[sel, j]
            cv = sd / np.maximum(mu, tiny)
            rows_cells.append(
                pd.DataFrame(
                    {
                        "cell": adata.obs_names[cells[sel]],
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
        "members": pd.DataFrame(rows_members, columns=["group", "gene", "member", "mean", "std"]),
        "summary": pd.DataFrame(rows_summary),
    }
    adata.uns.setdefault(key_added, {})["expression_spread"] = {
        "summary": out["summary"],
        "members": out["members"],
        "cells": out["cells"],
        "params": {
            "groupby": groupby or "",
            "n_samples": int(n_samples),
            "library_size": float(library_size),
            "cv_threshold": float(cv_threshold),
            "seed": int(seed),
            "n_members": int(model.n_members),
            "ensemble": model.ensemble,
        },
        "missing": missing.astype(str),  # h5ad-safe, also when empty
    }
    return out


def gene_uncertainty(
    model,
    adata: AnnData | None = None,
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
    disagree on its level, relative to the level. Streamed over cells.

    Writes ``adata.var[f"{key_added}_uncertainty"]`` (score), ``..._uncertainty_rank``
    (1 = least certain), ``..._mean`` (mean denoised expression per ``library_size``) and
    ``..._frac_between`` (between-member share of between + within variance); per group
    the scores go to ``adata.varm[f"{key_added}_uncertainty_by_group"]``.

    Returns
    -------
    The per-gene table, least certain genes first.
    """
    adata = model._validate_anndata(adata)
    labels = _group_labels(adata, groupby)
    names = sorted(labels.unique())
    code = pd.Categorical(labels, categories=names).codes
    n_g = adata.n_vars
    sums = {k: np.zeros((len(names), n_g)) for k in ("cv", "mean", "between", "within")}
    counts = np.zeros(len(names))
    tiny = np.finfo(np.float32).tiny
    for pos, parts, _ in model.iter_uncertainty(
        adata, None, None, n_samples, library_size, seed=seed, progress=progress
    ):
        mean = parts.mean.double().cpu().numpy()
        vb = parts.var_between.double().cpu().numpy()
        vw = parts.var_within.double().cpu().numpy()
        cv = np.sqrt(vb) / np.maximum(mean, tiny)
        onehot = np.eye(len(names))[code[pos]]  # (B, groups)
        for key, value in (("cv", cv), ("mean", mean), ("between", vb), ("within", vw)):
            sums[key] += onehot.T @ value
        counts += onehot.sum(0)
    n_all = counts.sum()
    score = sums["cv"].sum(0) / n_all
    b, w = sums["between"].sum(0), sums["within"].sum(0)
    table = pd.DataFrame(
        {
            "uncertainty": score,
            "mean": sums["mean"].sum(0) / n_all,
            "frac_between": b / np.maximum(b + w, tiny),
        },
        index=adata.var_names,
    )
    table["rank"] = table["uncertainty"].rank(ascending=False, method="min").astype(int)
    for col in ("uncertainty", "mean", "frac_between"):
        adata.var[f"{key_added}_{col}"] = table[col].to_numpy()
    adata.var[f"{key_added}_uncertainty_rank"] = table["rank"].to_numpy()
    by_group = pd.DataFrame(
        (sums["cv"] / np.maximum(counts, 1)[:, None]).T, index=adata.var_names, columns=names
    )
    if groupby is not None:
        adata.varm[f"{key_added}_uncertainty_by_group"] = by_group
        for g in names:
            table[f"uncertainty_{g}"] = by_group[g].to_numpy()
    adata.uns.setdefault(key_added, {})["gene_uncertainty"] = {
        "groupby": groupby or "",
        "n_samples": int(n_samples),
        "library_size": float(library_size),
        "seed": int(seed),
    }
    return table.sort_values("uncertainty", ascending=False)
