"""User-facing models (scvi-tools model API)."""

from ._conv_vae import ConvVAE
from ._ensemble_scanvi import EnsembleSCANVI
from ._ensemble_scvi import EnsembleSCVI

__all__ = ["ConvVAE", "EnsembleSCANVI", "EnsembleSCVI"]
