"""Ensemble building blocks: layers with a member axis, and scVI's encoder/decoder on them."""

from ensemblevi._constants import EnsembleKind

from ._blocks import (
    EnsembleDecoderSCVI,
    EnsembleEncoder,
    EnsembleFCLayers,
    make_linear,
)
from ._hyper import (
    BatchEnsembleConv2d,
    BatchEnsembleConvTranspose2d,
    EnsembleConv2d,
    EnsembleConvTranspose2d,
    HyperBatchEnsembleConv2d,
    HyperBatchEnsembleConvTranspose2d,
    HyperBatchEnsembleLinear,
    HyperDropout,
    Hyperparameter,
    LogUniformHyperparameters,
    hyper_l2_penalty,
    set_hyperparameters,
)
from ._layers import (
    BatchEnsembleLinear,
    EnsembleBatchNorm,
    EnsembleLinear,
    EnsembleModule,
    MemberDropout,
    SharedLinear,
    fast_weight_init_,
    member_draw,
    set_active_member,
    set_member_stream,
    split_members,
)

__all__ = [
    "BatchEnsembleConv2d",
    "BatchEnsembleConvTranspose2d",
    "BatchEnsembleLinear",
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
    "Hyperparameter",
    "LogUniformHyperparameters",
    "MemberDropout",
    "SharedLinear",
    "fast_weight_init_",
    "hyper_l2_penalty",
    "make_linear",
    "member_draw",
    "set_active_member",
    "set_hyperparameters",
    "set_member_stream",
    "split_members",
]
