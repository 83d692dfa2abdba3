"""Do a K = 4 model's stability numbers agree with 36 scVI seeds? PBMC 3k (and heartlike).

Trains ``tl.seed_ensemble`` (36 ``scvi.model.SCVI`` seeds, the original experiment) and a
K = 4 ``EnsembleSCVI`` of each ``--kinds`` on the same cells (1,200 HVGs, ``--epochs``
each), then compares:

- per cell: Spearman correlation of ``neighbourhood_stability`` (15 neighbours) between the
  K = 4 model and the 36 seeds;
- per cluster: the 36 seeds' consensus Leiden clusters (resolution 1), each one's stability
  under the 36 seeds' partitions and under the K = 4 model's members' partitions (the same
  clusters, so the two are comparable): Spearman across clusters, and which clusters each
  marks as not reproducible (best-match Jaccard below 0.6);
- cost: training seconds, K = 4 against the 36 seeds (measured here, one after the other).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_stability.py --data
../shared/data/pbmc3k.h5ad --kinds deep batch hyperbatch --seeds-dir /tmp/seeds36``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def load(data: str, n_cells: int, seed: int):
    import ensemblevi as ev

    if data == "heartlike":
        adata = ev.data.synthetic(preset="heartlike", n_cells=n_cells, seed=seed)
    else:
        adata = ev.data.read(data)
    ev.data.preprocess(adata, n_top_genes=1200)
    return adata


def evaluate(model, adata, reference_parts, reference_consensus, resolution: float) -> dict:
    """A model's per-cell neighbourhood stability and its stability of the given clusters."""
    from ensemblevi.tl._stability_core import (
        cluster_table,
        member_knn,
        member_partitions,
        neighbourhood_jaccard,
        partition_agreement,
    )

    t = time.perf_counter()
    z = np.asarray(model.get_latent_representation(adata, return_members=True))
    idx, dist = member_knn(z, 15)
    cells = neighbourhood_jaccard(idx)
    parts = member_partitions(idx, dist, resolution, 0)
    table, _ = cluster_table(reference_consensus, parts)
    ari, _ = partition_agreement(parts)
    return {
        "cells": cells,
        "table": table,
        "parts": parts,
        "stability_s": time.perf_counter() - t,
        "mean_ari": float(ari[np.triu_indices(len(parts), 1)].mean()),
    }


def main() -> None:
    from scipy.stats import spearmanr

    if sys.argv[1:2] == ["--markdown"]:  # the tables again from a saved --out file
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        return
    import ensemblevi as ev
    from ensemblevi._files import write_text
    from ensemblevi.benchmark._runs import train_timed
    from ensemblevi.tl._stability_core import coassignment_graph, leiden

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k.h5ad")
    parser.add_argument("--n-cells", type=int, default=3000, help="for --data heartlike")
    parser.add_argument("--kinds", nargs="+", default=["deep", "batch", "hyperbatch"])
    parser.add_argument("--n-seeds", type=int, default=36)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--seeds-dir", default=None, help="save/reuse the seed models here")
    parser.add_argument("--out", default="bench_results/stability.json")
    args = parser.parse_args()
    if args.data != "heartlike" and not Path(args.data).exists():
        print(f"skipped: no {args.data}")
        return
    warnings.simplefilter("ignore")
    adata = load(args.data, args.n_cells, 0)
    t = time.perf_counter()
    seeds = ev.tl.seed_ensemble(
        adata,
        n_seeds=args.n_seeds,
        save_dir=args.seeds_dir,
        setup_kwargs={"layer": "counts"},
        max_epochs=args.epochs,
        progress=False,
    )
    seeds_s = time.perf_counter() - t  # a reused save_dir reads this as near 0
    from ensemblevi.tl._stability_core import member_knn, member_partitions

    z = np.asarray(seeds.get_latent_representation(adata, return_members=True))
    idx, dist = member_knn(z, 15)
    parts36 = member_partitions(idx, dist, args.resolution, 0)
    consensus = leiden(coassignment_graph(parts36, idx), args.resolution, 0)
    ref = evaluate(seeds, adata, parts36, consensus, args.resolution)
    record = {
        "data": args.data,
        "n_cells": adata.n_obs,
        "epochs": args.epochs,
        "n_seeds": args.n_seeds,
        "seeds_train_s": seeds_s,
        "seeds_mean_ari": ref["mean_ari"],
        "seeds_stability_s": ref["stability_s"],
        "clusters": ref["table"].reset_index().to_dict("list"),
        "kinds": {},
    }
    labels = adata.obs["cell_type"].astype(str).to_numpy() if "cell_type" in adata.obs else None
    if labels is not None:  # what the 36 seeds' consensus clusters hold
        record["cluster_types"] = {
            str(c): ", ".join(
                f"{k} {v}"
                for k, v in pd.Series(labels[consensus == c]).value_counts().head(2).items()
            )
            for c in np.unique(consensus)
        }
    for kind in args.kinds:
        ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts")
        model, secs = train_timed(adata, kind, 4, 0, args.epochs, 1e-3)
        res = evaluate(model, adata, parts36, consensus, args.resolution)
        rho_cells = spearmanr(res["cells"], ref["cells"]).statistic
        rho_clusters = spearmanr(res["table"]["stability"], ref["table"]["stability"]).statistic
        record["kinds"][kind] = {
            "train_s": secs,
            "rho_cells": float(rho_cells),
            "rho_clusters": float(rho_clusters),
            "mean_ari": res["mean_ari"],
            "cell_mean": float(res["cells"].mean()),
            "stability": res["table"]["stability"].tolist(),
            "unstable": [c for c, r in res["table"].iterrows() if not r["reproducible"]],
            "stability_s": res["stability_s"],
        }
        print(kind, record["kinds"][kind]["rho_cells"], rho_clusters, secs, flush=True)
        write_text(Path(args.out), json.dumps(record, default=float))
    record["seeds_cell_mean"] = float(ref["cells"].mean())
    write_text(Path(args.out), json.dumps(record, default=float))
    print(markdown(record))


def markdown(r: dict) -> str:
    """The benchmark's tables for docs/benchmarks.md."""
    clusters = r["clusters"]
    unstable36 = [
        c for c, ok in zip(clusters["cluster"], clusters["reproducible"], strict=True) if not ok
    ]
    out = [
        f"`{r['data']}`, {r['n_cells']:,} cells, {r['epochs']} epochs: {r['n_seeds']} "
        f"scVI seeds trained in {r['seeds_train_s']:.0f} s (mean ARI between seeds' "
        f"Leiden partitions {r['seeds_mean_ari']:.2f}, mean neighbourhood stability "
        f"{r.get('seeds_cell_mean', float('nan')):.2f}; {len(clusters['cluster'])} "
        f"consensus clusters, not reproducible: {', '.join(unstable36) or 'none'}).",
        "",
        "| K = 4 kind | Spearman per cell | Spearman per cluster | mean ARI | clusters "
        f"not reproducible | training s | cost vs {r['n_seeds']} seeds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, k in r["kinds"].items():
        ratio = k["train_s"] / r["seeds_train_s"] if r["seeds_train_s"] > 1 else float("nan")
        out.append(
            f"| {kind} | {k['rho_cells']:.2f} | {k['rho_clusters']:.2f} | "
            f"{k['mean_ari']:.2f} | {', '.join(k['unstable']) or 'none'} | "
            f"{k['train_s']:.0f} | {ratio:.3f} |"
        )
    out += [
        "",
        f"| cluster | cells | what it holds | stability, {r['n_seeds']} seeds | "
        + " | ".join(r["kinds"])
        + " |",
        "| --- " * (4 + len(r["kinds"])) + "|",
    ]
    types = r.get("cluster_types", {})
    for i, c in enumerate(clusters["cluster"]):
        row = [c, str(clusters["n_cells"][i]), types.get(c, ""), f"{clusters['stability'][i]:.2f}"]
        row += [f"{k['stability'][i]:.2f}" for k in r["kinds"].values()]
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    from ensemblevi._warnings import quiet_third_party

    with quiet_third_party(loggers=True):
        main()
