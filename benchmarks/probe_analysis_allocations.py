"""Probes behind the atlas analysis' chunk size, marker reducer and kNN choices.

Three measurements quoted in ``docs/benchmarks/speed.md`` ("This release"):

- ``chunks``: the streamed analysis pass (``tl.uncertainty_analysis``, heart markers, 10
  samples, no novelty or embedding) at several chunk budgets (``FLOAT_BUDGET``, floats
  per (samples, members, cells, genes) block), each in turn in one process: wall and CPU
  seconds. Blocks above glibc's 32 MiB mmap ceiling are page-faulted in on every chunk.
- ``memory``: the process' peak and current resident memory before and after the pass, per
  budget, with or without the marker reducer (``--no-markers``): the reducer used to
  fragment the heap once the blocks lived there.
- ``knn``: per member, the kNN query of every cell against the training cells, with the KD
  tree on one thread, on torch's threads, and by brute force, on a model saved by
  ``bench_analysis_scale.py --save DIR``.

Run: ``PYTHONPATH=src python benchmarks/probe_analysis_allocations.py chunks --cells 2000
--budgets 2e7 6e6 8e6``; ``... memory --cells 6000 --budgets 6e6 [--no-markers]``;
``... knn --model DIR``.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
import warnings
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mb() -> float:
    try:  # resident pages now (Linux); the peak alone hides memory given back
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
    except OSError:
        return float("nan")


def _model(cells: int, members: int):
    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    adata = ev.data.synthetic("heartlike", seed=0, n_cells=cells)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = EnsembleSCVI(adata, n_members=members, ensemble="deep", seed=0)
    model.train(max_epochs=1, max_steps=2, seed=0, enable_progress_bar=False)
    return adata, model


def _pass(model, adata, markers: bool) -> None:
    import ensemblevi as ev
    from ensemblevi.tl._markers import load_markers

    ev.tl.uncertainty_analysis(
        model,
        adata,
        load_markers("heart") if markers else None,
        groupby="cell_type",
        n_samples=10,
        novelty=False,
        progress=False,
    )


def chunks_and_memory(args) -> None:
    import ensemblevi._constants as constants

    adata, model = _model(args.cells, args.members)
    print("| budget (floats) | wall (s) | CPU (s) | peak before / after (MB) | now after (MB) |")
    print("| --- | --- | --- | --- | --- |")
    default = constants.FLOAT_BUDGET
    try:
        for budget in args.budgets:
            constants.FLOAT_BUDGET = int(float(budget))  # chunk_size reads it at each call
            before = _peak_mb()
            t, cpu = time.perf_counter(), time.process_time()
            _pass(model, adata, markers=not args.no_markers)
            print(
                f"| {int(float(budget)):,} | {time.perf_counter() - t:.1f} | "
                f"{time.process_time() - cpu:.1f} | {before:,.0f} / {_peak_mb():,.0f} | "
                f"{_current_mb():,.0f} |",
                flush=True,
            )
    finally:
        constants.FLOAT_BUDGET = default  # the process' other users keep theirs


def knn(args) -> None:
    import anndata
    import numpy as np
    import torch
    from sklearn.neighbors import NearestNeighbors

    from ensemblevi.model import EnsembleSCVI

    adata = anndata.read_h5ad(Path(args.model) / "adata.h5ad")
    model = EnsembleSCVI.load(args.model, adata)
    z = np.asarray(model.get_latent_representation(adata, return_members=True))
    train = np.sort(model.train_indices)
    ways = {
        "KD tree, 1 thread": {},
        f"KD tree, {torch.get_num_threads()} threads": {"n_jobs": torch.get_num_threads()},
        "brute force": {"algorithm": "brute"},
    }
    print("| member | " + " | ".join(ways) + " |")
    print("| --- |" + " --- |" * len(ways))
    for k in range(min(args.members, z.shape[0])):
        times = []
        for kwargs in ways.values():
            t = time.perf_counter()
            NearestNeighbors(n_neighbors=16, **kwargs).fit(z[k][train]).kneighbors(z[k])
            times.append(f"{time.perf_counter() - t:.2f} s")
        print(f"| {k} | " + " | ".join(times) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("probe", choices=["chunks", "memory", "knn"])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--members", type=int, default=36)
    parser.add_argument("--budgets", nargs="+", default=["2e7", "6e6", "8e6"])
    parser.add_argument("--no-markers", action="store_true", help="memory: no marker reducer")
    parser.add_argument("--model", default=None, help="knn: a bench_analysis_scale --save DIR")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("scvi").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(2)
    if args.probe == "knn":
        if not args.model:
            parser.error("knn needs --model DIR (bench_analysis_scale.py --save DIR)")
        knn(args)
    else:
        chunks_and_memory(args)


if __name__ == "__main__":
    main()
