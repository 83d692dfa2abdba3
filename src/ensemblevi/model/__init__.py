"""User-facing models (scvi-tools model API)."""

from ._ensemble_scvi import EnsembleSCVI
from ._members import MemberMethodError, Members, MemberView
from ._uncertainty import VarianceParts, count_variance_fraction, decompose_variance

__all__ = [
    "EnsembleSCVI",
    "MemberMethodError",
    "MemberView",
    "Members",
    "VarianceParts",
    "count_variance_fraction",
    "decompose_variance",
]
