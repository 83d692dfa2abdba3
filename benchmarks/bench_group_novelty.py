"""Does ``tl.group_novelty`` flag an unseen population, and only it? PBMC 3k without B cells.

Trains on PBMC 3k (1,200 HVGs) without its B cells (the novelty suite's settings: 150
epochs, lr 1e-3, seed 0), then tests groups of cells with ``ev.tl.group_novelty``:

- *query*: the seen cells the model held out for validation plus every B cell, grouped
  by cell type, each group against the model's validation cells (the held-out seen cells
  are in both: for them the test is of a sample against its own population, the null);
- *own*: the training AnnData (seen types only), each type's non-training cells against
  the other types' validation cells (leave-group-out).

Per cell it also reports the AUROC of ``novelty_cv`` for B against held-out seen cells
and the TPR at 1% and 5% FPR (thresholds at the seen cells' 99th / 95th percentile).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_group_novelty.py --pbmc
../shared/data/pbmc3k.h5ad --kinds deep batch``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def run(pbmc: str, kind: str, seed: int, epochs: int, lr: float) -> dict:
    from sklearn.metrics import roc_auc_score

    import ensemblevi as ev
    from ensemblevi.benchmark._runs import train_timed

    adata = ev.data.read(pbmc)
    ev.data.preprocess(adata, n_top_genes=1200)
    seen = adata[adata.obs["cell_type"].astype(str) != "B cells"].copy()
    ev.model.EnsembleSCVI.setup_anndata(seen, layer="counts")
    model, secs = train_timed(seen, kind, 4, seed, epochs, lr)
    held = seen.obs_names[model.validation_indices]
    query = adata[adata.obs_names.isin(held) | (adata.obs["cell_type"] == "B cells")].copy()
    ev.model.EnsembleSCVI.setup_anndata(query, layer="counts")
    t = time.perf_counter()
    q = ev.tl.group_novelty(model, query, groupby="cell_type", seed=seed, progress=False)
    own = ev.tl.group_novelty(model, groupby="cell_type", seed=seed, progress=False)
    test_s = time.perf_counter() - t
    is_b = (query.obs["cell_type"] == "B cells").to_numpy()
    score = query.obs["ensemblevi_novelty_cv"].to_numpy()
    neg = score[~is_b]
    cells = {"auroc": float(roc_auc_score(is_b, score))}
    for fpr in (0.01, 0.05):
        cells[f"tpr_at_{fpr:g}_fpr"] = float(np.mean(score[is_b] > np.quantile(neg, 1 - fpr)))
    return {"kind": kind, "train_s": secs, "test_s": test_s, "cells": cells,
            "query": q.reset_index().to_dict(orient="list"),
            "own": own.reset_index().to_dict(orient="list")}  # fmt: skip


def markdown(records: list[dict]) -> str:
    import pandas as pd

    out = []
    for r in records:
        c = r["cells"]
        title = f"#### {r['kind']} K=4 (training {r['train_s']:.0f} s, tests {r['test_s']:.0f} s)"
        line = (f"Per cell (`novelty_cv`, B vs held-out seen): AUROC {c['auroc']:.3f}, TPR "
                f"{c['tpr_at_0.01_fpr']:.2f} at 1% FPR and {c['tpr_at_0.05_fpr']:.2f} "
                "at 5%.")  # fmt: skip
        out += [title, "", line, ""]
        for name in ("query", "own"):
            df = pd.DataFrame(r[name])
            out += [f"`{name}`:", "",
                    "| group | n_tested | n_reference | auroc | qval | is_novel |",
                    "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
            rows = zip(df["group"], df["n_tested"], df["n_reference"], df["auroc"], df["qval"],
                       df["is_novel"], strict=True)  # fmt: skip
            out += [f"| {g} | {n} | {m} | {a:.3f} | {qv:.2g} | {bool(v)} |"
                    for g, n, m, a, qv, v in rows]  # fmt: skip
            out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbmc", default="../shared/data/pbmc3k.h5ad")
    parser.add_argument("--kinds", nargs="+", default=["deep", "batch"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="bench_results/group_novelty.json")
    args = parser.parse_args()
    if not Path(args.pbmc).exists():
        print(f"skipped: no {args.pbmc} (pass --pbmc PATH to pbmc3k.h5ad)")
        return
    from ensemblevi._files import write_text
    from ensemblevi.benchmark import _quiet

    _quiet()
    records = []
    for kind in args.kinds:
        records.append(run(args.pbmc, kind, args.seed, args.epochs, args.lr))
        write_text(Path(args.out), json.dumps(records, default=float))
        print(markdown(records[-1:]), flush=True)


if __name__ == "__main__":
    main()
