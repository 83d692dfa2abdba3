"""Ensemble building blocks: layers with a member axis, and scVI's encoder/decoder on them."""

from ensemblevi._constants import EnsembleKind

from ._blocks import (
    EnsembleDecoderSCVI,
    EnsembleEncoder,
    EnsembleFCLayers,
    make_linear,
)
from ._layers import (
    BatchEnsembleLinear,
    EnsembleBatchNorm,
    EnsembleLinear,
    EnsembleModule,
    MemberDropout,
    SharedLinear,
    fast_weight_init_,
    set_active_member,
    split_members,
)

__all__ = [
    "BatchEnsembleLinear",
    "EnsembleBatchNorm",
    "EnsembleDecoderSCVI",
    "EnsembleEncoder",
    "EnsembleFCLayers",
    "EnsembleKind",
    "EnsembleLinear",
    "EnsembleModule",
    "MemberDropout",
    "SharedLinear",
    "fast_weight_init_",
    "make_linear",
    "set_active_member",
    "split_members",
]
