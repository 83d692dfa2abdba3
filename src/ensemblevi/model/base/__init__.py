"""Building blocks of the ensemble model, as ``scvi.model.base``: mixins and the DE core."""

from ._archesmixin import ArchesMixin
from ._assembly import AssemblyMixin
from ._de_core import ensemble_de, summarise_lfc
from ._de_lfc import lfc_posterior
from ._embeddingmixin import EnsembleEmbeddingMixin
from ._ensemblemixin import EnsembleMixin
from ._minification import MinificationMixin
from ._rnamixin import EnsembleRNASeqMixin
from ._uncertaintymixin import UncertaintyMixin
from ._vaemixin import EnsembleVAEMixin

__all__ = [
    "ArchesMixin",
    "AssemblyMixin",
    "EnsembleEmbeddingMixin",
    "EnsembleMixin",
    "EnsembleRNASeqMixin",
    "EnsembleVAEMixin",
    "MinificationMixin",
    "UncertaintyMixin",
    "ensemble_de",
    "lfc_posterior",
    "summarise_lfc",
]
