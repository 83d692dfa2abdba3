"""Figures, scanpy style: read results that ``ensemblevi.tl`` wrote into an AnnData.

Every plot takes ``ax`` (draw into these axes), ``show`` (``None``: when matplotlib is
interactive), ``save`` (a path, or ``True`` for scanpy's ``figdir``) and ``return_fig``,
and returns the Figure (``return_fig=True``), ``None`` (shown) or its Axes. Importing
the package changes no matplotlib setting; the figures' style applies while they draw.
"""

from ._model import calibration, de_volcano, hyperparameter_trajectories
from ._novelty import novelty_umap
from ._spread import biological_spread, gene_uncertainty, member_histograms, model_spread
from ._utils import save_figure, style

__all__ = [
    "biological_spread",
    "calibration",
    "de_volcano",
    "gene_uncertainty",
    "hyperparameter_trajectories",
    "member_histograms",
    "model_spread",
    "novelty_umap",
    "save_figure",
    "style",
]
