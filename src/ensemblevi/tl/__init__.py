"""Analysis tools, scanpy style: take a model and an AnnData, write results into it."""

from ._de import differential_expression, expected_fdr, fdr_calls, lfc_posterior, summarise_lfc
from ._markers import MARKER_SETS, check_markers, load_markers, parse_marker_options
from ._novelty import cell_novelty
from ._seeds import seed_ensemble
from ._spread import expression_spread, gene_uncertainty

__all__ = [
    "MARKER_SETS",
    "cell_novelty",
    "check_markers",
    "differential_expression",
    "expected_fdr",
    "expression_spread",
    "fdr_calls",
    "gene_uncertainty",
    "lfc_posterior",
    "load_markers",
    "parse_marker_options",
    "seed_ensemble",
    "summarise_lfc",
]
