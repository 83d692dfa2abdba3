"""Does one ensemble model reproduce what 36 scVI seeds show? And does it spot unseen cells?

Part 1 (agreement), on PBMC 3k and the ``heartlike`` preset: train 36
``scvi.model.SCVI`` models (seeds 0..35, ``ensemblevi.tl.seed_ensemble``) and one K = 4
EnsembleSCVI of each kind with the same architecture and epochs; per (cell, marker gene)
(each marker in its own cell type's cells) take the std across members of the denoised
expression (``ensemblevi.tl.expression_spread``) and report Spearman's correlation of each
model's std with the std across the 36 seeds, and the training-cost ratio. Two references
put the numbers in scale: 4 of the seeds (0-3) against the other 32, and 18 seeds against
the other 18 (how well the 36-seed std itself reproduces).

Part 2 (novelty), on PBMC 3k: train without the B cells (HVGs chosen without them too),
score every cell with ``ensemblevi.tl.cell_novelty`` and report the AUROC of B cells
against the held-out cells of the seen types (the model's validation cells; training cells
score lower and would flatter the AUROC, so that number is shown too), next to the
negative ELBO of one ``scvi.model.SCVI`` and of the ensemble mixture.

Run: ``.venv/bin/python benchmarks/bench_seed_agreement.py`` (about 50 minutes here;
trained seeds are kept in ``--cache`` so a rerun resumes), ``--fast`` for a smoke run.
Writes ``docs/figures/seed_agreement.png`` and prints the markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ensemblevi.tl._markers import load_markers

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ARCH = {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "gene_likelihood": "zinb"}
KINDS = ["deep", "batch", "mcdropout"]


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("scvi", "lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load(name: str, n_cells: int, exclude: str | None = None):
    """(adata, batch_key, markers) preprocessed to 1,200 HVGs + markers."""
    import anndata as ad

    import ensemblevi as ev
    from ensemblevi.data import preprocess

    if name == "pbmc3k":
        adata = ad.read_h5ad(SHARED / "pbmc3k.h5ad")
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
        markers, batch_key = load_markers("pbmc3k"), None
        if exclude is not None:
            adata = adata[adata.obs["cell_type"] != exclude].copy()
            markers = {g: v for g, v in markers.items() if g != exclude}
        keep = [g for v in markers.values() for g in v]
        preprocess(adata, n_top_genes=1200, keep_genes=keep)
    else:
        adata = ev.data.synthetic("heartlike", seed=0, n_cells=n_cells)
        markers, batch_key = load_markers("heart"), "batch"
    return adata, batch_key, markers


def _std_frame(model, adata, markers, n_samples: int) -> pd.Series:
    import ensemblevi as ev

    cells = ev.tl.expression_spread(
        model, adata, genes=markers, groupby="cell_type", n_samples=n_samples, progress=False
    )["cells"]
    return cells.set_index(["cell", "gene"])["std"]


def agreement(name: str, n_cells: int, n_seeds: int, epochs: int, n_samples: int, cache: Path):
    import scanpy as sc  # noqa: F401  (import cost outside the timings)
    import scvi
    from scipy.stats import spearmanr

    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    adata, batch_key, markers = load(name, n_cells)
    setup = {"layer": "counts", "batch_key": batch_key}
    save_dir = cache / f"{name}_{adata.n_obs}_e{epochs}"
    save_dir.mkdir(parents=True, exist_ok=True)
    log = save_dir / "times.json"
    before = sum((save_dir / f"seed_{s}" / "model.pt").exists() for s in range(n_seeds))
    t = time.perf_counter()
    ev.tl.seed_ensemble(
        adata,
        n_seeds=n_seeds,
        save_dir=save_dir,
        setup_kwargs=setup,
        max_epochs=epochs,
        progress=True,
        **ARCH,
    )
    if before < n_seeds:  # wall time per newly trained seed (saving, and loading the rest)
        log.write_text(json.dumps({"per_seed_s": (time.perf_counter() - t) / (n_seeds - before)}))
    scvi.model.SCVI.setup_anndata(adata, **setup)
    seeds = [scvi.model.SCVI.load(str(save_dir / f"seed_{s}"), adata=adata) for s in range(n_seeds)]
    EnsembleSCVI.setup_anndata(adata, **setup)
    seed_cost = json.loads(log.read_text())["per_seed_s"] * n_seeds

    def spread_of(models) -> pd.Series:
        return _std_frame(EnsembleSCVI.from_scvi(models, adata=adata), adata, markers, n_samples)

    ref = spread_of(seeds)
    rows = []
    half = n_seeds // 2
    rows.append(
        {
            "model": f"{half} seeds vs the other {n_seeds - half}",
            "spearman": spearmanr(spread_of(seeds[:half]), spread_of(seeds[half:]))[0],
            "cost": half / n_seeds,
        }
    )
    four = spread_of(seeds[:4])
    rows.append(
        {
            "model": f"4 seeds vs the other {n_seeds - 4}",
            "spearman": spearmanr(four, spread_of(seeds[4:]))[0],
            "cost": 4 / n_seeds,
        }
    )
    rows.append(
        {
            "model": f"4 seeds vs all {n_seeds}",
            "spearman": spearmanr(four, ref)[0],
            "cost": 4 / n_seeds,
        }
    )
    stds = {"4 scVI seeds": four}
    for kind in KINDS:
        t = time.perf_counter()
        model = EnsembleSCVI(adata, n_members=4, ensemble=kind, seed=0, **ARCH)
        model.train(max_epochs=epochs, seed=0, enable_progress_bar=False)
        cost = time.perf_counter() - t
        std = _std_frame(model, adata, markers, n_samples)
        stds[f"{kind} K=4"] = std
        rows.append(
            {
                "model": f"EnsembleSCVI {kind} K=4",
                "spearman": spearmanr(std, ref)[0],
                "cost": cost / seed_cost,
            }
        )
        print(f"  {name}: {kind} K=4 {cost:.1f} s, rho {rows[-1]['spearman']:.3f}", flush=True)
    table = pd.DataFrame(rows)
    info = {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "pairs": len(ref),
        "seed_cost_s": seed_cost,
        "epochs": epochs,
    }
    return table, info, ref, stds


def novelty(epochs: int, n_samples: int):
    import anndata as ad
    import scvi
    from sklearn.metrics import roc_auc_score

    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    unseen = "B cells"
    train, _, _ = load("pbmc3k", 0, exclude=unseen)
    full = ad.read_h5ad(SHARED / "pbmc3k.h5ad")
    full.obs["cell_type"] = full.obs["cell_type"].astype(str)
    full = full[:, train.var_names].copy()
    full.layers["counts"] = full.X.copy()
    EnsembleSCVI.setup_anndata(train, layer="counts")
    rows = []
    for kind in KINDS:
        model = EnsembleSCVI(train, n_members=4, ensemble=kind, seed=0, **ARCH)
        model.train(max_epochs=epochs, seed=0, enable_progress_bar=False)
        scores = ev.tl.cell_novelty(model, full, n_samples=n_samples, progress=False)
        held_out = set(train.obs_names[model.validation_indices])
        is_b = (full.obs["cell_type"] == unseen).to_numpy()
        is_val = full.obs_names.isin(held_out)
        mix = -np.asarray(model.get_elbo(full, return_mean=False))  # negative mixture ELBO
        for score_name, score in [
            ("novelty_cv", scores["novelty_cv"].to_numpy()),
            ("novelty_llgap", scores["novelty_llgap"].to_numpy()),
            ("mixture -ELBO", mix),
        ]:
            sel = is_b | is_val
            rows.append(
                {
                    "model": f"EnsembleSCVI {kind} K=4",
                    "score": score_name,
                    "AUROC vs held-out": roc_auc_score(is_b[sel], score[sel]),
                    "AUROC vs all seen": roc_auc_score(is_b, score),
                }
            )
        flag = scores["is_novel"].to_numpy()
        rows[-3]["flagged B"] = flag[is_b].mean()
        rows[-3]["flagged held-out"] = flag[is_val].mean()
        print(f"  novelty: {kind} done", flush=True)
    scvi.model.SCVI.setup_anndata(train, layer="counts")
    single = scvi.model.SCVI(train, **ARCH)
    single.train(max_epochs=epochs, enable_progress_bar=False)
    scvi.model.SCVI.setup_anndata(full, layer="counts")
    neg = -np.asarray(single.get_elbo(full, return_mean=False)).ravel()
    held_out = set(train.obs_names[single.validation_indices])
    is_val = full.obs_names.isin(held_out)
    is_b = (full.obs["cell_type"] == unseen).to_numpy()
    sel = is_b | is_val
    rows.append(
        {
            "model": "scvi.model.SCVI",
            "score": "-ELBO",
            "AUROC vs held-out": roc_auc_score(is_b[sel], neg[sel]),
            "AUROC vs all seen": roc_auc_score(is_b, neg),
        }
    )
    return pd.DataFrame(rows), {
        "train_cells": train.n_obs,
        "genes": train.n_vars,
        "B cells": int(is_b.sum()),
    }


def figure(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ensemblevi.pl._utils import save_figure

    n = len(results)
    fig, axes = plt.subplots(n, 4, figsize=(13, 3.3 * n), squeeze=False)
    for row, (name, (_, _, ref, stds)) in enumerate(results.items()):
        for ax, (label, std) in zip(axes[row], stds.items(), strict=True):
            x, y = ref.to_numpy(), std.reindex(ref.index).to_numpy()
            ax.hexbin(x, y, gridsize=40, bins="log", xscale="log", yscale="log", mincnt=1)
            lo = max(min(x[x > 0].min(), y[y > 0].min()), 1e-3)
            hi = max(x.max(), y.max())
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.6, ls="--")
            from scipy.stats import spearmanr

            ax.set_title(f"{name}: {label}\nSpearman {spearmanr(x, y)[0]:.2f}", fontsize=9)
            ax.set_xlabel("std across 36 scVI seeds\n(expression per 1e4 counts)", fontsize=8)
            ax.set_ylabel(f"std across {label}", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    save_figure(fig, path, formats=("png",))
    plt.close(fig)


def cost(name: str, n_cells: int, epochs: int, n_seeds: int = 3) -> pd.DataFrame:
    """Training wall times side by side in one process: scVI seeds and each K = 4 kind."""
    import scvi

    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.model._ensemble_scvi import _seeded_globally

    adata, batch_key, _ = load(name, n_cells)
    rows = []
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key=batch_key)
    for seed in range(n_seeds):
        t = time.perf_counter()
        with _seeded_globally(seed):
            scvi.model.SCVI(adata, **ARCH).train(max_epochs=epochs, enable_progress_bar=False)
        rows.append({"model": f"scvi.model.SCVI seed {seed}", "seconds": time.perf_counter() - t})
    per_seed = np.mean([r["seconds"] for r in rows])
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key=batch_key)
    for kind in KINDS:
        t = time.perf_counter()
        EnsembleSCVI(adata, n_members=4, ensemble=kind, seed=0, **ARCH).train(
            max_epochs=epochs, seed=0, enable_progress_bar=False
        )
        rows.append({"model": f"EnsembleSCVI {kind} K=4", "seconds": time.perf_counter() - t})
    frame = pd.DataFrame(rows)
    frame["vs one scVI seed"] = frame["seconds"] / per_seed
    frame["vs 36 scVI seeds"] = frame["seconds"] / (36 * per_seed)
    return frame


def markdown(table: pd.DataFrame) -> str:
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * table.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="2 seeds' worth of a smoke run")
    parser.add_argument("--seeds", type=int, default=36)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--heart-cells", type=int, default=2000)
    parser.add_argument("--heart-epochs", type=int, default=60)
    parser.add_argument("--n-samples", type=int, default=10)
    parser.add_argument(
        "--part",
        choices=["all", "agreement", "novelty", "cost"],
        default="all",
        help="cost: time 3 scVI seeds and each K=4 kind side by side, on a quiet machine",
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ensemblevi_bench_seeds"))
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "seed_agreement")
    args = parser.parse_args()
    if args.fast:
        args.seeds, args.epochs, args.heart_epochs = 6, 5, 5
        args.heart_cells, args.n_samples = 1000, 3
    _quiet()
    import torch

    torch.set_num_threads(2)
    if not (SHARED / "pbmc3k.h5ad").exists():
        raise SystemExit(f"needs {SHARED / 'pbmc3k.h5ad'} (../shared/data)")
    results = {}
    if args.part in ("all", "agreement"):
        for name, epochs in (("pbmc3k", args.epochs), ("heartlike", args.heart_epochs)):
            results[name] = agreement(
                name, args.heart_cells, args.seeds, epochs, args.n_samples, args.cache
            )
        for name, (table, info, _, _) in results.items():
            print(f"\n### {name}: {info}\n")
            print(markdown(table))
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        figure(results, args.figure)
    if args.part == "cost":
        for name, epochs in (("pbmc3k", args.epochs), ("heartlike", args.heart_epochs)):
            frame = cost(name, args.heart_cells, epochs)
            print(f"\n### training cost, {name}, {epochs} epochs\n")
            print(markdown(frame))
    if args.part in ("all", "novelty"):
        table, info = novelty(args.epochs, args.n_samples)
        print(f"\n### novelty, PBMC 3k without B cells: {info}\n")
        print(markdown(table))


if __name__ == "__main__":
    main()
