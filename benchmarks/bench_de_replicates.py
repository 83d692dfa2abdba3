"""DE with biological replicates: calibration and power of the sample-aware test (issue 34).

Data (per repetition = seed):

- ``between``: :func:`ensemblevi.data.synthetic_replicates` with 16 samples (8 ``ctrl``,
  8 ``stim``), 20% of genes changed by the condition. One deep ensemble (K=4) is trained
  per repetition on all cells (no sample covariate), and every comparison reuses it:
  *null* = the ``ctrl`` samples split into two pseudo-conditions (k vs k samples, no true
  change, donor effects present); *true* = ``stim`` vs ``ctrl`` with k samples per side
  (the first k of a seeded shuffle), k in 2, 3, 4 (null) and 2, 3, 4, 8 (true).
- ``paired``: 8 samples, both conditions in every sample, 20% changed, each sample's
  response varying by ``response_sd`` 0.1.
- ``null_sd``: the ``between`` null (4 vs 4 of 8 ``ctrl`` samples) at donor sd 0.2 and
  0.5 (model-free and PyDESeq2 only unless ``--models-all``).
- ``pbmc``: PBMC 3k CD4 T cells in 8 pseudo-samples (donor factors by binomial thinning,
  :func:`ensemblevi.benchmark._thinning.pseudo_samples`): null (``de_fraction=0``) and
  10% changed, between and paired; model-free and PyDESeq2 (and the ensemble with
  ``--pbmc-models``).

Methods (``ensemblevi.model.base._de_samples``): ``ensemble K=4`` (denoised pseudobulks
of each member, their disagreement as extra variance), ``one scVI`` (member 0 alone under
the same rule), ``counts`` (the same moderated test on raw pseudobulk counts: the
model-free variant) and ``PyDESeq2`` (pseudobulk, the reference). Scores: genes called at
a 5% BH target (null), true FDR and TPR at 5/10/20% targets, and the TPR at matched true
FDR (the best TPR among p-value thresholds whose true FDR is at most 5/10/20%).

Run (records under --out, reused on a rerun; tables to --md):
``PYTHONPATH=src python benchmarks/bench_de_replicates.py --reps 3 --epochs 25
--pbmc ../shared/data/pbmc3k.h5ad --out bench_out/de_replicates``
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

TARGETS = (0.05, 0.1, 0.2)
METHODS = (
    "ensemble K=4",
    "ensemble K=4, before",
    "one scVI",
    "counts",
    "counts, before",
    "PyDESeq2",
)


def denoised_cells(model, adata) -> np.ndarray:
    """(K, cells, genes) denoised counts of every cell (normalised expression x library)."""
    from scipy import sparse

    lib = np.asarray(sparse.csr_matrix(adata.layers["counts"]).sum(1), dtype=np.float64).ravel()
    rho = model.get_normalized_expression(
        adata, n_samples=5, return_mean=True, return_members=True, library_size=1, seed=0
    )
    return np.asarray(rho, dtype=np.float64) * lib[None, :, None]


def score(res: dict, truth: np.ndarray | None) -> dict:
    p = res["pval"]
    padj = res["padj"]
    out = {}
    for t in TARGETS:
        calls = padj <= t
        out[f"calls@{t:g}"] = int(calls.sum())
        if truth is not None:
            out[f"fdr@{t:g}"] = float((calls & ~truth).sum() / max(calls.sum(), 1))
            out[f"tpr@{t:g}"] = float((calls & truth).sum() / max(truth.sum(), 1))
    if truth is not None:  # TPR at matched true FDR: the best threshold on the p-values
        order = np.argsort(p, kind="stable")
        tp = np.cumsum(truth[order])
        fdp = np.cumsum(~truth[order]) / np.arange(1, p.size + 1)
        for t in TARGETS:
            ok = fdp <= t
            out[f"tpr_at_fdr{t:g}"] = float(tp[ok].max() / truth.sum()) if ok.any() else 0.0
    return out


def run_methods(counts, den, units, truth, models: bool) -> dict:
    """Every method on one comparison's units."""
    from ensemblevi.model.base import _de_samples as S
    from ensemblevi.model.base._de_moderated import adjust

    def test(x, rule=S.P_ADJUST, **kw):
        res = S.sample_test(x, libs, units.n1, units.design, **kw)
        return {**res, "padj": adjust(res["pval"], rule)}

    groups = units.cells1 + units.cells2
    sums, libs = S.pseudobulk(counts, groups)
    out = {}
    if models and den is not None:
        dsum = np.stack([den[:, c].sum(1) for c in groups], axis=1)  # (K, units, G)
        # as the package runs it: the raw counts' variance as the floor, Storey's adjustment
        out["ensemble K=4"] = score(test(dsum, raw=sums), truth)
        out["ensemble K=4, before"] = score(test(dsum, "bh"), truth)  # 1dd6f86's rule
        out["one scVI"] = score(test(dsum[:1], raw=sums), truth)
    out["counts"] = score(test(sums), truth)
    out["counts, before"] = score(test(sums, "bh"), truth)  # 1dd6f86's rule
    t = time.perf_counter()
    out["PyDESeq2"] = score(S.pydeseq2_test(sums, units), truth)
    out["PyDESeq2"]["seconds"] = time.perf_counter() - t
    return out


def units_for(adata, side1: list[str], side2: list[str], design: str):
    from ensemblevi.model.base import _de_samples as S

    samples = adata.obs["sample"].astype(str).to_numpy()
    if design == "paired":
        cond = adata.obs["condition"].astype(str).to_numpy()
        keep = np.isin(samples, side1)
        c1 = np.flatnonzero(keep & (cond == "stim"))
        c2 = np.flatnonzero(keep & (cond == "ctrl"))
    else:
        c1, c2 = np.flatnonzero(np.isin(samples, side1)), np.flatnonzero(np.isin(samples, side2))
    return S.make_units(samples, c1, c2, design=design, min_cells=10)


def train(adata, rep: int, epochs: int):
    from ensemblevi.benchmark._runs import train_timed
    from ensemblevi.model import EnsembleSCVI

    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model, seconds = train_timed(adata, "deep", 4, rep, epochs, 1e-3)
    return model, seconds


def unit_between(rep: int, epochs: int, sd: float, models: bool, ks_null, ks_true) -> dict:
    from ensemblevi.data import synthetic_replicates

    adata = synthetic_replicates(
        n_cells=1600, n_genes=400, n_samples=16, sample_sd=sd, de_frac=0.2, seed=rep
    )
    truth = adata.var["is_de_stim_vs_ctrl"].to_numpy(bool)
    rec: dict = {"kind": "between", "sd": sd, "rep": rep}
    den = None
    if models:
        model, rec["train_seconds"] = train(adata, rep, epochs)
        den = denoised_cells(model, adata)
    rng = np.random.default_rng([rep, 7])
    stim = list(rng.permutation(adata.uns["synthetic_replicates"]["stim_samples"]))
    ctrl = [s for s in adata.obs["sample"].cat.categories if s not in stim]
    ctrl = list(rng.permutation(ctrl))
    counts = adata.layers["counts"]
    for k in ks_null:  # ctrl samples split in two: no true change
        u = units_for(adata, ctrl[:k], ctrl[k : 2 * k], "between")
        rec[f"null k={k}"] = run_methods(counts, den, u, None, models)
    for k in ks_true:
        u = units_for(adata, stim[:k], ctrl[:k], "between")
        rec[f"true k={k}"] = run_methods(counts, den, u, truth, models)
    return rec


def unit_paired(rep: int, epochs: int, models: bool, ks) -> dict:
    from ensemblevi.data import synthetic_replicates

    adata = synthetic_replicates(
        n_cells=1600,
        n_genes=400,
        n_samples=8,
        design="paired",
        sample_sd=0.3,
        response_sd=0.1,
        de_frac=0.2,
        seed=100 + rep,
    )
    truth = adata.var["is_de_stim_vs_ctrl"].to_numpy(bool)
    rec: dict = {"kind": "paired", "sd": 0.3, "rep": rep}
    den = None
    if models:
        model, rec["train_seconds"] = train(adata, rep, epochs)
        den = denoised_cells(model, adata)
    names = list(adata.obs["sample"].cat.categories)
    for k in ks:
        rec[f"true k={k}"] = run_methods(
            adata.layers["counts"], den, units_for(adata, names[:k], [], "paired"), truth, models
        )
    return rec


def unit_pbmc(
    rep: int, epochs: int, path: str, design: str, de: float, sd: float, models: bool
) -> dict:
    import anndata as ad

    from ensemblevi.benchmark._thinning import pseudo_samples

    adata = pseudo_samples(
        ad.read_h5ad(path),
        n_samples=8,
        design=design,
        sample_sd=sd,
        de_fraction=de,
        seed=rep,
        n_top_genes=1200,
    )
    truth = adata.var["is_de_stim_vs_ctrl"].to_numpy(bool) if de > 0 else None
    rec: dict = {"kind": f"pbmc {design}", "sd": sd, "de": de, "rep": rep}
    den = None
    if models:
        model, rec["train_seconds"] = train(adata, rep, epochs)
        den = denoised_cells(model, adata)
    names = list(adata.obs["sample"].cat.categories)
    if design == "paired":
        u = units_for(adata, names, [], "paired")
    else:
        cond = adata.obs.groupby("sample", observed=True)["condition"].first().astype(str)
        u = units_for(
            adata, list(cond.index[cond == "stim"]), list(cond.index[cond == "ctrl"]), "between"
        )
    rec["null" if truth is None else "true"] = run_methods(
        adata.layers["counts"], den, u, truth, models
    )
    return rec


def cached(path: Path, fn, *args):
    if path.exists():
        return json.loads(path.read_text())
    t = time.perf_counter()
    rec = fn(*args)
    rec["seconds"] = time.perf_counter() - t
    path.write_text(json.dumps(rec, default=float, indent=1))
    print(f"  {path.name}: {rec['seconds']:.0f} s", flush=True)
    return rec


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def _mean_range(values: list[float], pct: bool = False) -> str:
    if not values:
        return "-"
    f = (lambda v: f"{100 * v:.2g}%") if pct else (lambda v: f"{v:.3f}")
    if len(values) == 1:
        return f(values[0])
    return f"{f(float(np.mean(values)))} [{f(min(values))}, {f(max(values))}]"


def summarise(out: Path, md: Path | None, fig: Path | None) -> str:
    """Markdown tables (and a figure) from the saved records."""
    recs = _records(out)
    lines = []
    # null: genes called at a 5% target, per data set
    rows = {}
    for r in recs:
        for key, res in r.items():
            if not (isinstance(res, dict) and key.startswith("null")):
                continue
            if r["kind"] == "between":
                name = f"simulator, donor sd {r['sd']}, {key.split('=')[1]} vs {key.split('=')[1]}"
            else:
                name = f"PBMC pseudo-samples, donor sd {r['sd']}, 4 vs 4"
            n_genes = 400 if r["kind"] == "between" else None
            for m, x in res.items():
                g = n_genes or r.get("n_genes", 1200)
                rows.setdefault(name, {}).setdefault(m, []).append(x["calls@0.05"] / g)
    lines += [
        "| null data set (reps) | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for name in sorted(rows):
        n = max(len(v) for v in rows[name].values())
        lines.append(
            f"| {name} ({n}) | "
            + " | ".join(_mean_range(rows[name].get(m, []), pct=True) for m in METHODS)
            + " |"
        )
    # true changes: FDR and TPR at targets, TPR at matched true FDR
    true = {}
    for r in recs:
        for key, res in r.items():
            if isinstance(res, dict) and key.startswith("true"):
                # PBMC: 4 vs 4 samples between, 8 pairs paired
                k = key.split("=")[1] if "=" in key else ("8" if "paired" in r["kind"] else "4")
                kind = r["kind"]
                true.setdefault((kind, int(k)), []).append(res)
    lines += [
        "",
        "| design, samples per side or pairs (reps) | method | true FDR at 5% | 10% "
        "| 20% | TPR at 5% | TPR at true FDR 5% | 10% | 20% |",
        "|---|---|" + "---|" * 7,
    ]
    for kind, k in sorted(true):
        group = true[(kind, k)]
        for m in METHODS:
            xs = [g[m] for g in group if m in g]
            if not xs:
                continue
            cells = [_mean_range([x[f"fdr@{t:g}"] for x in xs]) for t in TARGETS]
            cells.append(_mean_range([x["tpr@0.05"] for x in xs]))
            cells += [_mean_range([x[f"tpr_at_fdr{t:g}"] for x in xs]) for t in TARGETS]
            lines.append(f"| {kind}, {k} ({len(xs)}) | {m} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if md is not None:
        md.write_text(text)
    if fig is not None and true:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kinds = sorted({kind for kind, _ in true})
        f, axes = plt.subplots(2, len(kinds), figsize=(3.6 * len(kinds), 6.2), squeeze=False)
        shown = [m for m in METHODS if not m.endswith("before")]
        rows = (
            ("tpr_at_fdr0.1", "TPR at a true FDR of 10%"),
            ("fdr@0.05", "true FDR at a 5% target"),
        )
        for col, kind in enumerate(kinds):
            ks = sorted(k for kk, k in true if kk == kind)
            for row, (metric, label) in enumerate(rows):
                ax = axes[row][col]
                for i, m in enumerate(shown):
                    ys = [
                        np.mean([g[m][metric] for g in true[(kind, k)] if m in g] or [np.nan])
                        for k in ks
                    ]
                    ax.plot(ks, ys, marker="os^D"[i % 4], label=m)
                if row == 1:
                    ax.axhline(0.05, color="0.4", ls="--", lw=1, label="target")
                ax.set_xscale("log", base=2)
                ax.set_xticks(ks, [str(k) for k in ks])
                ax.set_xlim(min(ks) / 1.3, max(ks) * 1.3)
                ax.set_ylim(0, 1 if row == 0 else 0.2)
                ax.set_xlabel("pairs" if "paired" in kind else "samples per side")
                ax.set_ylabel(label)
                ax.set_title(kind)
        axes[1][0].legend(frameon=False, fontsize=8)
        f.tight_layout()
        f.savefig(fig, dpi=120)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--first-rep", type=int, default=0, help="start here (parallel runs)")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--pbmc", default=None, help="pbmc3k.h5ad (PBMC pseudo-samples)")
    ap.add_argument("--pbmc-models", action="store_true", help="train on PBMC sets too")
    ap.add_argument("--models-all", action="store_true", help="train on the sd 0.2/0.5 nulls")
    ap.add_argument("--only", default="between,paired,null_sd,pbmc")
    ap.add_argument("--out", default="bench_out/de_replicates")
    ap.add_argument("--summarise", action="store_true", help="only the tables from records")
    ap.add_argument("--md", default=None, help="write the Markdown tables here")
    ap.add_argument("--fig", default=None, help="write the TPR-at-matched-FDR figure here")
    args = ap.parse_args(argv)
    if args.summarise:
        print(summarise(Path(args.out), args.md and Path(args.md), args.fig and Path(args.fig)))
        return
    warnings.simplefilter("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = args.only.split(",")
    for rep in range(args.first_rep, args.reps):
        if "between" in only:
            cached(
                out / f"between_sd0.3_rep{rep}.json",
                unit_between,
                rep,
                args.epochs,
                0.3,
                True,
                (2, 3, 4),
                (2, 3, 4, 8),
            )
        if "paired" in only:
            cached(out / f"paired_rep{rep}.json", unit_paired, rep, args.epochs, True, (2, 3, 4, 8))
        if "null_sd" in only:
            for sd in (0.2, 0.5):
                cached(
                    out / f"between_sd{sd}_rep{rep}.json",
                    unit_between,
                    rep,
                    args.epochs,
                    sd,
                    args.models_all,
                    (4,),
                    (),
                )
        if "pbmc" in only and args.pbmc:
            for design in ("between", "paired"):
                for de in (0.0, 0.1) if design == "between" else (0.1,):
                    for sd in (0.2, 0.3, 0.5) if de == 0 else (0.3,):
                        cached(
                            out / f"pbmc_{design}_de{de}_sd{sd}_rep{rep}.json",
                            unit_pbmc,
                            rep,
                            args.epochs,
                            args.pbmc,
                            design,
                            de,
                            sd,
                            args.pbmc_models,
                        )


if __name__ == "__main__":
    main()
