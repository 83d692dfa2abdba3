"""Memory and time of the analysis at atlas scale: 36 members x 18,641 cells x 1,200 genes.

Builds the ``heartlike`` preset at the heart atlas subsample's size, trains an
``EnsembleSCVI(ensemble="deep", n_members=36)`` briefly (the analysis cost does not depend
on how well it is trained), then times the analysis that ``ensemblevi run`` does, in one
streamed pass: ``tl.uncertainty_analysis`` with the nine heart markers' expression spread,
every gene's uncertainty by cell type, every cell's novelty (with its ELBO pass) and the
UMAP of the pass' denoised expression (``--no-embedding`` leaves it out). Peak memory is
the process' peak resident set size (``ru_maxrss``), which includes the data, the model
and the imports; the increase over the peak before the analysis is printed too.

Target: under 2 GB peak and under 2 minutes for the analysis.

Run: ``.venv/bin/python benchmarks/bench_analysis_scale.py`` (a few minutes here). With
``--save DIR`` it trains and saves, and ``--load DIR`` then analyses in a process that never
trained: its peak is the analysis' own (training's peak is not counted in it).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import resource
import time
import warnings
from pathlib import Path

from ensemblevi.tl._markers import load_markers


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=36)
    parser.add_argument("--cells", type=int, default=18641)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--n-samples", type=int, default=10, help="as ensemblevi run")
    parser.add_argument("--embedding", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch-size", type=int, default=None, help="cells per chunk")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop training after this many minibatches (the analysis' cost does not depend "
        "on the training; on a loaded machine this saves the epoch)",
    )
    parser.add_argument(
        "--profile", default=None, help="profile the analysis with cProfile into this file"
    )
    parser.add_argument(
        "--save", default=None, help="save the trained model and its data to this folder, then stop"
    )
    parser.add_argument(
        "--load",
        default=None,
        help="analyse the model and data saved with --save (no training in this process: its "
        "peak is the analysis' own, with the data, the model and the imports)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("scvi").setLevel(logging.ERROR)
    import torch

    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    torch.set_num_threads(2)
    if args.load:
        import anndata

        adata = anndata.read_h5ad(Path(args.load) / "adata.h5ad")
        model = EnsembleSCVI.load(args.load, adata)
        print(f"loaded from {args.load}", flush=True)
    else:
        adata = ev.data.synthetic("heartlike", seed=0, n_cells=args.cells)
        EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
        model = EnsembleSCVI(adata, n_members=args.members, ensemble="deep", seed=0)
        t = time.perf_counter()
        steps = {} if args.max_steps is None else {"max_steps": args.max_steps}
        model.train(max_epochs=args.epochs, seed=0, enable_progress_bar=False, **steps)
        print(f"training {args.epochs} epoch(s): {time.perf_counter() - t:.1f} s")
    print(f"{adata.n_obs:,} cells x {adata.n_vars:,} genes, {model.n_members} members", flush=True)
    if args.save:
        model.save(args.save, overwrite=True, save_anndata=True)
        print(f"saved to {args.save}")
        return
    before = peak_mb()
    print(f"peak RSS before the analysis: {before:,.0f} MB")
    markers = load_markers("heart")
    profile = cProfile.Profile() if args.profile else None
    t, cpu = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    ev.tl.uncertainty_analysis(
        model,
        adata,
        markers,
        groupby="cell_type",
        n_samples=args.n_samples,
        embedding=args.embedding,
        batch_size=args.batch_size,
        progress=False,
    )
    total, cpu = time.perf_counter() - t, time.process_time() - cpu
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    name = (
        f"uncertainty_analysis ({args.n_samples} samples, embedding {args.embedding}, "
        f"batch size {args.batch_size or 'default'})"
    )
    print("\n| step | time (s) | process peak RSS after it (MB) |\n| --- | --- | --- |")
    print(f"| {name} | {total:.1f} | {peak_mb():,.0f} |")
    print(f"\nincrease of the peak during the analysis: {peak_mb() - before:,.0f} MB")
    # CPU seconds of this process: on a shared machine the wall time grows with the load,
    # this much less (2 threads: about twice the wall time on an idle machine)
    print(f"CPU time of the analysis (all threads): {cpu:.1f} s")


if __name__ == "__main__":
    main()
