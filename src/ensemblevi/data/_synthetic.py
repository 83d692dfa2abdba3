"""Poisson-log-normal simulator with ground truth for DE and uncertainty benchmarks.

The generator is the one of Lopez et al. (NeurIPS 2020) and of the project's paper draft
(see ``shared/docs/decisions.md``), generalised to any number of cell types, batches,
library-size variation, zero inflation and marker genes. Everything that generated a
dataset is stored in ``adata.uns["synthetic"]``, so ``synthetic(**uns["params"],
seed=uns["seed"])`` rebuilds it bit for bit.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

UNS_KEY = "synthetic"
_CHUNK = 2048  # cells simulated at a time: bounds the dense working set to _CHUNK x n_genes
_LN2 = float(np.log(2.0))

#: Every parameter of the generator with its default. Log-fold changes are log2; the
#: library-size and batch-effect standard deviations are on the natural-log scale.
DEFAULTS: dict[str, Any] = {
    "n_cells": 1000,
    "n_genes": 500,
    "n_types": 2,
    "type_names": [],  # empty: "A", "B", ...; the first type is the reference
    "type_proportions": [],  # empty: equal
    "de_frac": 0.5,  # fraction of genes DE for each type against the reference
    "effect_scale": 3.0,  # S: DE genes have LFC ~ N(+-S/2, effect_std^2)
    "effect_std": 0.16,
    "null_std": 0.0,  # non-DE genes have LFC ~ N(0, null_std^2)
    "base_mean_low": 10.0,
    "base_mean_high": 100.0,
    "base_mean_dist": "uniform",  # or "loguniform"
    "sigma_scale": 1.0,  # Sigma = sigma_scale * ((0.5 + u) I + 2 a a^T)
    "library_sd": 0.0,
    "zero_inflation": 0.0,
    "n_batches": 1,
    "batch_effect_std": 0.0,
    "n_markers": 0,  # marker genes per type, strongly up in that type only
    "marker_lfc": 3.0,
    "named_markers": {},  # {type: [gene names]} given to a type's first marker genes
    "delta": 0.5,  # |population LFC| >= delta makes a gene DE in the ground truth
    "truth_pairs": "all",  # "all" type pairs or only each type "reference" pairs
    "n_truth_pairs": 2000,  # sampled cell pairs for the population ground truth
}

_HEART_TYPES = [
    "Ventricular_Cardiomyocyte",
    "Fibroblast",
    "Endothelial",
    "Pericytes",
    "Myeloid",
    "Smooth_muscle_cells",
    "Lymphoid",
    "Atrial_Cardiomyocyte",
    "Adipocytes",
    "Neuronal",
    "Mesothelial",
]

#: Named parameter sets. ``lopez2020`` and ``draft`` follow decisions.md; ``hard`` puts
#: effects near delta with fewer cells, batches and zero inflation so that methods separate;
#: ``heartlike`` has the heart atlas subsample's size and composition, for speed work.
PRESETS: dict[str, dict[str, Any]] = {
    "lopez2020": {
        "n_cells": 1000,
        "n_genes": 100,
        "n_types": 2,
        "de_frac": 0.5,
        "effect_scale": 2.0,
        "effect_std": 0.16,
        "null_std": 0.16,
        "base_mean_low": 10.0,
        "base_mean_high": 60.0,
        "sigma_scale": 0.08,
        "zero_inflation": 0.3,
    },
    "draft": {
        "n_cells": 1000,
        "n_genes": 500,
        "n_types": 2,
        "de_frac": 0.5,
        "effect_scale": 3.0,
        "effect_std": 0.16,
        "base_mean_low": 10.0,
        "base_mean_high": 100.0,
        "sigma_scale": 1.0,
    },
    "hard": {
        "n_cells": 400,
        "n_genes": 2000,
        "n_types": 3,
        "type_proportions": [0.5, 0.3, 0.2],
        "de_frac": 0.2,
        "effect_scale": 1.4,  # |LFC| ~ 0.7 against delta = 0.5
        "effect_std": 0.25,
        "null_std": 0.16,
        "base_mean_low": 0.5,
        "base_mean_high": 50.0,
        "base_mean_dist": "loguniform",
        "sigma_scale": 0.25,
        "library_sd": 0.3,
        "zero_inflation": 0.4,
        "n_batches": 3,
        "batch_effect_std": 0.3,
    },
    "heartlike": {
        "n_cells": 18641,
        "n_genes": 1200,
        "n_types": 11,
        "type_names": _HEART_TYPES,
        "type_proportions": [0.30, 0.20, 0.15, 0.12, 0.07, 0.05, 0.03, 0.03, 0.02, 0.02, 0.01],
        "de_frac": 0.1,
        "effect_scale": 2.0,
        "effect_std": 0.3,
        "null_std": 0.05,
        "base_mean_low": 0.05,
        "base_mean_high": 20.0,
        "base_mean_dist": "loguniform",
        "sigma_scale": 0.1,
        "library_sd": 0.4,
        "zero_inflation": 0.05,
        "n_batches": 4,
        "batch_effect_std": 0.2,
        "n_markers": 5,
        "marker_lfc": 3.0,
        "named_markers": {
            "Fibroblast": ["DCN", "GSN", "PDGFRA"],
            "Smooth_muscle_cells": ["MYH11", "TAGLN", "ACTA2"],
            "Myeloid": ["CD14", "C1QA", "CD68"],
        },
        "truth_pairs": "reference",
    },
}


def resolve_params(preset: str | None = "draft", **overrides: Any) -> dict[str, Any]:
    """Defaults, then the preset, then ``overrides``; unknown names raise a ``ValueError``.

    Parameters
    ----------
    preset
        A preset name, or ``None`` for the defaults.
    **overrides
        Parameters that replace the preset's.
    """
    params = copy.deepcopy(DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        params.update(copy.deepcopy(PRESETS[preset]))
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown simulator parameter(s) {unknown}; valid: {sorted(DEFAULTS)}.")
    params.update(copy.deepcopy(overrides))
    _check_params(params)
    return params


def _check_params(p: dict[str, Any]) -> None:
    def bad(msg: str) -> None:
        raise ValueError(f"Invalid simulator parameters: {msg}")

    if int(p["n_types"]) < 2:
        bad("n_types must be >= 2 (DE needs two cell types).")
    if int(p["n_cells"]) < int(p["n_types"]) or int(p["n_genes"]) < 1:
        bad("need n_cells >= n_types and n_genes >= 1.")
    if p["type_names"] and len(p["type_names"]) != p["n_types"]:
        bad(f"type_names has {len(p['type_names'])} names for n_types={p['n_types']}.")
    if p["type_proportions"] and len(p["type_proportions"]) != p["n_types"]:
        bad(f"type_proportions has {len(p['type_proportions'])} entries, n_types={p['n_types']}.")
    if not 0 <= p["de_frac"] <= 1 or not 0 <= p["zero_inflation"] < 1:
        bad("de_frac must be in [0, 1] and zero_inflation in [0, 1).")
    if not 0 < p["base_mean_low"] <= p["base_mean_high"]:
        bad("need 0 < base_mean_low <= base_mean_high.")
    if p["base_mean_dist"] not in ("uniform", "loguniform"):
        bad("base_mean_dist must be 'uniform' or 'loguniform'.")
    if p["truth_pairs"] not in ("all", "reference"):
        bad("truth_pairs must be 'all' or 'reference'.")
    if int(p["n_batches"]) < 1:
        bad("n_batches must be >= 1.")
    if int(p["n_markers"]) * int(p["n_types"]) > int(p["n_genes"]):
        bad("n_markers * n_types exceeds n_genes.")
    for key in ("effect_std", "null_std", "sigma_scale", "library_sd", "batch_effect_std"):
        if p[key] < 0:
            bad(f"{key} must be >= 0.")


def _type_names(p: Mapping[str, Any]) -> list[str]:
    if p["type_names"]:
        return [str(t) for t in p["type_names"]]
    letters = string.ascii_uppercase
    n = int(p["n_types"])
    return list(letters[:n]) if n <= 26 else [f"T{i}" for i in range(n)]


def synthetic(
    preset: str | None = "draft", seed: int = 0, lean: bool = False, **overrides: Any
) -> AnnData:
    """Simulate counts from a Poisson-log-normal model with known DE genes.

    Cell ``n`` of type ``c`` has latent rates
    ``log h_n ~ N(log mu_c, Sigma)``, ``Sigma = s ((0.5 + u) I + 2 a a^T)``, with
    ``log2 mu_c = log2 mu_ref + L_c`` (``L_ref = 0`` apart from markers) and counts
    ``x_ng ~ Poisson(l_n * beta_{b_n, g} * h_ng)``, zeroed with probability
    ``zero_inflation``. ``l_n`` is a mean-one log-normal library factor and ``beta`` a
    multiplicative batch effect.

    Parameters
    ----------
    preset
        One of :data:`PRESETS` (``lopez2020``, ``draft``, ``hard``, ``heartlike``), or
        ``None`` for :data:`DEFAULTS` alone.
    seed
        Seed; the same seed and parameters give the same dataset.
    lean
        Atlas-size mode: the counts only in ``X`` (no ``layers["counts"]`` copy, no dense
        ``layers["true_rate"]``, no ``median_lfc_*``/``is_de_*`` truth, which needs the
        rates), so memory is the sparse counts plus one chunk. The counts are those of the
        full mode for the same seed.
    **overrides
        Any key of :data:`DEFAULTS`.

    Returns
    -------
    AnnData
        ``X`` and ``layers["counts"]``: counts (CSR, float32); ``layers["true_rate"]``: h;
        ``obs``: ``cell_type``, ``batch``, ``size_factor``; ``var``: ``base_mean``,
        ``marker_of`` and per type pair ``lfc_<a>_vs_<b>`` (generating log2 fold change),
        ``median_lfc_<a>_vs_<b>`` (median over sampled cell pairs of
        ``log2 h_a - log2 h_b``) and ``is_de_<a>_vs_<b>`` (``|median_lfc| >= delta``);
        ``varm["batch_effect"]``; ``uns["synthetic"]``: preset, seed, all parameters,
        reference type, type pairs and marker genes.
    """
    p = resolve_params(preset, **overrides)
    rng = np.random.default_rng(seed)
    n_cells, n_genes, n_types = int(p["n_cells"]), int(p["n_genes"]), int(p["n_types"])
    types = _type_names(p)

    props = np.asarray(p["type_proportions"] or np.full(n_types, 1.0 / n_types), dtype=float)
    props = props / props.sum()
    # Every type gets at least one cell so that each pair's ground truth is defined.
    cell_type = np.concatenate(
        [np.arange(n_types), rng.choice(n_types, size=n_cells - n_types, p=props)]
    )
    rng.shuffle(cell_type)

    lo, hi = float(p["base_mean_low"]), float(p["base_mean_high"])
    if p["base_mean_dist"] == "uniform":
        base_mean = rng.uniform(lo, hi, size=n_genes)
    else:
        base_mean = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n_genes))

    # Per-type log2 fold changes against the reference type (row 0).
    lfc = np.zeros((n_types, n_genes))
    status = np.zeros((n_types, n_genes), dtype=np.int8)
    n_de = round(float(p["de_frac"]) * n_genes)
    for t in range(1, n_types):
        de = rng.permutation(n_genes)[:n_de]
        status[t, de] = rng.choice(np.array([-1, 1], dtype=np.int8), size=n_de)
        lfc[t] = rng.normal(0.0, float(p["null_std"]), size=n_genes)
        lfc[t, de] = status[t, de] * p["effect_scale"] / 2 + rng.normal(
            0.0, float(p["effect_std"]), size=n_de
        )

    gene_names = np.array([f"gene_{g:05d}" for g in range(n_genes)], dtype=object)
    marker_of = np.full(n_genes, "", dtype=object)
    markers: dict[str, list[str]] = {}
    n_markers = int(p["n_markers"])
    if n_markers:
        chosen = rng.permutation(n_genes)[: n_markers * n_types].reshape(n_types, n_markers)
        for t, name in enumerate(types):
            lfc[t, chosen[t]] += float(p["marker_lfc"])
            named = list(p["named_markers"].get(name, []))[:n_markers]
            gene_names[chosen[t, : len(named)]] = named
            marker_of[chosen[t]] = name
            markers[name] = [str(g) for g in gene_names[chosen[t]]]
    if len(set(gene_names)) != n_genes:
        raise ValueError("named_markers clash with generated gene names; use other names.")

    s = float(p["sigma_scale"])
    u = rng.uniform(-0.25, 0.25, size=n_genes)
    a = rng.uniform(-1.0, 1.0, size=n_genes)
    diag_sd = np.sqrt(s * (0.5 + u))
    rank1 = np.sqrt(2.0 * s) * a  # Sigma = diag(diag_sd^2) + rank1 rank1^T

    n_batches = int(p["n_batches"])
    batch = rng.integers(0, n_batches, size=n_cells)
    batch_effect = np.exp(rng.normal(0.0, float(p["batch_effect_std"]), (n_batches, n_genes)))
    lib_sd = float(p["library_sd"])
    size_factor = np.exp(rng.normal(-(lib_sd**2) / 2, lib_sd, size=n_cells))

    log_mu = np.log(base_mean)[None, :] + lfc * _LN2  # (types, genes), natural log
    zi = float(p["zero_inflation"])
    true_rate = None if lean else np.empty((n_cells, n_genes), dtype=np.float32)
    blocks = []
    for start in range(0, n_cells, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n_cells))
        m = sl.stop - sl.start
        log_h = (
            log_mu[cell_type[sl]]
            + diag_sd * rng.standard_normal((m, n_genes))
            + rng.standard_normal((m, 1)) * rank1
        )
        h = np.exp(log_h)
        if true_rate is not None:
            true_rate[sl] = h
        x = rng.poisson(h * (size_factor[sl, None] * batch_effect[batch[sl]]))
        if zi > 0:
            x[rng.random((m, n_genes)) < zi] = 0
        blocks.append(sp.csr_matrix(x.astype(np.float32)))
    counts = sp.vstack(blocks, format="csr")

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_type, categories=types),
            "batch": pd.Categorical.from_codes(
                batch, categories=[f"batch{b}" for b in range(n_batches)]
            ),
            "size_factor": size_factor.astype(np.float32),
        },
        index=pd.Index([f"cell_{i:06d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(
        {"base_mean": base_mean.astype(np.float32), "marker_of": marker_of.astype(str)},
        index=pd.Index(gene_names.astype(str)),
    )

    if p["truth_pairs"] == "all":
        pairs = [(types[j], types[i]) for i in range(n_types) for j in range(i + 1, n_types)]
    else:
        pairs = [(types[t], types[0]) for t in range(1, n_types)]
    truth_rng = np.random.default_rng([seed, 1])  # independent of the data stream
    delta = float(p["delta"])
    code = {t: i for i, t in enumerate(types)}
    n_pairs = int(p["n_truth_pairs"])
    for ta, tb in pairs:
        ia, ib = code[ta], code[tb]
        var[f"lfc_{ta}_vs_{tb}"] = (lfc[ia] - lfc[ib]).astype(np.float32)
        if true_rate is None:
            continue
        med = _median_pair_lfc(true_rate, cell_type == ia, cell_type == ib, n_pairs, truth_rng)
        var[f"median_lfc_{ta}_vs_{tb}"] = med.astype(np.float32)
        var[f"is_de_{ta}_vs_{tb}"] = np.abs(med) >= delta

    adata = AnnData(X=counts, obs=obs, var=var)
    if true_rate is not None:
        adata.layers["counts"] = counts.copy()
        adata.layers["true_rate"] = true_rate
    adata.varm["batch_effect"] = batch_effect.T.astype(np.float32)
    adata.uns[UNS_KEY] = {
        "preset": preset if preset is not None else "none",
        "seed": int(seed),
        "lean": bool(lean),
        "params": _storable(p),
        "reference": types[0],
        "cell_types": types,
        "pairs": [f"{ta}_vs_{tb}" for ta, tb in pairs],
        "delta": delta,
        "markers": markers,
    }
    return adata


def _median_pair_lfc(
    rate: np.ndarray, in_a: np.ndarray, in_b: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> np.ndarray:
    """Population LFC of Lopez et al.: median over random (a, b) cell pairs of log2 h_a - log2 h_b.

    A gene is then DE at level delta when log2 h_a - log2 h_b >= delta (or <= -delta) for at
    least half of the pairs, i.e. when |median| >= delta.
    """
    ia = rng.choice(np.flatnonzero(in_a), size=n_pairs)
    ib = rng.choice(np.flatnonzero(in_b), size=n_pairs)
    diff = np.log2(rate[ia].astype(np.float64)) - np.log2(rate[ib].astype(np.float64))
    return np.median(diff, axis=0)


def _storable(p: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters in a form h5ad can store and :func:`synthetic` reads back."""
    out: dict[str, Any] = {}
    for k, v in p.items():
        if isinstance(v, Mapping):
            out[k] = {str(kk): [str(x) for x in vv] for kk, vv in v.items()}
        elif isinstance(v, list | tuple):
            out[k] = list(v)
        else:
            out[k] = v
    return out


def params_from_uns(adata: AnnData) -> dict[str, Any]:
    """The generating parameters stored by :func:`synthetic`, ready to pass back to it.

    Parameters
    ----------
    adata
        A data set written by :func:`synthetic`.
    """
    if UNS_KEY not in adata.uns:
        raise ValueError(f"adata.uns has no {UNS_KEY!r} entry: this is not a synthetic dataset.")
    stored = adata.uns[UNS_KEY]["params"]
    out: dict[str, Any] = {}
    for k, default in DEFAULTS.items():
        v = stored.get(k, default)
        if isinstance(default, list):
            v = [x.item() if hasattr(x, "item") else x for x in np.asarray(v).tolist()]
        elif isinstance(default, dict):
            v = {str(kk): [str(x) for x in np.asarray(vv).tolist()] for kk, vv in dict(v).items()}
        elif isinstance(default, bool | int | float | str):
            v = type(default)(v.item() if hasattr(v, "item") else v)
        out[k] = v
    return out
