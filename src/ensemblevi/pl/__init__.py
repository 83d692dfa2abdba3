"""Figures, scanpy style: read results that ``ensemblevi.tl`` wrote into an AnnData.

Every plot takes ``ax`` (draw into these axes), ``show`` (``None``: follow
``scanpy.settings.autoshow``), ``save`` (a file-name suffix written under
``scanpy.settings.figdir``, or ``True`` for the plot's default name) and ``return_fig``
(return the Figure), as scanpy's plots do; without ``show`` or ``return_fig`` it returns
its Axes. Importing the package changes no matplotlib setting; the figures' style applies
while they draw.
"""

from ._labels import label_calibration, label_confusion
from ._model import calibration, de_volcano, hyperparameter_trajectories
from ._novelty import group_novelty, novelty_umap
from ._spread import biological_spread, gene_uncertainty, model_spread
from ._stability import cluster_stability, member_embeddings, stability_umap

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
    "model_spread",
    "novelty_umap",
    "stability_umap",
]
