"""Probabilistic models (scvi-tools ``BaseModuleClass`` subclasses) with ensemble members."""

from ._ensemble_vae import ENSEMBLE_KINDS, EnsembleVAE

__all__ = ["ENSEMBLE_KINDS", "EnsembleVAE"]
