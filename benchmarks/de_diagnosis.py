"""Where does the default DE's FDR excess come from? A measured split, per data set.

The default DE (``population`` estimand, pooled members, ``P(|LFC| >= delta)``, expected-
FDR rule) is scored against the simulator's truth (median over (B, A) cell pairs of
``log2 h_B - log2 h_A`` on absolute rates ``h``); the model estimates the difference of
the groups' medians of ``log2(rho * 1e4 + 0.1)``, ``rho`` normalised. Measured per data
set, repetition and model:

1. the truth's definition: truth variants (normalised rates, group medians vs pairs,
   pseudocount), the genes whose status changes and the model's true FDR under each;
2. the oracle: the model's own estimator applied to the true rates of the cells the
   model used (normalised, per 1e4, + the same pseudocount), with no model;
3. the model's bias: pooled posterior median LFC minus the oracle LFC, in bins of the
   oracle |LFC|, and the fraction of null genes whose model |LFC| crosses delta;
4. the posterior's width: coverage of the oracle LFC by the 95% intervals (per member and
   pooled) and how ``proba_de`` is spread;
5. the decomposition of the false calls at each target into truth definition (the
   oracle calls the gene DE), bias (oracle null, model median |LFC| >= delta) and width
   (oracle null, model median below delta, called on the posterior's tail).

Data sets are pluggable (:data:`DATASETS`, or ``--h5ad NAME=PATH``): an AnnData with
counts, ``obs["cell_type"]`` holding ``A`` and ``B`` and ``var["is_de_B_vs_A"]``; without
``layers["true_rate"]`` only the calls' FDR against that truth is scored.

Reproduce: ``PYTHONPATH=src .venv/bin/python benchmarks/de_diagnosis.py --reps 1``
(records cached per data set and repetition under ``results/de_diagnosis/``, reused on a
rerun with the same settings; tables to ``docs/de_diagnosis.md``, numbers to
``results/de_diagnosis.json``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ensemblevi.model.base._de_lfc import lfc_posterior

LIBRARY_SIZE = 1e4  # as ensemblevi.model.base._de_core.LIBRARY_SIZE
PSEUDOCOUNT = 0.1  # as ensemblevi.model.base._de_core.PSEUDOCOUNT (per 1e4)
TARGETS = (0.05, 0.1, 0.2)
#: oracle |LFC| bins of part 3: (label, low, high)
BINS = (
    ("null, oracle < 0.2", 0.0, 0.2),
    ("null, oracle 0.2-0.3", 0.2, 0.3),
    ("null, oracle 0.3-0.5", 0.3, 0.5),
    ("DE, oracle >= 0.5", 0.5, np.inf),
)
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pure functions (tested)
def normalise(rate: np.ndarray, library: float = LIBRARY_SIZE) -> np.ndarray:
    """Rates divided by each cell's total rate, times ``library`` (what counts identify).

    Parameters
    ----------
    rate
        ``(cells, genes)`` non-negative rates.
    library
        Total of each normalised row.
    """
    r = np.asarray(rate, dtype=np.float64)
    return r / r.sum(1, keepdims=True) * library


def group_median_lfc(rate1: np.ndarray, rate2: np.ndarray, pseudocount: float = 0.0) -> np.ndarray:
    """The population estimator: ``median log2(rate1 + c) - median log2(rate2 + c)`` per gene.

    Parameters
    ----------
    rate1, rate2
        ``(cells, genes)`` rates of the two groups.
    pseudocount
        ``c``.
    """
    m1 = np.median(np.log2(np.asarray(rate1, np.float64) + pseudocount), axis=0)
    return m1 - np.median(np.log2(np.asarray(rate2, np.float64) + pseudocount), axis=0)


def pair_median_lfc(
    rate: np.ndarray,
    in1: np.ndarray,
    in2: np.ndarray,
    n_pairs: int,
    rng: np.random.Generator,
    pseudocount: float = 0.0,
) -> np.ndarray:
    """Median over random (group 1, group 2) cell pairs of the pair's log2 ratio.

    The simulator's truth with ``pseudocount=0`` and ``rng = default_rng([seed, 1])``
    (the same draws, in the same order, as ``ensemblevi.data.synthetic``).

    Parameters
    ----------
    rate
        ``(cells, genes)`` rates.
    in1, in2
        Boolean masks of the two groups.
    n_pairs
        Pairs drawn (cells with replacement).
    rng
        Draws the pairs.
    pseudocount
        Added before the log2.
    """
    i1 = rng.choice(np.flatnonzero(in1), size=n_pairs)
    i2 = rng.choice(np.flatnonzero(in2), size=n_pairs)
    r = np.asarray(rate, dtype=np.float64)
    return np.median(np.log2(r[i1] + pseudocount) - np.log2(r[i2] + pseudocount), axis=0)


def interval_coverage(draws: np.ndarray, target: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Whether the central ``level`` interval of the draws covers ``target``, per gene.

    Parameters
    ----------
    draws
        ``(..., N, G)`` posterior draws (``N`` along the second-to-last axis).
    target
        ``(G,)`` values to cover.
    level
        Interval mass (quantiles ``(1 - level) / 2`` and ``(1 + level) / 2``).
    """
    a = (1.0 - level) / 2
    lo, hi = np.quantile(draws, [a, 1.0 - a], axis=-2)
    return (lo <= target) & (target <= hi)


def bias_rows(
    model_lfc: np.ndarray, oracle_lfc: np.ndarray, called: np.ndarray, delta: float
) -> list[dict]:
    """Part 3: ``model - oracle`` LFC per bin of oracle |LFC| (:data:`BINS`).

    ``outward`` is the mean of ``sign(oracle) * (model - oracle)`` (> 0: the model pushes
    the gene away from 0, towards delta); ``crosses`` the fraction with model |LFC| >=
    ``delta``; ``called`` the fraction called.

    Parameters
    ----------
    model_lfc
        The model's point LFC per gene (pooled posterior median).
    oracle_lfc
        The oracle LFC per gene.
    called
        Boolean calls per gene (at one target).
    delta
        The DE threshold.
    """
    err = model_lfc - oracle_lfc
    size = np.abs(oracle_lfc)
    rows = []
    for label, lo, hi in BINS:
        m = (size >= lo) & (size < hi)
        n = int(m.sum())
        rows.append(
            {
                "genes": label,
                "n": n,
                "mean": float(err[m].mean()) if n else np.nan,
                "sd": float(err[m].std(ddof=1)) if n > 1 else np.nan,
                "outward": float((np.sign(oracle_lfc[m]) * err[m]).mean()) if n else np.nan,
                "crosses": float((np.abs(model_lfc[m]) >= delta).mean()) if n else np.nan,
                "called": float(called[m].mean()) if n else np.nan,
            }
        )
    return rows


def decompose(
    called: np.ndarray,
    proba: np.ndarray,
    model_lfc: np.ndarray,
    sim_truth: np.ndarray,
    oracle_lfc: np.ndarray,
    delta: float,
) -> dict:
    """Part 5: the calls' false discoveries against the simulator's truth, split by cause.

    Each false call (called, simulator null) is exactly one of: ``truth`` (the oracle has
    |LFC| >= delta: the model's estimand calls it DE on the true rates), ``bias`` (oracle
    null, the model's point |LFC| >= delta) or ``width`` (oracle null, point below delta:
    called on the posterior's tail). ``sim_only`` counts calls the simulator calls DE
    but the oracle does not (false under the oracle's truth only). FDRs are per call.

    Parameters
    ----------
    called
        Boolean calls.
    proba
        ``proba_de`` per gene (the expected FDR is the mean ``1 - p`` of the calls).
    model_lfc
        The model's point LFC per gene.
    sim_truth
        Boolean simulator truth.
    oracle_lfc
        The oracle LFC per gene.
    delta
        The DE threshold.
    """
    oracle_de = np.abs(oracle_lfc) >= delta
    big = np.abs(model_lfc) >= delta
    false = called & ~sim_truth
    n = int(called.sum())
    out = {
        "calls": n,
        "expected_fdr": float(np.mean(1.0 - proba[called])) if n else 0.0,
        "false": int(false.sum()),
        "truth": int((false & oracle_de).sum()),
        "bias": int((false & ~oracle_de & big).sum()),
        "width": int((false & ~oracle_de & ~big).sum()),
        "sim_only": int((called & sim_truth & ~oracle_de).sum()),
    }
    out["fdr_sim"] = out["false"] / n if n else 0.0
    out["fdr_oracle"] = int((called & ~oracle_de).sum()) / n if n else 0.0
    return out


def truth_variants(adata, seed: int, cells: tuple | None = None) -> dict[str, np.ndarray]:
    """Part 1 and 2: the B-vs-A LFC per gene under each definition of the truth.

    Parameters
    ----------
    adata
        A data set with ``layers["true_rate"]`` and ``obs["cell_type"]`` (``A``, ``B``).
    seed
        The data seed (the simulator's pairs are drawn by ``default_rng([seed, 1])``).
    cells
        ``(cells_B, cells_A)`` positions the model used; adds ``oracle (model's cells)``.
    """
    h = np.asarray(adata.layers["true_rate"], dtype=np.float64)
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    b, a = ct == "B", ct == "A"
    norm = normalise(h)
    n_pairs = int(adata.uns.get("synthetic", {}).get("params", {}).get("n_truth_pairs", 2000))

    def pairs(rate, c=0.0):
        return pair_median_lfc(rate, b, a, n_pairs, np.random.default_rng([seed, 1]), c)

    out = {}
    if "median_lfc_B_vs_A" in adata.var:
        out["simulator: pairs, absolute h"] = adata.var["median_lfc_B_vs_A"].to_numpy(float)
    if "lfc_B_vs_A" in adata.var:
        out["generating LFC (log2 mu_B / mu_A)"] = adata.var["lfc_B_vs_A"].to_numpy(float)
    out["pairs, absolute h (recomputed)"] = pairs(h)
    out["pairs, normalised h"] = pairs(norm)
    out["pairs, normalised h, +0.1"] = pairs(norm, PSEUDOCOUNT)
    out["group medians, absolute h"] = group_median_lfc(h[b], h[a])
    out["group medians, normalised h"] = group_median_lfc(norm[b], norm[a])
    out["oracle: group medians, normalised h, +0.1"] = group_median_lfc(
        norm[b], norm[a], PSEUDOCOUNT
    )
    if cells is not None:
        out["oracle (model's cells)"] = group_median_lfc(
            norm[cells[0]], norm[cells[1]], PSEUDOCOUNT
        )
    if "batch_effect" in adata.varm and adata.obs["batch"].nunique() > 1:
        beta = np.asarray(adata.varm["batch_effect"], dtype=np.float64).T  # (batches, genes)
        seen = normalise(h * beta[adata.obs["batch"].cat.codes.to_numpy()])
        sel = cells if cells is not None else (np.flatnonzero(b), np.flatnonzero(a))
        out["oracle, observed batch (model's cells)"] = group_median_lfc(
            seen[sel[0]], seen[sel[1]], PSEUDOCOUNT
        )
    return out


# ---------------------------------------------------------------- data sets and models
def _synthetic(preset: str, seed: int):
    from ensemblevi import data

    return data.synthetic(preset, seed=seed)


#: name -> loader(seed) -> AnnData; add a real-count set with ``--h5ad NAME=PATH``
DATASETS: dict[str, Callable] = {p: partial(_synthetic, p) for p in ("lopez2020", "draft", "hard")}


def _h5ad(path: str) -> Callable:
    def load(seed: int):  # the same data every repetition (only the models' seeds change)
        import anndata as ad

        adata = ad.read_h5ad(path)
        adata.layers["counts"] = adata.layers.get("counts", adata.X).copy()
        return adata

    return load


ORACLE = "oracle (model's cells)"
SINGLE = "single VAE (deep member 0)"
MODELS = {"deep K=4": ("deep", 4), "BatchEnsemble K=4": ("batch", 4)}


def _member_stats(draws: np.ndarray, oracle: np.ndarray, null: np.ndarray) -> dict:
    cov = interval_coverage(draws, oracle)  # (K, G)
    pooled = interval_coverage(draws.reshape(1, -1, draws.shape[-1]), oracle)[0]
    width = np.diff(np.quantile(draws, [0.025, 0.975], axis=1), axis=0)[0]  # (K, G)
    pooled_w = np.diff(np.quantile(draws.reshape(-1, draws.shape[-1]), [0.025, 0.975], 0), axis=0)
    return {
        "coverage_member_null": float(cov[:, null].mean()),
        "coverage_member_de": float(cov[:, ~null].mean()),
        "coverage_pooled_null": float(pooled[null].mean()),
        "coverage_pooled_de": float(pooled[~null].mean()),
        "width_member": float(np.median(width)),
        "width_pooled": float(np.median(pooled_w)),
    }


def analyse(draws: np.ndarray, adata, variants: dict, delta: float, oracle_key: str) -> dict:
    """Parts 1-5 for one model's LFC draws ``(K, N, G)``.

    Parameters
    ----------
    draws
        The model's population LFC draws.
    adata
        The data set (``var["is_de_B_vs_A"]`` is the simulator truth).
    variants
        :func:`truth_variants` (empty without true rates).
    delta
        The DE threshold.
    oracle_key
        The variant used as the oracle.
    """
    from ensemblevi.benchmark._scoring import true_fdr
    from ensemblevi.model.base._de_calls import fdr_calls, summarise_lfc

    table = summarise_lfc(draws, delta, 0.05, list(adata.var_names))
    proba, point = table["proba_de"].to_numpy(), table["lfc_median"].to_numpy()
    sim = adata.var["is_de_B_vs_A"].to_numpy(bool)
    calls = {t: fdr_calls(proba, t) for t in TARGETS}
    rec: dict = {"truths": {}}
    for name, lfc in variants.items():
        truth = np.abs(lfc) >= delta
        rec["truths"][name] = {
            "changed": int((truth != sim).sum()),
            "n_de": int(truth.sum()),
            **{f"fdr@{t:g}": true_fdr(calls[t], truth) for t in TARGETS},
        }
    rec["calls"] = {f"{t:g}": int(c.sum()) for t, c in calls.items()}
    mid = (proba >= 0.05) & (proba <= 0.95)
    rec["proba"] = {
        "mid_frac": float(mid.mean()),
        "mid_null_frac": float(mid[~sim].mean()),
        "mid_de_frac": float(mid[sim].mean()),
    }
    if oracle_key not in variants:
        return rec
    oracle = variants[oracle_key]
    null = np.abs(oracle) < delta
    rec["bias"] = bias_rows(point, oracle, calls[0.05], delta)
    rec["width"] = _member_stats(draws, oracle, null)
    rec["decomposition"] = {
        f"{t:g}": decompose(calls[t], proba, point, sim, oracle, delta) for t in TARGETS
    }
    return rec


def run_one(name: str, loader: Callable, rep: int, cfg: dict, models: list[str], log=print):
    """Train the models on one data set and analyse their DE; a JSON-able record.

    Parameters
    ----------
    name, loader
        The data set and its loader.
    rep
        Repetition: data seed and model seed.
    cfg
        ``epochs``, ``lr``, ``n_hidden``, ``n_samples``, ``delta``.
    models
        Keys of :data:`MODELS`.
    log
        Progress printer.
    """
    from ensemblevi.benchmark._runs import train_timed
    from ensemblevi.benchmark._scoring import tpr, true_fdr
    from ensemblevi.model import EnsembleSCVI

    adata = loader(rep)
    batch_key = "batch" if "batch" in adata.obs and adata.obs["batch"].nunique() > 1 else None
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key=batch_key)
    delta = cfg["delta"]
    rec = {
        "dataset": name,
        "rep": rep,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_de": int(adata.var["is_de_B_vs_A"].sum()),
        "models": {},
    }
    has_rates = "true_rate" in adata.layers
    base = truth_variants(adata, rep) if has_rates else {}
    if has_rates:
        sim = adata.var["is_de_B_vs_A"].to_numpy(bool)
        big = {k: np.abs(v) >= delta for k, v in base.items()}
        rec["oracle_vs_sim"] = {
            k: {
                "changed": int((big[k] != sim).sum()),
                "fdr": true_fdr(big[k], sim),
                "tpr": tpr(big[k], sim),
                "null_median_lfc": float(np.median(v[~sim])),
            }
            for k, v in base.items()
        }
    epochs = cfg["epochs"][name] if name in cfg["epochs"] else 100
    for label in models:
        kind, k = MODELS[label]
        t0 = time.perf_counter()
        model, secs = train_timed(adata, kind, k, rep, epochs, cfg["lr"], n_hidden=cfg["n_hidden"])
        draws, info = lfc_posterior(
            model,
            adata,
            "cell_type",
            "B",
            "A",
            progress=False,
            n_samples=cfg["n_samples"],
            seed=rep,
        )
        cells = (np.asarray(info["cells1"]), np.asarray(info["cells2"]))
        variants = truth_variants(adata, rep, cells) if has_rates else {}
        rec["models"][label] = analyse(draws, adata, variants, delta, ORACLE)
        rec["models"][label]["train_seconds"] = secs
        if kind == "deep":  # member 0 of a deep ensemble is a single scVI network
            rec["models"][SINGLE] = analyse(draws[:1], adata, variants, delta, ORACLE)
        log(f"    {label}: trained {secs:.0f} s, total {time.perf_counter() - t0:.0f} s")
    return rec


# ---------------------------------------------------------------- markdown
def _md(frame: pd.DataFrame, digits: int = 3) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [
            f"{v:.{digits}f}" if isinstance(v, float) else str(v).replace("|", "\\|") for v in row
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean(frames: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    long = pd.concat(frames, ignore_index=True)
    return long.groupby(keys, sort=False).mean(numeric_only=True).reset_index()


def frames(records: list[dict]) -> dict[str, pd.DataFrame]:
    """The records of :func:`run_one` as long tables, one per part."""
    parts: dict[str, list[dict]] = {k: [] for k in ("truth", "oracle", "bias", "width", "split")}
    for r in records:
        key = {"dataset": r["dataset"], "rep": r["rep"]}
        for v, o in r.get("oracle_vs_sim", {}).items():
            parts["oracle"].append({**key, "truth": v, **o})
        for m, mr in r["models"].items():
            mk = {**key, "model": m}
            for v, o in mr["truths"].items():
                parts["truth"].append({**mk, "truth": v, **o})
            for row in mr.get("bias", []):
                parts["bias"].append({**mk, **row})
            if "width" in mr:
                parts["width"].append({**mk, **mr["width"], **mr["proba"]})
            for t, d in mr.get("decomposition", {}).items():
                parts["split"].append({**mk, "target": float(t), **d})
    return {k: pd.DataFrame(v) for k, v in parts.items()}


def _reading(split: pd.DataFrame, bias: pd.DataFrame, width: pd.DataFrame) -> list[str]:
    """Computed sentences per model at the 5% target: how the excess splits."""
    out = []
    for _, r in split[split["target"] == 0.05].iterrows():
        f, excess = max(r["false"], 1e-12), r["fdr_sim"] - r["expected_fdr"]
        near = bias[(bias["model"] == r["model"]) & (bias["genes"] == BINS[2][0])]
        w = width[width["model"] == r["model"]].iloc[0]
        err_sd = float(near["sd"].iloc[0])
        ratio = err_sd / (w["width_pooled"] / (2 * 1.959964))  # a normal's 95%: 3.92 sd
        share = (r["fdr_sim"] - r["fdr_oracle"]) / excess if excess > 0.005 else np.nan
        out.append(
            f"- {r['model']}: at 5% the true FDR is {r['fdr_sim']:.3f} against the simulator "
            f"and {r['fdr_oracle']:.3f} against the oracle, expected {r['expected_fdr']:.3f}"
            + (
                f": the truth's definition accounts for {share:.0%} of the excess (< 0: the "
                "oracle's truth makes it larger), the model for the rest."
                if excess > 0.005
                else ": no excess."
            )
            + f" Of {r['false']:.1f} false calls {r['truth'] / f:.0%} are the truth's "
            f"definition, {r['bias'] / f:.0%} bias (point |LFC| past delta), "
            f"{r['width'] / f:.0%} width. On nulls with oracle |LFC| in [0.3, 0.5) the point "
            f"error has sd {err_sd:.3f}, outward mean {float(near['outward'].iloc[0]):+.3f} (< 0: "
            "towards 0), "
            f"{ratio:.1f}x the pooled posterior sd and "
            f"{ratio * w['width_pooled'] / w['width_member']:.1f}x a member's (normal "
            "approximation of the 95% widths); the pooled 95% interval covers the oracle for "
            f"{w['coverage_pooled_null']:.0%} of the nulls."
        )
        if excess > 0.005:
            out.append(
                "  Points to: "
                + (
                    "the truth (score against the model's estimand on normalised rates)."
                    if share >= 0.5
                    else "the posterior, not the estimand: the model's per-gene LFC error is wider "
                    "than its posterior, so the posterior (or proba_de) needs that error added, "
                    f"e.g. intervals about {ratio:.1f}x wider here."
                )
            )
    return out


def report(records: list[dict], command: str, settings: dict) -> str:
    """The markdown report (means over repetitions).

    Parameters
    ----------
    records
        Records of :func:`run_one`.
    command
        The command that reproduces it.
    settings
        The run's settings (printed).
    """
    f = frames(records)
    lines = [
        "# Diagnosis of the default DE's FDR excess",
        "",
        "Written by `benchmarks/de_diagnosis.py` (do not edit by hand). Reproduce with:",
        "",
        f"    {command}",
        "",
        f"Settings: `{settings}`. Numbers are means over the repetitions listed per data "
        "set. The simulator truth is `var['is_de_B_vs_A']` (median over 2,000 random "
        "(B, A) cell pairs of log2 h_B - log2 h_A on absolute latent rates, |.| >= delta). "
        "The oracle is the model's own estimator (difference of the groups' medians of "
        "log2(normalised rate per 1e4 + 0.1)) on the true rates of the cells the model used. "
        "The model's LFC is the pooled posterior median; calls use the expected-FDR rule.",
        "",
        "Columns. Part 1: `changed` genes whose DE status differs from the simulator's, "
        "`fdr@t` the true FDR of the model's calls at target t under that truth. Part 2: "
        "`fdr`/`tpr` of the variant's own calls (|LFC| >= delta, no model) scored against "
        "the simulator truth, `null_median_lfc` its median LFC over simulator-null genes. "
        "Part 3: `mean`/`sd` of model - oracle LFC, `outward` the mean of sign(oracle) x "
        "(model - oracle) (> 0 pushes genes towards delta), `crosses` the fraction with "
        "model |LFC| >= delta, `called` the fraction called at 5%. Part 4: coverage of the "
        "oracle by the 95% interval of each member (mean over members) and of the pooled "
        "draws, the "
        "median interval width, and the fraction of genes with 0.05 <= proba_de <= 0.95. "
        "Part 5: false calls (against the simulator) split into `truth` (oracle |LFC| >= "
        "delta), `bias` (oracle null, model |LFC| >= delta) and `width` (oracle null, model "
        "|LFC| < delta); `sim_only` calls DE for the simulator but null for the oracle.",
        "",
    ]
    for ds in dict.fromkeys(r["dataset"] for r in records):
        reps = sorted(r["rep"] for r in records if r["dataset"] == ds)
        lines += [f"## {ds} (repetitions: {reps})", ""]

        def sub(name, keys, drop=("rep",), ds=ds):
            fr = f[name]
            if fr.empty:
                return fr
            fr = fr[fr["dataset"] == ds].drop(columns=["dataset", *drop])
            return _mean([fr], keys)

        if not f["oracle"].empty and (f["oracle"]["dataset"] == ds).any():
            lines += [
                "### 2. Truth variants and the oracle, scored against the simulator "
                "truth (no model)",
                "",
                _md(sub("oracle", ["truth"])),
                "",
            ]
        t = sub("truth", ["model", "truth"])
        lines += ["### 1. The model's calls under each truth", "", _md(t), ""]
        for name, title, keys in (
            ("bias", "### 3. Model minus oracle LFC (bias)", ["model", "genes"]),
            ("width", "### 4. Posterior width and proba_de", ["model"]),
            ("split", "### 5. False calls split by cause", ["model", "target"]),
        ):
            fr = sub(name, keys)
            if not fr.empty:
                lines += [title, "", _md(fr), ""]
        if not f["split"].empty and (f["split"]["dataset"] == ds).any():
            reading = _reading(
                sub("split", ["model", "target"]),
                sub("bias", ["model", "genes"]),
                sub("width", ["model"]),
            )
            lines += ["### Reading (computed)", "", *reading, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the diagnosis and write the report (``argv``: the command line, see ``--help``)."""
    from ensemblevi._files import write_json, write_text
    from ensemblevi.benchmark._fdr import EPOCHS
    from ensemblevi.benchmark._runs import cached, save

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--h5ad", nargs="*", default=[], help="NAME=PATH real-count data sets")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--n-samples", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--md", default=str(ROOT / "docs" / "de_diagnosis.md"))
    ap.add_argument("--no-train", action="store_true", help="only report saved records")
    args = ap.parse_args(argv)
    datasets = {k: DATASETS[k] for k in args.datasets}
    for spec in args.h5ad:
        name, path = spec.split("=", 1)
        datasets[name] = _h5ad(path)
    cfg = {
        "epochs": dict(EPOCHS),
        "lr": 5e-3,
        "n_hidden": 128,
        "n_samples": args.n_samples,
        "delta": 0.5,
        "models": list(args.models),
    }
    out = Path(args.out) / "de_diagnosis"
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for rep in range(args.reps):
        for name, loader in datasets.items():
            path = out / f"{name}_rep{rep}.json"
            rec = cached(path, cfg)
            if rec is None and args.no_train:
                continue
            if rec is None:
                print(f"  {name} rep {rep}:", flush=True)
                rec = {**run_one(name, loader, rep, cfg, args.models), "settings": cfg}
                save(path, rec)
            records.append(rec)
    if not records:
        raise SystemExit("no records")
    order = {k: i for i, k in enumerate(datasets)}
    records.sort(key=lambda r: (order.get(r["dataset"], 99), r["rep"]))
    cmd = (
        "PYTHONPATH=src .venv/bin/python benchmarks/de_diagnosis.py --reps "
        f"{args.reps} --datasets {' '.join(args.datasets)} --models "
        + " ".join(f"'{m}'" for m in args.models)
    )
    write_json(Path(args.out) / "de_diagnosis.json", records)
    write_text(args.md, report(records, cmd, cfg))
    print(f"wrote {args.md} and {Path(args.out) / 'de_diagnosis.json'}")


if __name__ == "__main__":
    main()
