"""Data layer: reading, validating and preprocessing counts, and the synthetic generator.

The checks the models run before training (``check_*``) and the writer of ``.h5ad``
files stay importable from their private modules (``ensemblevi.data._validate``,
``ensemblevi.data._io``).
"""

from ._images import digits
from ._io import heart_cell_atlas, read
from ._preprocess import preprocess
from ._replicates import synthetic_replicates
from ._synthetic import synthetic
from ._validate import validate_counts

__all__ = [
    "digits",
    "heart_cell_atlas",
    "preprocess",
    "read",
    "synthetic",
    "synthetic_replicates",
    "validate_counts",
]
