"""Do the novelty and ``unknown`` rules hold for a new sample? Deep K=4 beside one scVI.

Issue 35. A reference of several samples (donors) with some cell types; a query of *other*
samples with those types and one the reference never saw. Every model is trained with
:func:`ensemblevi.tl.sample_split` (two reference samples kept out of training, 10% of the
others' cells held out at random), so the same model can be calibrated two ways:

- ``training_samples``: thresholds from the held-out cells of the samples it trained on
  (what a model without ``sample_key`` does);
- ``unseen_samples``: thresholds from the two reference samples it never trained on.

Data:

- ``sim``: :func:`ensemblevi.data._replicates.synthetic_replicates` (3,200 cells, 400
  genes, 8 samples, 4 types ``A``-``D`` differing from ``A`` in 30% of the genes by
  +-2.5 log2, per-sample per-gene log-normal effects, sd 0.3; no condition effect).
  Reference = 6 samples without type ``D``; query = the 2 other samples, all types.
- ``pbmc``: PBMC 3k (1,200 HVGs) split at random into 8 pseudo-samples, each with its own
  per-gene factor ``exp(u)``, ``u ~ N(0, 0.3^2)``, applied by binomial thinning
  (:func:`ensemblevi.benchmark._thinning.thin_by_group`). Reference = 6 pseudo-samples
  without B cells; query = the 2 other pseudo-samples, B cells included.

Per model (``deep`` K=4 and ``single``: one scVI, same epochs, same split) and
calibration, at ``alpha`` (5%):

- per cell, on the query: false-positive rate on the known types, TPR on the unseen type,
  for the rule (``novelty_combined``; with unseen samples, its threshold is the largest
  of the calibration samples' own: :func:`ensemblevi.tl._thresholds.rule_threshold`),
  for the same score under the pooled threshold of every calibration cell
  (``novelty_combined_pooled``, the rule before that), for ``novelty_knn`` (latent kNN
  distance), for ``novelty_fit`` (the decoders' misfit to the counts), for ``pca_knn`` (mean
  distance to the 15 nearest training cells in 20 principal components of log-normalised
  counts, fitted on the training cells; the same conformal rule) and for ``combined``
  (flag when either score's conformal p-value is below ``alpha / 2``: Bonferroni, so the
  rate stays below ``alpha``); the AUROC of each score (and of ``novelty_cv`` for K=4),
  unseen against known cells;
- candidate scores, each under its own conformal threshold on the same calibration cells
  (:func:`candidate_scores`): ``knn_max`` (the largest member's scaled latent distance),
  ``latent_pca_mean`` (the mean of ``novelty_knn`` and the median-scaled ``pca_knn``: the
  rule before ``novelty_fit`` joined it, kept to compare with) and
  ``latent_pca_max``, with their AUROCs;
- per group (``tl.group_novelty`` on the query by cell type): unseen type called, known
  types called;
- the label ``unknown`` rule (``tl.label_uncertainty``, default score
  ``novelty_combined``) of an ``EnsembleSCANVI`` made from the scVI ensemble with
  ``from_ensemble_scvi`` and trained 20 more epochs on the same split (:func:`evaluate_labels`):
  share of known cells called unknown, share of unseen cells called unknown, and the rate
  the rule measured on its own calibration cells; by default (decided by the scVI ensemble
  the scANVI keeps), per distance score in the scANVI's own latent space
  (``novelty_model="scanvi"``), and for the predictive entropy. Rows measured before this
  release trained the scANVI from scratch (its latent space was the default then; the
  scVI ensemble's rule is under ``"novelty_combined_scvi"``).

``--summarize --figure new_sample.png`` prints the tables and draws FPR against TPR per
score and model (``docs/figures/new_sample.png``).

Run (background; ~3x slower on the shared machine). Seeds 0-2 were reported before
``novelty_fit`` joined the rule; 20-22 were first run with it; neither was used to choose
it (``bench_novelty_candidates.py`` chose it on seeds 10-15):
``PYTHONPATH=src nohup timeout 5400 .venv/bin/python benchmarks/bench_new_sample.py
--data sim pbmc --seeds 0 1 2 20 21 22 --epochs 100 --out bench_new_sample.json > ns.log
2>&1 &``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ALPHA = 0.05
N_PCS = 20
N_NEIGHBORS = 15
CALIBRATIONS = ("training_samples", "unseen_samples")
#: the per-cell scores reported, each under the same conformal rule
SCORES = (
    "novelty_combined",
    "novelty_combined_pooled",
    "novelty_knn",
    "novelty_fit",
    "pca_knn",
    "combined",
    "knn_max",
    "latent_pca_mean",
    "latent_pca_max",
)


#: the simulator's design (``synthetic_replicates`` arguments but the seed). Types differ
#: in 30% of the genes by 2.5 (log2): chosen, before any model was trained, so that the
#: PCA-kNN baseline separates the unseen type as in issue 35 (AUROC 0.93 on seed 0; 0.64
#: with the simulator's defaults 0.2 / 1.5, where no score can do much)
SIM_DESIGN = {
    "n_cells": 3200,
    "n_genes": 400,
    "n_samples": 8,
    "n_types": 4,
    "design": "paired",
    "de_frac": 0.0,
    "sample_sd": 0.3,
    "type_de_frac": 0.3,
    "type_lfc": 2.5,
}


def sim_data(seed: int):
    """Reference (6 samples, types A-C) and query (2 other samples, A-D) of the simulator."""
    from ensemblevi.data._replicates import synthetic_replicates

    adata = synthetic_replicates(**SIM_DESIGN, seed=seed)
    del adata.uns["synthetic_replicates"]
    return _split(adata, unseen="D", seed=seed)


def pbmc_data(path: str, seed: int):
    """Reference (6 pseudo-samples, no B cells) and query (2 others, B cells included)."""
    import scanpy as sc
    import scipy.sparse as sp

    import ensemblevi as ev
    from ensemblevi.benchmark._thinning import thin_by_group

    adata = ev.data.read(path)
    adata.X = adata.layers["counts"].copy() if "counts" in adata.layers else adata.X
    sc.pp.filter_genes(adata, min_counts=3)
    sc.pp.highly_variable_genes(adata, n_top_genes=1200, flavor="seurat_v3", subset=True)
    rng = np.random.default_rng([seed, 35])
    n_samples = 8
    sample = np.arange(adata.n_obs) % n_samples
    rng.shuffle(sample)
    u = rng.normal(0.0, 0.3, (n_samples, adata.n_vars))
    keep = np.exp(u - u.max(0, keepdims=True))
    counts = thin_by_group(sp.csr_matrix(adata.X), sample, keep, rng)
    adata.X = counts.astype(np.float32)
    adata.layers["counts"] = adata.X.copy()
    adata.obs["sample"] = [f"s{s}" for s in sample]
    adata.obs = adata.obs[["sample", "cell_type"]].copy()
    adata.uns.clear()
    adata.obsm.clear()
    adata.varm.clear()
    return _split(adata, unseen="B cells", seed=seed)


def _split(adata, unseen: str, seed: int):
    samples = np.unique(adata.obs["sample"].astype(str))
    query_samples = np.random.default_rng([seed, 36]).choice(samples, 2, replace=False)
    in_query = adata.obs["sample"].astype(str).isin(query_samples).to_numpy()
    is_unseen = (adata.obs["cell_type"].astype(str) == unseen).to_numpy()
    ref = adata[~in_query & ~is_unseen].copy()
    query = adata[in_query].copy()
    query.obs["unseen"] = is_unseen[in_query]
    return ref, query


def pca_space(ref, train: np.ndarray):
    """A function mapping an AnnData to 20 PCs of log-normalised counts (fit on ``train``)."""
    from sklearn.decomposition import PCA

    def lognorm(a):
        x = a.layers["counts"]
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)

    pca = PCA(n_components=N_PCS, random_state=0).fit(lognorm(ref[train]))
    return lambda a: pca.transform(lognorm(a))


def conformal_p(cal: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``(1 + #{cal >= x}) / (n + 1)`` per value of ``x``."""
    cal = np.sort(cal)
    return (1 + len(cal) - np.searchsorted(cal, x, side="left")) / (len(cal) + 1)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def rates(flags: np.ndarray, unseen: np.ndarray) -> dict:
    return {"fpr_known": float(flags[~unseen].mean()), "tpr_unseen": float(flags[unseen].mean())}


def candidate_scores(model, ref, q, cells, knn, cal_knn, d_pca, cal_pca) -> dict:
    """Scores tried against ``novelty_knn`` (each with its own conformal threshold set on the
    same calibration cells): ``(query scores, calibration scores)`` per name.

    - ``knn_max``: the largest of the members' median-scaled latent distances (a cell any
      member finds far; one member: ``novelty_knn``);
    - ``latent_pca_mean``: the mean of ``novelty_knn`` and the median-scaled PCA distance
      (the expression space as one more view, weighted as all members together);
    - ``latent_pca_max``: the larger of the two.
    """
    from ensemblevi.tl._novelty_rule import knn_distance, member_latents

    z_ref, z_q = member_latents(model, ref), member_latents(model, q)
    per_q, per_cal = [], []
    for k in range(model.n_members):
        d_cal = knn_distance(z_ref[k, cells.train], z_ref[k, cells.calibration], N_NEIGHBORS)
        d_q = knn_distance(z_ref[k, cells.train], z_q[k], N_NEIGHBORS)
        scale = np.median(d_cal)
        per_q.append(d_q / scale)
        per_cal.append(d_cal / scale)
    scale = np.median(cal_pca)
    pca_q, pca_cal = d_pca / scale, cal_pca / scale
    return {
        "knn_max": (np.max(per_q, 0), np.max(per_cal, 0)),
        "latent_pca_mean": ((knn + pca_q) / 2, (cal_knn + pca_cal) / 2),
        "latent_pca_max": (np.maximum(knn, pca_q), np.maximum(cal_knn, pca_cal)),
    }


def evaluate_novelty(model, ref, query, ev, pca) -> dict:
    """Per calibration: per-cell rates of the three scores, AUROCs and the group calls."""
    from ensemblevi.tl._novelty_rule import knn_distance, novelty_reference
    from ensemblevi.tl._thresholds import conformal_threshold

    unseen = query.obs["unseen"].to_numpy()
    z_train_pca = pca(ref[model.train_indices])
    d_query_pca = knn_distance(z_train_pca, pca(query), N_NEIGHBORS)
    out = {}
    for calibration in CALIBRATIONS:
        q = query.copy()
        scores = ev.tl.cell_novelty(
            model, q, alpha=ALPHA, progress=False, sample_key="sample", calibration=calibration
        )
        info = q.uns["ensemblevi"]["cell_novelty"]
        knn = scores["novelty_knn"].to_numpy()
        cal_knn = info["calibration_scores"]["novelty_knn"]
        ref_cells = novelty_reference(model, sample_key="sample", calibration=calibration)
        cal_pca = knn_distance(z_train_pca, pca(ref[ref_cells.calibration]), N_NEIGHBORS)
        p_knn, p_pca = conformal_p(cal_knn, knn), conformal_p(cal_pca, d_query_pca)
        candidates = candidate_scores(model, ref, q, ref_cells, knn, cal_knn, d_query_pca, cal_pca)
        row = {
            "calibration_kind": info["calibration_kind"],
            "n_calibration_cells": info["n_calibration_cells"],
            "n_calibration_samples": info["n_calibration_samples"],
            "fpr_measured_by_rule": info[f"{info['decides']}_fpr_heldout"],
            "fpr_measured_on": info["fpr_measured_on"],
            "novelty_combined": rates(scores["is_novel"].to_numpy(), unseen),  # the rule
            # the same score under the pooled threshold (the rule before this release)
            "novelty_combined_pooled": rates(
                scores["novelty_combined"].to_numpy()
                > conformal_threshold(info["calibration_scores"]["novelty_combined"], ALPHA)[0],
                unseen,
            ),
            "novelty_knn": rates(scores["novelty_knn_flag"].to_numpy(), unseen),
            "novelty_fit": rates(scores["novelty_fit_flag"].to_numpy(), unseen),
            "pca_knn": rates(p_pca <= ALPHA, unseen),
            "combined": rates(np.minimum(p_knn, p_pca) <= ALPHA / 2, unseen),
        }
        for name, (x, cal) in candidates.items():
            threshold, _ = conformal_threshold(cal, ALPHA)
            row[name] = {**rates(x > threshold, unseen), "auroc": auroc(x[unseen], x[~unseen])}
        table = ev.tl.group_novelty(
            model,
            q,
            groupby="cell_type",
            progress=False,
            sample_key="sample",
            calibration=calibration,
        )
        unseen_type = str(q.obs["cell_type"][unseen].iloc[0])
        called = table.index[table["is_novel"].to_numpy()].astype(str).tolist()
        row["groups"] = {
            "unseen_called": unseen_type in called,
            "known_called": [g for g in called if g != unseen_type],
            "share_flagged": {str(g): float(v) for g, v in table["share_flagged"].items()},
        }
        out[calibration] = row
    comb = scores["novelty_combined"].to_numpy()
    fit = scores["novelty_fit"].to_numpy()
    out["auroc"] = {
        "novelty_combined": auroc(comb[unseen], comb[~unseen]),
        "novelty_knn": auroc(knn[unseen], knn[~unseen]),
        "novelty_fit": auroc(fit[unseen], fit[~unseen]),
        "pca_knn": auroc(d_query_pca[unseen], d_query_pca[~unseen]),
    }
    if model.n_members > 1:
        cv = scores["novelty_cv"].to_numpy()
        out["auroc"]["novelty_cv"] = auroc(cv[unseen], cv[~unseen])
    return out


#: scANVI's epochs after the scVI ensemble (``ensemblevi annotate``'s default)
SCANVI_EPOCHS = 20


def evaluate_labels(query, split: dict, seed: int, ev, vae) -> dict:
    """The ``unknown`` rule of an EnsembleSCANVI made from ``vae`` (the scVI ensemble
    trained on the split, of any kind), as a user makes one (``from_ensemble_scvi``, then
    :data:`SCANVI_EPOCHS` epochs on the same split), under each calibration.

    The default rule (``label_uncertainty`` as called) is decided by ``vae``'s novelty rule,
    which the scANVI keeps as ``source_scvi`` (``same_as_scvi_rule``: its calls are exactly
    ``vae``'s ``is_novel``); ``"novelty_combined"`` and ``"novelty_knn"`` are the same
    scores in the scANVI's own latent space (``novelty_model="scanvi"``), ``"entropy"`` the
    predictive entropy (``annotate``'s default score).
    """
    from ensemblevi.model import EnsembleSCANVI

    # plain strings, as the query's column: "Unknown" need not be one of its categories
    vae.adata.obs["cell_type"] = vae.adata.obs["cell_type"].astype(str)
    model = EnsembleSCANVI.from_ensemble_scvi(vae, "Unknown", labels_key="cell_type")
    model.train(
        max_epochs=SCANVI_EPOCHS,
        seed=seed,
        enable_progress_bar=False,
        datasplitter_kwargs=split["datasplitter_kwargs"],
    )
    unseen = query.obs["unseen"].to_numpy()

    def called(calibration: str, **options) -> tuple[dict, np.ndarray]:
        q = query.copy()
        q.obs["cell_type"] = "Unknown"  # the query is unlabelled (and has a type never seen)
        info = ev.tl.label_uncertainty(
            model, q, alpha=ALPHA, sample_key="sample", calibration=calibration, **options
        )
        call = q.obs["ensemblevi_label_unknown"].to_numpy().astype(bool)
        return {**rates(call, unseen), "fpr_measured_by_rule": info["calibration_fpr"]}, call

    out = {}
    for calibration in CALIBRATIONS:
        got, call = called(calibration)
        flags = ev.tl.cell_novelty(
            vae,
            query.copy(),
            alpha=ALPHA,
            progress=False,
            sample_key="sample",
            calibration=calibration,
        )
        same = bool((call == flags["is_novel"].to_numpy().astype(bool)).all())
        out[calibration] = {**got, "same_as_scvi_rule": same}
        for score in ("novelty_knn", "novelty_combined"):
            out[calibration][score] = called(calibration, score=score, novelty_model="scanvi")[0]
        out[calibration]["entropy"] = called(calibration, score="entropy")[0]
    return out


def run_labels(data: str, pbmc: str, seed: int, epochs: int) -> list[dict]:
    """Only the label ``unknown`` rule (per kind: the scVI ensemble, then the scANVI made
    from it, on the same split)."""
    import ensemblevi as ev

    ref, query = sim_data(seed) if data == "sim" else pbmc_data(pbmc, seed)
    split = ev.tl.sample_split(ref, "sample", n_holdout=2, seed=seed)
    rows = []
    for kind in ("deep", "single"):
        t = time.perf_counter()
        _, vae, _ = train_scvi(ref, split, kind, seed, epochs)
        row = {
            "data": data,
            "seed": seed,
            "kind": kind,
            "epochs": epochs,
            "labels": evaluate_labels(query, split, seed, ev, vae),
            "seconds": round(time.perf_counter() - t, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def train_scvi(ref, split: dict, kind: str, seed: int, epochs: int):
    """An EnsembleSCVI of ``kind`` (K=4, or one model) trained on a copy of ``ref`` with the
    split: ``(its AnnData, the model, training seconds)``."""
    from ensemblevi.model import EnsembleSCVI

    adata = ref.copy()
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = EnsembleSCVI(adata, n_members=4, ensemble=kind, seed=seed)
    t = time.perf_counter()
    model.train(
        max_epochs=epochs,
        seed=seed,
        enable_progress_bar=False,
        datasplitter_kwargs=split["datasplitter_kwargs"],
    )
    return adata, model, time.perf_counter() - t


def run_one(data: str, pbmc: str, seed: int, epochs: int, labels: bool) -> list[dict]:
    import ensemblevi as ev

    ref, query = sim_data(seed) if data == "sim" else pbmc_data(pbmc, seed)
    split = ev.tl.sample_split(ref, "sample", n_holdout=2, seed=seed)
    rows = []
    for kind in ("deep", "single"):
        adata, model, seconds = train_scvi(ref, split, kind, seed, epochs)
        pca = pca_space(adata, model.train_indices)
        row = {
            "data": data,
            "seed": seed,
            "kind": kind,
            "n_members": model.n_members,
            "epochs": epochs,
            "train_s": round(seconds, 1),
            "holdout_samples": split["holdout_samples"],
            "n_ref": int(ref.n_obs),
            "n_query": int(query.n_obs),
            "n_unseen": int(query.obs["unseen"].sum()),
            **evaluate_novelty(model, adata, query, ev, pca),
        }
        if labels:
            row["labels"] = evaluate_labels(query, split, seed, ev, model)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def label_columns(lab: dict) -> dict:
    """The label ``unknown`` rule's FPR and TPR columns of one run and calibration.

    ``label``: the default rule (the scVI ensemble's, kept by the scANVI); ``label
    (scANVI latent)``: ``novelty_combined`` in the scANVI's own latent space; ``label
    (entropy)``. Rows measured before the scANVI kept its scVI ensemble (no
    ``same_as_scvi_rule``) had the scANVI's latent space as the default and the scVI rule
    under ``novelty_combined_scvi``.
    """
    if "same_as_scvi_rule" in lab:
        parts = {"label": lab, "label (scANVI latent)": lab["novelty_combined"]}
        parts["label (entropy)"] = lab["entropy"]
    else:
        parts = {"label (scANVI latent)": lab}
        if "novelty_combined_scvi" in lab:
            parts["label"] = lab["novelty_combined_scvi"]
    out = {}
    for name, got in parts.items():
        out[f"{name} FPR"] = got["fpr_known"]
        out[f"{name} TPR"] = got["tpr_unseen"]
    return out


def summarize(rows: list[dict]) -> str:
    """Markdown tables: mean (min-max over seeds) per data, model and calibration."""
    import pandas as pd

    flat = []
    for r in rows:
        for cal in CALIBRATIONS:
            c = r[cal]
            row = {
                "data": r["data"],
                "model": f"{r['kind']} K={r['n_members']}",
                "calibration": c["calibration_kind"],
                "seed": r["seed"],
                "rule FPR (own)": c["fpr_measured_by_rule"],
            }
            for score in SCORES:
                if score not in c:  # rows measured before the candidate existed
                    continue
                row[f"{score} FPR"] = c[score]["fpr_known"]
                row[f"{score} TPR"] = c[score]["tpr_unseen"]
            row["group: unseen called"] = float(c["groups"]["unseen_called"])
            row["group: known called"] = len(c["groups"]["known_called"])
            if "labels" in r:
                row.update(label_columns(r["labels"][cal]))
            for score, v in r["auroc"].items():
                row[f"AUROC {score}"] = v
            flat.append(row)
    df = pd.DataFrame(flat)
    keys = ["data", "model", "calibration"]
    agg = df.drop(columns="seed").groupby(keys, sort=False)
    mean, lo, hi = agg.mean(), agg.min(), agg.max()
    n = df.groupby(keys, sort=False)["seed"].nunique()
    out = mean.copy().astype(object)
    for col in mean.columns:
        fmt = "{:.2f}" if col.startswith("AUROC") or col.startswith("group") else "{:.1%}"
        out[col] = [
            fmt.format(m) + ("" if a == b else f" ({fmt.format(a)}-{fmt.format(b)})")
            for m, a, b in zip(mean[col], lo[col], hi[col], strict=True)
        ]
    out.insert(0, "seeds", n)
    from ensemblevi.benchmark._markdown import _table

    return _table(out.reset_index())


FIGURE_SCORES = {
    "novelty_knn": ("latent kNN (novelty_knn)", "o"),
    "latent_pca_mean": ("the previous rule (latent and counts kNN)", "s"),
    "novelty_fit": ("decoders' misfit (novelty_fit)", "^"),
    "novelty_combined_pooled": ("novelty_combined, pooled threshold", "v"),
    "novelty_combined": ("the rule: novelty_combined, by-sample threshold", "D"),
}


FIGURE_LABELS = {
    "default": ("label rule, default: the scVI ensemble's rule", "D"),
    "novelty_combined": ("label rule: novelty_combined in scANVI's latent", "s"),
    "novelty_knn": ("label rule: novelty_knn in scANVI's latent", "o"),
    "entropy": ("label rule: predictive entropy", "^"),
}


def _novelty_rates(row: dict, score: str) -> dict | None:
    return row["unseen_samples"].get(score)


def _label_rates(row: dict, score: str) -> dict | None:
    lab = row.get("labels", {}).get("unseen_samples", {})
    if "same_as_scvi_rule" not in lab:  # rows from before the scANVI kept its scVI ensemble
        return None
    return lab if score == "default" else lab.get(score)


def figure(rows: list[dict], path: str, labels: bool = False) -> None:
    """Per data set: FPR on a new sample's known cells against TPR on the unseen type, per
    score and model, calibrated on unseen samples (one point per seed, the mean ringed);
    with ``labels``, of the label ``unknown`` rules (:data:`FIGURE_LABELS`) instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in ("sim", "pbmc") if any(r["data"] == d for r in rows)]
    colours = {"deep": "#1f77b4", "single": "#d62728"}
    titles = {
        "sim": "simulated donors, unseen type D",
        "pbmc": "PBMC 3k pseudo-samples, unseen B cells",
    }
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 5.4), squeeze=False)
    for ax, data in zip(axes[0], datasets, strict=True):
        rates = _label_rates if labels else _novelty_rates
        for kind in colours:
            mine = [r for r in rows if r["data"] == data and r["kind"] == kind]
            for score, (label, marker) in (FIGURE_LABELS if labels else FIGURE_SCORES).items():
                got = [g for r in mine if (g := rates(r, score))]
                if not got:
                    continue
                pts = 100 * np.array([[g["fpr_known"], g["tpr_unseen"]] for g in got])
                colour = colours[kind]
                name = {"deep": "deep K=4", "single": "one scVI"}[kind]
                ax.scatter(*pts.T, color=colour, marker=marker, alpha=0.35, s=22)
                ax.scatter(
                    *pts.mean(0),
                    color=colour,
                    marker=marker,
                    s=90,
                    edgecolor="black",
                    label=f"{name}: {label}",
                )
        ax.axvline(7, color="grey", ls="--", lw=1)
        ax.axhline(80, color="grey", ls=":", lw=1)
        ax.text(7.2, 2, "FPR target 7%", color="grey", fontsize=8)
        ax.text(0.3, 81.5, "TPR target 80%", color="grey", fontsize=8)
        seeds = sorted({r["seed"] for r in rows if r["data"] == data})
        epochs = sorted({r["epochs"] for r in rows if r["data"] == data})
        what = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds; large: mean"
        ax.set_title(f"{titles[data]}\n({what}; {'/'.join(map(str, epochs))} epochs)", fontsize=10)
        ax.set_xlabel("flagged known-type cells of new samples (%)")
        ax.set_ylabel("flagged unseen-type cells (%)")
        ax.set_xlim(0, 12)
        ax.set_ylim(0, 100)
    handles, labels = axes[0][0].get_legend_handles_labels()
    wide = len(datasets) > 1
    fig.legend(handles, labels, loc="lower center", ncol=2 if wide else 1, fontsize=8)
    what = "Label unknown rules" if labels else "Per-cell novelty rule"
    fig.suptitle(f"{what} at alpha 5%, calibrated on unseen samples", fontsize=11)
    fig.tight_layout(rect=(0, 0.2 if wide else 0.3, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["sim"], choices=["sim", "pbmc"])
    parser.add_argument("--pbmc", default="../shared/data/pbmc3k.h5ad")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--no-labels", action="store_true")
    parser.add_argument(
        "--labels-only",
        action="store_true",
        help="Only the label unknown rule (rows with 'labels' alone).",
    )
    parser.add_argument("--out", default="bench_new_sample.json")
    parser.add_argument(
        "--summarize", action="store_true", help="Print the tables of --out and stop."
    )
    parser.add_argument(
        "--figure", default=None, help="With --summarize: also draw the rates into this PNG."
    )
    parser.add_argument(
        "--label-figure", default=None, help="With --summarize: the label rules' rates (PNG)."
    )
    args = parser.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    if args.summarize:
        print(summarize(rows))
        if args.figure:
            figure(rows, args.figure)
        if args.label_figure:
            figure(rows, args.label_figure, labels=True)
        return
    done = {(r["data"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for data in args.data:
            if (data, seed) in done:
                continue
            if args.labels_only:
                rows += run_labels(data, args.pbmc, seed, args.epochs)
            else:
                rows += run_one(data, args.pbmc, seed, args.epochs, not args.no_labels)
            out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
