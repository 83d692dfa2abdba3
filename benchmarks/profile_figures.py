"""Time of the figure stage of ``ensemblevi run`` on the demo-size data, step by step.

Builds the ``heartlike`` preset at the demo's size (3,000 cells, 1,200 genes), trains a
deep ensemble of 4 briefly (figure costs do not depend on training), runs the analysis
once (not timed), then times each step of the figure stage separately: the embedding
(denoised expression, PCA, neighbours, UMAP), each plot, and writing each PNG. Run it in a
fresh process: the first UMAP includes numba's compilation, as in a fresh ``ensemblevi run``.

Run: ``.venv/bin/python benchmarks/profile_figures.py``
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("scvi").setLevel(logging.ERROR)
    import matplotlib.pyplot as plt
    import torch

    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    torch.set_num_threads(args.threads)
    adata = ev.data.synthetic("heartlike", seed=0, n_cells=args.cells)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = EnsembleSCVI(adata, n_members=args.members, ensemble="deep", seed=0)
    model.train(max_epochs=2, seed=0, enable_progress_bar=False)
    markers = ev.tl.load_markers("heart")
    ev.tl.expression_spread(model, adata, markers, groupby="cell_type", n_samples=3, progress=False)
    ev.tl.gene_uncertainty(model, adata, groupby="cell_type", n_samples=3, progress=False)
    ev.tl.cell_novelty(model, adata, n_samples=3, progress=False)
    genes = [g for v in markers.values() for g in v]
    steps = {
        "novelty_umap (embedding + plot)": lambda: ev.pl.novelty_umap(
            adata, model, color="cell_type"
        ),
        "model_spread": lambda: ev.pl.model_spread(adata),
        "biological_spread": lambda: ev.pl.biological_spread(adata),
        "member_histograms": lambda: ev.pl.member_histograms(adata),
        "gene_uncertainty": lambda: ev.pl.gene_uncertainty(adata, highlight=genes),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, step in steps.items():
            t = time.perf_counter()
            fig = step()
            drawn = time.perf_counter() - t
            t = time.perf_counter()
            ev.pl.save_figure(fig, Path(tmp) / name.split()[0])
            saved = time.perf_counter() - t
            plt.close(fig)
            rows.append((name, drawn, saved))
            print(f"{name}: {drawn:.2f} s, save {saved:.2f} s", flush=True)
    print("\n| step | draw (s) | save PNG (s) |\n| --- | --- | --- |")
    for name, drawn, saved in rows:
        print(f"| {name} | {drawn:.2f} | {saved:.2f} |")
    total = sum(d + s for _, d, s in rows)
    print(f"| **figure stage total** | | **{total:.1f}** |")


if __name__ == "__main__":
    main()
