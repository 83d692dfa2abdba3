"""Ensemble building blocks: layers with a member axis, and scVI's encoder/decoder on them.

One file per technique: ``_deep`` (independent members), ``_batch`` (BatchEnsemble),
``_hyperbatch`` (Hyper-BatchEnsemble and its hyperparameter distributions),
``_norm_dropout`` (batch norm, dropout, MC dropout's shared network); ``_base`` holds the
member layout and :class:`LayerSpec`, ``_blocks`` the factories and scVI's blocks.
"""

from ensemblevi._constants import EnsembleKind

from ._base import (
    ConvBase,
    EnsembleModule,
    LayerSpec,
    LinearBase,
    init_uniform_,
    member_draw,
    set_active_member,
    set_member_stream,
    split_members,
)
from ._batch import (
    BatchEnsembleConv2d,
    BatchEnsembleConvTranspose2d,
    BatchEnsembleLinear,
    fast_weight_init_,
)
from ._blocks import (
    EnsembleDecoderSCVI,
    EnsembleEncoder,
    EnsembleFCLayers,
    make_conv,
    make_dropout,
    make_linear,
)
from ._deep import EnsembleConv2d, EnsembleConvTranspose2d, EnsembleLinear
from ._hyperbatch import (
    HyperBatchEnsembleConv2d,
    HyperBatchEnsembleConvTranspose2d,
    HyperBatchEnsembleLinear,
    HyperDropout,
    HyperEmbedding,
    Hyperparameter,
    LogUniformHyperparameters,
    hyper_l2_penalty,
    set_hyperparameters,
)
from ._norm_dropout import EnsembleBatchNorm, MemberDropout, SharedLinear

__all__ = [
    "BatchEnsembleConv2d",
    "BatchEnsembleConvTranspose2d",
    "BatchEnsembleLinear",
    "ConvBase",
    "EnsembleBatchNorm",
    "EnsembleConv2d",
    "EnsembleConvTranspose2d",
    "EnsembleDecoderSCVI",
    "EnsembleEncoder",
    "EnsembleFCLayers",
    "EnsembleKind",
    "EnsembleLinear",
    "EnsembleModule",
    "HyperBatchEnsembleConv2d",
    "HyperBatchEnsembleConvTranspose2d",
    "HyperBatchEnsembleLinear",
    "HyperDropout",
    "HyperEmbedding",
    "Hyperparameter",
    "LayerSpec",
    "LinearBase",
    "LogUniformHyperparameters",
    "MemberDropout",
    "SharedLinear",
    "fast_weight_init_",
    "hyper_l2_penalty",
    "init_uniform_",
    "make_conv",
    "make_dropout",
    "make_linear",
    "member_draw",
    "set_active_member",
    "set_hyperparameters",
    "set_member_stream",
    "split_members",
]
