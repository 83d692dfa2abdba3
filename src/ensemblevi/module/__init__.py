"""Probabilistic models (scvi-tools ``BaseModuleClass`` subclasses) with ensemble members."""

from ._conv_vae import EnsembleConvVAE
from ._ensemble_scanvae import EnsembleSCANVAE
from ._ensemble_vae import EnsembleVAE

__all__ = ["EnsembleConvVAE", "EnsembleSCANVAE", "EnsembleVAE"]
