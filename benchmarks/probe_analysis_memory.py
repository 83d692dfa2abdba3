"""Peak-memory increase of one part of the run's analysis pass, by latent samples.

Where the atlas-scale analysis' memory goes (docs/benchmarks.md, "Analysis memory and time
at atlas scale"): 6,000 ``heartlike`` cells, deep K = 36 trained 1 epoch, then
``tl.uncertainty_analysis`` with one part switched on beside the marker spread (``spread``
alone, ``genes``, ``novelty``, ``embedding``, or ``all``), in a fresh process; prints the
time and the increase of the process' peak RSS over the peak before the analysis.

    for S in 5 10; do for p in spread genes novelty embedding; do
        .venv/bin/python benchmarks/probe_analysis_memory.py $S $p; done; done

(``--cells`` and ``--members`` change the size: 6,000 and 36 by default.)
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import time
import warnings

from ensemblevi.tl._markers import load_markers


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    warnings.filterwarnings("ignore")
    for name in ("scvi", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import ensemblevi as ev

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n_samples", type=int)
    parser.add_argument("part", choices=["spread", "genes", "novelty", "embedding", "all"])
    parser.add_argument("--cells", type=int, default=6000)
    parser.add_argument("--members", type=int, default=36)
    args = parser.parse_args()
    n_samples, part = args.n_samples, args.part
    adata = ev.data.synthetic("heartlike", seed=0, n_cells=args.cells, lean=True)
    layer = "counts" if "counts" in adata.layers else None
    ev.model.EnsembleSCVI.setup_anndata(adata, layer=layer)
    model = ev.model.EnsembleSCVI(adata, n_members=args.members, seed=0)
    model.train(max_epochs=1, enable_progress_bar=False)
    gc.collect()
    before = peak_mb()
    t = time.perf_counter()
    ev.tl.uncertainty_analysis(
        model,
        adata,
        markers=load_markers("heart"),
        groupby="cell_type",
        n_samples=n_samples,
        progress=False,
        genes=part in ("genes", "all"),
        novelty=part in ("novelty", "all"),
        embedding=part in ("embedding", "all"),
    )
    print(
        f"S={n_samples} part={part} time={time.perf_counter() - t:.1f}s "
        f"increase={peak_mb() - before:.0f}MB before={before:.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
