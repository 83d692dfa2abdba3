"""Every ``pl`` figure at a given data size, saved as PNG, with its overlapping and cut text.

Builds the ``heartlike`` preset (``--cells``; 3,000 is the demo's size, 18,641 the heart
atlas'), trains a deep ensemble of 4 briefly (the figures' layout does not depend on
training), runs the tools each figure reads, then draws and saves every figure under
``--out`` and counts, per figure, the pairs of text boxes (labels, tick labels, titles)
that overlap and the text boxes cut by the figure's edge. A figure fit for a paper has
none of either.

Run: ``.venv/bin/python benchmarks/check_figures.py --cells 3000 --out figs_3k``
"""

from __future__ import annotations

import argparse
import logging
import pickle
import time
import warnings
from itertools import combinations
from pathlib import Path


def drawn_texts(axis) -> list:
    """The text an Axes draws: its texts and annotations, titles, axis labels, legend and
    the tick labels of the ticks inside the view (matplotlib keeps stale tick labels of
    ticks outside it, which are not drawn; ``_update_ticks`` is what its draw uses)."""
    from matplotlib.text import Text

    texts = [*axis.texts, axis.title, axis._left_title, axis._right_title]
    texts += [axis.xaxis.label, axis.yaxis.label]
    if axis.get_legend() is not None:
        texts += axis.get_legend().get_texts()
    for ax_ in (axis.xaxis, axis.yaxis):
        for tick in ax_._update_ticks():
            texts += [tick.label1, tick.label2]
    return [t for t in texts if isinstance(t, Text) and t.get_visible() and t.get_text().strip()]


def text_problems(fig) -> tuple[int, int]:
    """``(overlapping pairs, cut boxes)`` of the drawn text of ``fig``, per Axes."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    overlaps = cut = 0
    for axis in fig.axes:
        if not axis.get_visible() or not axis.axison:
            continue
        # the text's own box: an Annotation's extent includes its leader line
        boxes = [Text.get_window_extent(t, renderer) for t in drawn_texts(axis)]
        overlaps += sum(a.overlaps(b) for a, b in combinations(boxes, 2))
        cut += sum(
            b.x0 < frame.x0 - 1 or b.x1 > frame.x1 + 1 or b.y0 < frame.y0 - 1 or b.y1 > frame.y1 + 1
            for b in boxes
        )
    return overlaps, cut


def analysed(args, markers):
    """A briefly trained deep ensemble's analysis of ``heartlike`` at ``args.cells``."""
    import ensemblevi as ev

    t0 = time.perf_counter()
    adata = ev.data.synthetic("heartlike", seed=0, n_cells=args.cells)
    ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ev.model.EnsembleSCVI(adata, n_members=args.members, ensemble="deep", seed=0)
    model.train(max_epochs=args.epochs, seed=0, enable_progress_bar=False)
    print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
    t = time.perf_counter()
    ev.tl.uncertainty_analysis(
        model, adata, markers, groupby="cell_type", n_samples=3, embedding=True, progress=False
    )
    ev.tl.group_novelty(model, adata, groupby="cell_type", progress=False)
    ev.tl.cluster_stability(model, adata)
    ev.tl.member_umaps(model, adata, members=min(3, args.members), n_epochs=100)
    types = adata.obs["cell_type"].value_counts().index
    de = ev.tl.differential_expression(
        model, adata, groupby="cell_type", group1=types[0], group2=types[1], progress=False
    )
    print(f"tools in {time.perf_counter() - t:.0f} s ({len(de)} DE genes)", flush=True)
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("figures_check"))
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="pickle of the analysed AnnData: written after the tools, read instead of "
        "training and running them when it exists (to redraw after a change to pl)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("scvi").setLevel(logging.ERROR)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ensemblevi as ev
    from ensemblevi.pl._spread import member_histograms
    from ensemblevi.pl._utils import save_figure
    from ensemblevi.tl._markers import load_markers

    t0 = time.perf_counter()
    markers = load_markers("heart")
    genes = [g for v in markers.values() for g in v]
    if args.cache is not None and args.cache.exists():
        with open(args.cache, "rb") as fh:
            adata = pickle.load(fh)
    else:
        adata = analysed(args, markers)
        if args.cache is not None:
            with open(args.cache, "wb") as fh:
                pickle.dump(adata, fh)
    plots = {
        "gene_uncertainty": lambda: ev.pl.gene_uncertainty(adata, highlight=genes, return_fig=True),
        "group_novelty": lambda: ev.pl.group_novelty(adata, return_fig=True),
        "novelty_umap": lambda: ev.pl.novelty_umap(adata, color="cell_type", return_fig=True),
        "model_spread": lambda: ev.pl.model_spread(adata, return_fig=True),
        "biological_spread": lambda: ev.pl.biological_spread(adata, return_fig=True),
        "member_histograms": lambda: member_histograms(adata, return_fig=True),
        "cluster_stability": lambda: ev.pl.cluster_stability(adata, return_fig=True),
        "stability_umap": lambda: ev.pl.stability_umap(adata, return_fig=True),
        "member_embeddings": lambda: ev.pl.member_embeddings(adata, return_fig=True),
        "de_volcano": lambda: ev.pl.de_volcano(adata, return_fig=True),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    print("\n| figure | draw + save (s) | overlapping text pairs | cut text |")
    print("| --- | --- | --- | --- |")
    for name, plot in plots.items():
        t = time.perf_counter()
        fig = plot()
        save_figure(fig, args.out / name)
        secs = time.perf_counter() - t
        overlaps, cut = text_problems(fig)
        plt.close(fig)
        print(f"| {name} | {secs:.1f} | {overlaps} | {cut} |", flush=True)
    print(f"\n{args.cells} cells, total {time.perf_counter() - t0:.0f} s; PNGs in {args.out}")


if __name__ == "__main__":
    main()
