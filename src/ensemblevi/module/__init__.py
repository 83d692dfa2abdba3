"""Probabilistic models (scvi-tools ``BaseModuleClass`` subclasses) with ensemble members."""

from ._ensemble_vae import EnsembleVAE, Predictive
from ._from_scvi import load_scvi_member

__all__ = ["EnsembleVAE", "Predictive", "load_scvi_member"]
