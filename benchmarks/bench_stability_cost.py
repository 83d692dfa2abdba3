"""Training cost of a K = 4 ensemble against scVI seeds, side by side on an idle machine.

Trains ``--n-seeds`` ``scvi.model.SCVI`` models (``tl.seed_ensemble``, nothing saved) and a
K = 4 ``EnsembleSCVI`` of each kind on PBMC 3k (1,200 HVGs, 60 epochs), one after the
other in one process; the cost of 36 seeds is 36 x the mean seed time (extrapolated from
the seeds trained here, stated as such in docs/benchmarks.md).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_stability_cost.py``
"""

from __future__ import annotations

import argparse
import time
import warnings


def main() -> None:
    import ensemblevi as ev
    from ensemblevi.benchmark._runs import train_timed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k.h5ad")
    parser.add_argument("--n-seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--kinds", nargs="+", default=["deep", "batch", "hyperbatch"])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    adata = ev.data.read(args.data)
    ev.data.preprocess(adata, n_top_genes=1200)
    t = time.perf_counter()
    ev.tl.seed_ensemble(
        adata,
        n_seeds=args.n_seeds,
        setup_kwargs={"layer": "counts"},
        max_epochs=args.epochs,
        progress=False,
    )
    per_seed = (time.perf_counter() - t) / args.n_seeds
    print(
        f"one scVI seed: {per_seed:.1f} s (mean of {args.n_seeds}); 36 seeds: "
        f"{36 * per_seed:.0f} s (extrapolated)"
    )
    print("| K = 4 kind | training s | cost vs 36 seeds |\n| --- | --- | --- |")
    for kind in args.kinds:
        ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts")
        _, secs = train_timed(adata, kind, 4, 0, args.epochs, 1e-3)
        print(f"| {kind} | {secs:.0f} | {secs / (36 * per_seed):.3f} |", flush=True)


if __name__ == "__main__":
    from ensemblevi._warnings import quiet_third_party

    with quiet_third_party(loggers=True):
        main()
