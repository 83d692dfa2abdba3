"""User-facing models (scvi-tools model API)."""

from ._ensemble_scvi import EnsembleSCVI
from ._uncertainty import VarianceParts, count_variance_fraction, decompose_variance

__all__ = ["EnsembleSCVI", "VarianceParts", "count_variance_fraction", "decompose_variance"]
