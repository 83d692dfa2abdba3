"""Figures, scanpy style: read results that ``ensemblevi.tl`` wrote into an AnnData."""

from ._plots import (
    biological_spread,
    calibration,
    de_volcano,
    gene_uncertainty,
    hyperparameter_trajectories,
    member_histograms,
    model_spread,
    novelty_umap,
    save_figure,
)

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
]
