"""Data layer: reading, validating and preprocessing counts, and the synthetic generator."""

from ._images import check_images, digits, load_images
from ._io import HEART_FILE, HEART_OBS, heart_cell_atlas, read, write_h5ad_atomic
from ._preprocess import preprocess
from ._replicates import synthetic_replicates
from ._synthetic import DEFAULTS, PRESETS, params_from_uns, resolve_params, synthetic
from ._validate import (
    CountsReport,
    check_finite_counts,
    check_labels_column,
    check_obs_complete,
    check_setup_data,
    check_size,
    check_size_factors,
    check_unique_genes,
    get_counts,
    is_collection,
    missing_obs_values,
    require_obs_columns,
    validate_counts,
)

__all__ = [
    "DEFAULTS",
    "HEART_FILE",
    "HEART_OBS",
    "PRESETS",
    "CountsReport",
    "check_finite_counts",
    "check_images",
    "check_labels_column",
    "check_obs_complete",
    "check_setup_data",
    "check_size",
    "check_size_factors",
    "check_unique_genes",
    "digits",
    "get_counts",
    "heart_cell_atlas",
    "is_collection",
    "load_images",
    "missing_obs_values",
    "params_from_uns",
    "preprocess",
    "read",
    "require_obs_columns",
    "resolve_params",
    "synthetic",
    "synthetic_replicates",
    "validate_counts",
    "write_h5ad_atomic",
]
