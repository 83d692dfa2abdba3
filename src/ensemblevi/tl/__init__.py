"""Analysis tools, scanpy style: take a model and an AnnData, write results into it.

Options are keyword-only. Helpers behind them (marker lists, the DE core, the UMAP
steps) stay importable from their private modules, e.g.
``from ensemblevi.tl._markers import load_markers``.
"""

from ._analysis import uncertainty_analysis
from ._de import differential_expression
from ._embedding import expression_umap, member_umaps
from ._group_novelty import group_novelty
from ._labels import label_calibration, label_uncertainty
from ._novelty import cell_novelty
from ._novelty_rule import sample_split
from ._seeds import seed_ensemble
from ._spread import expression_spread, gene_uncertainty
from ._stability import cluster_stability, marker_stability, neighbourhood_stability

__all__ = [
    "cell_novelty",
    "cluster_stability",
    "differential_expression",
    "expression_spread",
    "expression_umap",
    "gene_uncertainty",
    "group_novelty",
    "label_calibration",
    "label_uncertainty",
    "marker_stability",
    "member_umaps",
    "neighbourhood_stability",
    "sample_split",
    "seed_ensemble",
    "uncertainty_analysis",
]
