"""User-facing models (scvi-tools model API)."""

from ._conv_vae import ConvVAE
from ._ensemble_scanvi import EnsembleSCANVI
from ._ensemble_scvi import EnsembleSCVI
from ._members import check_member_contract
from .base._members import MemberMethodError, Members, MemberView
from .base._uncertainty import VarianceParts, count_variance_fraction, decompose_variance

__all__ = [
    "ConvVAE",
    "EnsembleSCANVI",
    "EnsembleSCVI",
    "MemberMethodError",
    "MemberView",
    "Members",
    "VarianceParts",
    "check_member_contract",
    "count_variance_fraction",
    "decompose_variance",
]
