"""Probabilistic models (scvi-tools ``BaseModuleClass`` subclasses) with ensemble members."""

from ._conv_vae import EnsembleConvVAE
from ._ensemble_scanvae import EnsembleSCANVAE
from ._ensemble_vae import EnsembleVAE
from ._from_scvi import load_scanvi_member, load_scvi_member
from ._hyperparameters import DEFAULT_HYPERPARAMETERS, resolve_hyperparameters
from ._predictive import Predictive

__all__ = [
    "DEFAULT_HYPERPARAMETERS",
    "EnsembleConvVAE",
    "EnsembleSCANVAE",
    "EnsembleVAE",
    "Predictive",
    "load_scanvi_member",
    "load_scvi_member",
    "resolve_hyperparameters",
]
