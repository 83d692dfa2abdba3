"""Profile the run's analysis pass (``tl.uncertainty_analysis``) with cProfile.

Builds ``heartlike`` at ``--cells``, trains a deep ensemble of ``--members`` for one epoch,
then profiles ``tl.uncertainty_analysis`` (heart markers, ``cell_type`` groups, 10
samples, no embedding): prints its wall and CPU seconds, the process' peak RSS before and
after it (``ru_maxrss``), and the 45 slowest calls by cumulative time; ``--out`` keeps the
profile (``python -m pstats``).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/profile_analysis.py --cells 2000``
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import resource
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--members", type=int, default=36)
    parser.add_argument("--n-samples", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the profile here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("scvi").setLevel(logging.ERROR)
    import torch

    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.tl._markers import load_markers

    torch.set_num_threads(2)
    adata = ev.data.synthetic("heartlike", seed=0, n_cells=args.cells)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = EnsembleSCVI(adata, n_members=args.members, ensemble="deep", seed=0)
    model.train(max_epochs=1, seed=0, enable_progress_bar=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    markers = load_markers("heart")
    profile = cProfile.Profile()
    t, cpu = time.perf_counter(), time.process_time()
    profile.enable()
    ev.tl.uncertainty_analysis(
        model, adata, markers, groupby="cell_type", n_samples=args.n_samples, progress=False
    )
    profile.disable()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"wall {time.perf_counter() - t:.1f} s, CPU {time.process_time() - cpu:.1f} s, "
        f"peak RSS before {before:,.0f} MB, after {after:,.0f} MB"
    )
    if args.out:
        profile.dump_stats(args.out)
    pstats.Stats(profile).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
