"""ensemblevi: how far to trust what a deep generative model says about scRNA-seq data."""

from . import data, metrics, model, module, nn, pl, tl, train
from ._version import __version__

__all__ = ["__version__", "data", "metrics", "model", "module", "nn", "pl", "tl", "train"]
