"""Does the default DE's FDR hold? The ``counts`` estimand against the model alone, 5 reps.

Per data set (simulator presets ``lopez2020``, ``draft``, ``hard``; with ``--pbmc`` the
real-count sets ``pbmc_thinning`` and ``pbmc_null``) and repetition (the seed of the data
and the models), the suite's models are trained (saved under ``--models`` and reused):
a deep ensemble of 4 (its member 0 is the single VAE), BatchEnsemble and
Hyper-BatchEnsemble of 4 (``--kinds``). Each is scored, B against A at delta 0.5, by

- ``counts`` (the default ``differential_expression``: the groups' mean normalised counts,
  empirical Bayes within strata of the model's P(|LFC| >= delta);
  ``ensemblevi.model.base._de_counts``), with strata from that model;
- ``population`` (the model alone: the earlier default);
- ``counts, no strata`` (the same empirical Bayes with one stratum: no model at all);
- Wilcoxon + Benjamini-Hochberg with the |LFC| >= delta filter (scanpy).

against two truths: the simulator's (``var["is_de_B_vs_A"]``: pairs of cells on absolute
rates) and the normalised one (``|log2 mean rho_B - log2 mean rho_A| >= delta`` with
``rho`` the true rates normalised per cell, per 1e4, plus the pseudocount 0.1: what counts
identify). On ``pbmc_thinning`` both are the data set's own truth (normalised expected
expression); on ``pbmc_null`` every call is false. The records are JSON files under
``--out`` and the Markdown tables go to ``--md``.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_de_calibration.py --reps 5
--pbmc ../shared/data/pbmc3k.h5ad``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ensemblevi.model.base._de_lfc import lfc_posterior

TARGETS = (0.05, 0.1, 0.2)
KIND_LABELS = {"deep": "deep K=4", "batch": "BatchEnsemble K=4", "hyperbatch": "HBE K=4"}


def normalised_truth(adata, delta: float, pseudocount: float = 0.1) -> np.ndarray | None:
    if "true_rate" not in adata.layers:
        return None
    h = np.asarray(adata.layers["true_rate"], dtype=np.float64)
    rho = h / h.sum(1, keepdims=True) * 1e4
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    lfc = np.log2(rho[ct == "B"].mean(0) + pseudocount) - np.log2(
        rho[ct == "A"].mean(0) + pseudocount
    )
    return np.abs(lfc) >= delta


def model_errors(adata, draws: np.ndarray, info: dict, pseudocount: float = 0.1) -> dict:
    """How far the model's population LFC is from the truth, and whether members share it.

    Simulators: against the oracle (the same estimand, group medians of log2 normalised
    true rates + 0.1, on the cells the model used); ``pbmc_thinning``: against the data
    set's normalised truth (a mean, not a median: only an approximation there).
    """
    members = draws.mean(1)  # (K, G): each member's posterior mean LFC
    truth_mean = adata.var["lfc_B_vs_A"].to_numpy(dtype=np.float64)
    if "true_rate" in adata.layers:
        h = np.asarray(adata.layers["true_rate"], dtype=np.float64)
        rho = h / h.sum(1, keepdims=True) * 1e4
        c1, c2 = info["cells1"], info["cells2"]
        oracle = np.median(np.log2(rho[c1] + pseudocount), 0) - np.median(
            np.log2(rho[c2] + pseudocount), 0
        )
        ct = adata.obs["cell_type"].astype(str).to_numpy()
        truth_mean = np.log2(rho[ct == "B"].mean(0) + pseudocount) - np.log2(
            rho[ct == "A"].mean(0) + pseudocount
        )
    else:
        oracle = truth_mean
    err = members - oracle
    k = err.shape[0]
    corr = np.corrcoef(err)[np.triu_indices(k, 1)] if k > 1 else np.array([np.nan])
    pooled = draws.reshape(-1, draws.shape[-1])
    return {
        "model LFC error sd": float(np.std(pooled.mean(0) - oracle)),
        "member LFC error sd": float(np.mean(err.std(1))),
        "member error correlation": float(np.mean(corr)),
        "pooled posterior sd (median)": float(np.median(pooled.std(0))),
        "member spread sd (median)": float(np.median(members.std(0, ddof=1))),
        "_truth_mean": truth_mean,
    }


def model_for(adata, name: str, rep: int, kind: str, cfg, models: Path):
    from ensemblevi.benchmark._runs import train_timed
    from ensemblevi.model import EnsembleSCVI

    path = models / f"{name}_rep{rep}_{kind}"
    if path.exists():
        return EnsembleSCVI.load(str(path), adata=adata), None
    model, seconds = train_timed(
        adata, kind, 4, rep, cfg.epochs[name], cfg.lr_of(name), n_hidden=cfg.n_hidden
    )
    model.save(str(path), save_anndata=False)
    return model, seconds


def unit(name: str, rep: int, cfg, models: Path, pbmc, kinds) -> dict:
    from ensemblevi.benchmark._fdr import _wilcoxon, load, score
    from ensemblevi.benchmark._scoring import MethodResult
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.model.base import _de_counts

    adata = load(name, rep, cfg, pbmc)
    batch_key = "batch" if adata.obs["batch"].nunique() > 1 else None
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key=batch_key)
    truths = {"simulator": adata.var["is_de_B_vs_A"].to_numpy(bool)}
    norm = normalised_truth(adata, cfg.delta)
    truths["normalised"] = truths["simulator"] if norm is None else norm
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    cells = np.flatnonzero(ct == "B"), np.flatnonzero(ct == "A")
    results, seconds, timing = {}, {}, {}
    manager = None
    for kind in kinds:
        model, seconds[kind] = model_for(adata, name, rep, kind, cfg, models)
        manager = model.get_anndata_manager(adata, required=True)
        t = time.perf_counter()
        draws, info = lfc_posterior(
            model, adata, "cell_type", "B", "A", n_samples=cfg.n_samples, seed=rep, progress=False
        )
        timing[f"{kind} draws"] = time.perf_counter() - t
        if kind == kinds[0]:  # the error table is of the first kind (deep by default)
            errors = {"kind": kind, **model_errors(adata, draws, info)}
        variants = {KIND_LABELS[kind]: draws}
        if kind == "deep":
            variants["single VAE (deep member 0)"] = draws[:1]
        for label, d in variants.items():
            t = time.perf_counter()
            table = _de_counts.counts_table(
                d, manager, *cells, cfg.delta, 0.05, adata.var_names, seed=rep
            )
            timing[f"{label} counts"] = time.perf_counter() - t
            results[f"{label}, counts (default)"] = MethodResult(
                "bayes", table["proba_de"].to_numpy()
            )
            pooled = d.reshape(-1, d.shape[-1])
            results[f"{label}, population"] = MethodResult(
                "bayes", np.mean(np.abs(pooled) >= cfg.delta, axis=0)
            )
    rng = np.random.default_rng(rep)
    y = _de_counts.normalised_counts(adata.layers["counts"])
    r, v = _de_counts.gamma_lfc_moments(_de_counts.count_means(y, *cells), 1000, rng)
    flat = _de_counts.eb_draws(r, v, np.zeros(r.size, dtype=int), 400, rng)
    errors["counts LFC error sd"] = float(np.std(r - errors.pop("_truth_mean")))
    results["counts, no strata (no model)"] = MethodResult(
        "bayes", np.mean(np.abs(flat) >= cfg.delta, axis=0)
    )
    results["Wilcoxon + BH, |LFC| >= 0.5"] = _wilcoxon(adata, cfg.delta)[1]
    metrics = {
        t: {m: score(res, truth) for m, res in results.items()} for t, truth in truths.items()
    }
    return {
        "preset": name,
        "rep": rep,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_de": {t: int(v.sum()) for t, v in truths.items()},
        "train_seconds": seconds,
        "de_seconds": timing,
        "errors": errors,
        "metrics": metrics,
    }


def table(records: list[dict]) -> str:
    rows = []
    for r in records:
        for truth, methods in r["metrics"].items():
            for m, s in methods.items():
                rows.append(
                    {"data": r["preset"], "rep": r["rep"], "truth": truth, "method": m, **s}
                )
    df = pd.DataFrame(rows)
    cols = [
        "auroc",
        *[f"fdr@{t:g}" for t in TARGETS],
        *[f"tpr@{t:g}" for t in TARGETS],
        "calls@0.05",
        "frac@0.05",
    ]
    order = {k: i for i, k in enumerate(dict.fromkeys(df["method"]))}
    out = []
    for (data, truth), g in df.groupby(["data", "truth"], sort=False):
        if data in ("pbmc_thinning", "pbmc_null") and truth == "simulator":
            continue  # one truth there
        n = g["rep"].nunique()
        agg = g.groupby("method", sort=False)[cols].agg(["mean", "std"])
        agg = agg.sort_index(key=lambda i: i.map(order))
        head = (
            "| method | AUROC | true FDR at 5 / 10 / 20% (sd) | TPR at 5 / 10 / 20% | calls at 5% |"
        )
        if data == "pbmc_null":
            head = (
                "| method | - | any call at 5 / 10 / 20% (share of splits) | - | "
                "genes called at 5% |"
            )
        out += [
            f"### {data}, {truth} truth ({n} repetitions)",
            "",
            head,
            "| --- | --- | --- | --- | --- |",
        ]
        for m, row in agg.iterrows():
            fdr = " / ".join(
                f"{row[(f'fdr@{t:g}', 'mean')]:.3f} ({row[(f'fdr@{t:g}', 'std')]:.3f})"
                for t in TARGETS
            )
            tprs = " / ".join(f"{row[(f'tpr@{t:g}', 'mean')]:.2f}" for t in TARGETS)
            label = m.replace("|", "\\|")
            out.append(
                f"| {label} | {row[('auroc', 'mean')]:.3f} | {fdr} | {tprs} | "
                f"{row[('calls@0.05', 'mean')]:.1f} |"
            )
        out.append("")
    return "\n".join(out)


def error_table(records: list[dict]) -> str:
    rows = [{"data": r["preset"], **r["errors"]} for r in records if "errors" in r]
    if not rows:
        return ""
    kind = rows[0].pop("kind", "deep")
    for row in rows[1:]:
        row.pop("kind", None)
    g = pd.DataFrame(rows).groupby("data", sort=False).mean()
    lines = [
        f"### Where the model's error is ({KIND_LABELS[kind]}, mean over repetitions)",
        "",
        "| data | " + " | ".join(g.columns) + " |",
        "| --- |" + " --- |" * len(g.columns),
    ]
    lines += [f"| {d} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for d, row in g.iterrows()]
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["lopez2020", "draft", "hard", "pbmc_thinning", "pbmc_null"],
    )
    parser.add_argument("--kinds", nargs="+", default=["deep", "batch", "hyperbatch"])
    parser.add_argument("--pbmc", default=None)
    parser.add_argument("--out", default="bench_results/de_calibration")
    parser.add_argument("--models", default=None, help="model cache [default: OUT/models]")
    parser.add_argument("--md", default="bench_results/de_calibration/tables.md")
    args = parser.parse_args()

    from ensemblevi._files import write_text
    from ensemblevi.benchmark._fdr import FDRConfig

    cfg = FDRConfig()
    out = Path(args.out)
    models = Path(args.models) if args.models else out / "models"
    models.mkdir(parents=True, exist_ok=True)
    records = []
    for rep in range(args.reps):
        for name in args.datasets:
            if name.startswith("pbmc") and not (args.pbmc and Path(args.pbmc).exists()):
                print(f"{name}: skipped (pass --pbmc PATH to pbmc3k.h5ad)")
                continue
            path = out / f"{name}_rep{rep}.json"
            if path.exists():
                rec = json.loads(path.read_text())
            else:
                t = time.perf_counter()
                rec = unit(name, rep, cfg, models, args.pbmc, args.kinds)
                rec["seconds"] = time.perf_counter() - t
                write_text(path, json.dumps(rec, default=float))
                print(f"{name} rep {rep}: {rec['seconds']:.0f} s", flush=True)
            records.append(rec)
            write_text(Path(args.md), table(records) + "\n" + error_table(records))
    print(table(records) + "\n" + error_table(records))


if __name__ == "__main__":
    from ensemblevi._warnings import quiet_third_party

    with quiet_third_party(loggers=True):
        main()
