"""Time of the figure stage of ``ensemblevi run`` on the demo-size data, step by step.

Builds the ``heartlike`` preset at the demo's size (3,000 cells, 1,200 genes), trains a
deep ensemble of 4 briefly (figure costs do not depend on training), runs the analysis
once (``tl.uncertainty_analysis``, not timed; it keeps the log denoised expression of its
pass for the embedding), then times each step of the figure stage separately: the
embedding's PCA, neighbour graph and UMAP layout (the three steps of ``tl.umap``, called
one by one here), the whole ``tl.umap`` again (numba's functions now compiled), each plot
and writing each PNG. Run it in a fresh process: the first neighbour graph and layout
include numba's compilation, as in a fresh ``ensemblevi run``.

Run: ``.venv/bin/python benchmarks/profile_figures.py``
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

from ensemblevi.pl._spread import member_histograms
from ensemblevi.pl._utils import save_figure
from ensemblevi.tl._embedding import umap
from ensemblevi.tl._markers import load_markers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("scvi").setLevel(logging.ERROR)
    import matplotlib.pyplot as plt
    import numpy as np
    import scanpy as sc
    import torch

    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    torch.set_num_threads(args.threads)
    adata = ev.data.synthetic("heartlike", seed=0, n_cells=args.cells)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = EnsembleSCVI(adata, n_members=args.members, ensemble="deep", seed=0)
    model.train(max_epochs=2, seed=0, enable_progress_bar=False)
    markers = load_markers("heart")
    ev.tl.uncertainty_analysis(
        model, adata, markers, groupby="cell_type", n_samples=3, progress=False
    )
    # what the pass holds for the embedding (computed here without timing)
    rho = model.get_normalized_expression(adata, library_size=1e4, return_numpy=True)
    values = np.log1p(rho)
    genes = [g for v in markers.values() for g in v]
    # the embedding's steps, timed inside one ev.tl.umap call by wrapping what it calls
    from sklearn.neighbors import NearestNeighbors

    import ensemblevi.tl._embedding as embedding

    spent: dict[str, float] = {}

    def timed(label, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
            return out

        return wrapper

    originals = (torch.pca_lowrank, NearestNeighbors.kneighbors, embedding.fuzzy_graph, sc.tl.umap)
    torch.pca_lowrank = timed("embedding: PCA (torch.pca_lowrank)", originals[0])
    NearestNeighbors.kneighbors = timed("embedding: exact kNN (sklearn)", originals[1])
    embedding.fuzzy_graph = timed("embedding: fuzzy graph (numpy)", originals[2])
    sc.tl.umap = timed("embedding: UMAP layout, 200 epochs (sc.tl.umap)", originals[3])
    t = time.perf_counter()
    umap(adata, values)
    whole = time.perf_counter() - t
    torch.pca_lowrank, NearestNeighbors.kneighbors, embedding.fuzzy_graph, sc.tl.umap = originals
    rows = [(label, secs, 0.0) for label, secs in spent.items()]
    rows.append(("embedding: whole tl.umap", whole, 0.0))
    for name, secs, _ in rows:
        print(f"{name}: {secs:.2f} s", flush=True)
    plots = {
        "novelty_umap": lambda: ev.pl.novelty_umap(adata, color="cell_type", return_fig=True),
        "model_spread": lambda: ev.pl.model_spread(adata, return_fig=True),
        "biological_spread": lambda: ev.pl.biological_spread(adata, return_fig=True),
        "member_histograms": lambda: member_histograms(adata, return_fig=True),
        "gene_uncertainty": lambda: ev.pl.gene_uncertainty(adata, highlight=genes, return_fig=True),
    }
    with tempfile.TemporaryDirectory() as out:
        for name, plot in plots.items():
            t = time.perf_counter()
            fig = plot()
            drawn = time.perf_counter() - t
            t = time.perf_counter()
            save_figure(fig, Path(out) / name)
            saved = time.perf_counter() - t
            plt.close(fig)
            rows.append((name, drawn, saved))
            print(f"{name}: {drawn:.2f} s, save {saved:.2f} s", flush=True)
    print("\n| step | draw (s) | save PNG (s) |\n| --- | --- | --- |")
    for name, drawn, saved in rows:
        print(f"| {name} | {drawn:.2f} | {saved:.2f} |")
    first = [r for r in rows if not r[0].startswith("embedding: ") or "whole" in r[0]]
    print(f"| **figure stage total** | | **{sum(d + s for _, d, s in first):.1f}** |")


if __name__ == "__main__":
    main()
