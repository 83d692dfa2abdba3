"""Figures, scanpy style: read results that ``ensemblevi.tl`` wrote into an AnnData.

Every plot takes ``ax`` (draw into these axes), ``show`` (``None``: when matplotlib is
interactive), ``save`` (a path, or ``True`` for scanpy's ``figdir``) and ``return_fig``,
and returns the Figure (``return_fig=True``), ``None`` (shown) or its Axes. Importing
the package changes no matplotlib setting; the figures' style applies while they draw.
"""

from ._labels import label_calibration, label_confusion
from ._model import calibration, de_volcano, hyperparameter_trajectories
from ._novelty import group_novelty, novelty_umap
from ._spread import biological_spread, gene_uncertainty, member_histograms, model_spread
from ._stability import cluster_stability, member_embeddings, stability_umap
from ._utils import save_figure, style

__all__ = [
    "biological_spread",
    "calibration",
    "cluster_stability",
    "de_volcano",
    "gene_uncertainty",
    "group_novelty",
    "hyperparameter_trajectories",
    "label_calibration",
    "label_confusion",
    "member_embeddings",
    "member_histograms",
    "model_spread",
    "novelty_umap",
    "save_figure",
    "stability_umap",
    "style",
]
