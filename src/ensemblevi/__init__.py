"""ensemblevi: how far to trust what a deep generative model says about scRNA-seq data."""

from . import data
from ._version import __version__

__all__ = ["__version__", "data"]
