"""Ensemble building blocks: layers with a member axis, and scVI's encoder/decoder on them.

One file per technique: ``_deep`` (independent members), ``_batch`` (BatchEnsemble),
``_hyperbatch`` (Hyper-BatchEnsemble and its hyperparameter distributions),
``_norm_dropout`` (batch norm, dropout, MC dropout's shared network); ``_base`` holds the
member layout and ``LayerSpec``, ``_blocks`` the factories and scVI's blocks. The
package exports the layers a user would build a network from; the factories, blocks and
member-stream switches stay importable from those modules.
"""

from ._batch import BatchEnsembleConv2d, BatchEnsembleLinear
from ._deep import EnsembleConv2d, EnsembleLinear
from ._hyperbatch import HyperBatchEnsembleConv2d, HyperBatchEnsembleLinear
from ._norm_dropout import MemberDropout

__all__ = [
    "BatchEnsembleConv2d",
    "BatchEnsembleLinear",
    "EnsembleConv2d",
    "EnsembleLinear",
    "HyperBatchEnsembleConv2d",
    "HyperBatchEnsembleLinear",
    "MemberDropout",
]
