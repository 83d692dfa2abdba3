"""Analysis tools, scanpy style: take a model and an AnnData, write results into it."""

from ._analysis import uncertainty_analysis
from ._de import differential_expression, expected_fdr, fdr_calls, lfc_posterior, summarise_lfc
from ._embedding import UMAP_KEY, expression_umap, member_umaps, umap
from ._group_novelty import group_novelty
from ._labels import label_calibration, label_uncertainty
from ._markers import (
    MARKER_SETS,
    check_markers,
    data_markers,
    load_markers,
    parse_marker_options,
)
from ._novelty import cell_novelty
from ._novelty_rule import sample_split
from ._seeds import seed_ensemble
from ._spread import expression_spread, gene_uncertainty, point_density
from ._stability import cluster_stability, marker_stability, neighbourhood_stability

__all__ = [
    "MARKER_SETS",
    "UMAP_KEY",
    "cell_novelty",
    "check_markers",
    "cluster_stability",
    "data_markers",
    "differential_expression",
    "expected_fdr",
    "expression_spread",
    "expression_umap",
    "fdr_calls",
    "gene_uncertainty",
    "group_novelty",
    "label_calibration",
    "label_uncertainty",
    "lfc_posterior",
    "load_markers",
    "marker_stability",
    "member_umaps",
    "neighbourhood_stability",
    "parse_marker_options",
    "point_density",
    "sample_split",
    "seed_ensemble",
    "summarise_lfc",
    "umap",
    "uncertainty_analysis",
]
