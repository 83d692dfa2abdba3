"""scArches surgery on an EnsembleVAE: reference weights into a query network, and freezing.

The query network has more covariate categories than the reference (new batches, new
categories of categorical covariates, new labels). Its one-hot covariate columns sit on
the *input* axis of the layers that take covariates, block after block (batch first, then
each categorical covariate, as ``EnsembleFCLayers`` concatenates them), and the new
categories of each block come after its old ones, so the old columns do not simply stay
in front: every block is mapped on its own. A covariate with a single category has no
column at all (scvi-tools' convention), so when a query adds categories to it, its old
category's new column is zero, which keeps the reference function on reference cells.

Which axis of which parameter is the input axis depends on the layer kind:
``(K, d_in, d_out)`` kernels (deep), ``(d_in, d_out)`` shared kernels and ``(K, d_in)``
input fast weights ``r`` (BatchEnsemble, Hyper-BatchEnsemble), ``(d_out, d_in)``
(MC dropout's one ``nn.Linear``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS
from torch import nn

from ensemblevi.nn import (
    BatchEnsembleLinear,
    EnsembleLinear,
    HyperBatchEnsembleLinear,
    MemberDropout,
)
from ensemblevi.nn._blocks import EnsembleFCLayers
from ensemblevi.nn._hyperbatch import HyperDropout
from ensemblevi.nn._norm_dropout import EnsembleBatchNorm, SharedLinear

#: The state-dict suffix of each parameter of a linear layer that has an input axis, and
#: that axis; every other parameter of the layer (biases, output fast weights ``s``, the
#: HBE embedding) touches every input column and is frozen with the expression weights.
INPUT_AXES: dict[type, dict[str, int]] = {
    EnsembleLinear: {"weight": 1},
    BatchEnsembleLinear: {"weight": 0, "r": 1},
    HyperBatchEnsembleLinear: {"weight": 0, "weight_hyper": 0, "r": 1},
    SharedLinear: {"linear.weight": 1},
}

NEW = -1  # a new category's column: keeps the query network's initialisation
ZERO = -2  # an old single category, which had no column in the reference


@dataclass(frozen=True)
class CovariateSizes:
    """Categories of the covariates a registry holds.

    Parameters
    ----------
    n_batch, n_labels
        Batch and label categories.
    n_cats
        Categories of each categorical covariate, in registration order.
    """

    n_batch: int
    n_labels: int
    n_cats: tuple[int, ...] = ()

    @classmethod
    def from_registry(cls, registry: dict) -> CovariateSizes:
        """Read the sizes from an ``AnnDataManager`` registry (a saved model's or a live one).

        Parameters
        ----------
        registry
            ``adata_manager.registry`` or a saved model's ``registry_``.
        """
        fields = registry["field_registries"]

        def n(key: str) -> int:
            return len(fields[key]["state_registry"]["categorical_mapping"])

        cats = ()
        if REGISTRY_KEYS.CAT_COVS_KEY in fields and fields[REGISTRY_KEYS.CAT_COVS_KEY].get(
            "state_registry"
        ):
            cats = tuple(fields[REGISTRY_KEYS.CAT_COVS_KEY]["state_registry"]["n_cats_per_key"])
        return cls(n(REGISTRY_KEYS.BATCH_KEY), n(REGISTRY_KEYS.LABELS_KEY), cats)


def _category_map(n_old: int, n_new: int) -> list[int]:
    """Source index of each new category (categories are only ever appended)."""
    return [c if c < n_old else NEW for c in range(n_new)]


def _input_map(stack: EnsembleFCLayers, layer: int, old: CovariateSizes, n_in: int) -> list[int]:
    """Source column of each input column of one layer of a covariate-taking stack."""
    blocks_new = stack.n_cat_list
    if not (layer == 0 or stack.inject_covariates) or not blocks_new:
        return list(range(n_in))
    n_old_cats = [old.n_labels] if stack.cat_role == "labels" else [old.n_batch, *old.n_cats]
    d_prev = n_in - sum(blocks_new)
    src = list(range(d_prev))
    offset = d_prev
    for n_old, width in zip(n_old_cats, blocks_new, strict=True):
        old_width = n_old if n_old > 1 else 0
        for c in range(width):
            if c >= n_old:
                src.append(NEW)
            elif old_width:
                src.append(offset + c)
            else:
                src.append(ZERO)
        offset += old_width
    return src


def input_axis_maps(module: nn.Module, old: CovariateSizes) -> dict[str, tuple[int, list[int]]]:
    """``{state-dict key: (axis, source index per position)}`` of every covariate axis.

    Parameters
    ----------
    module
        The query :class:`~ensemblevi.module.EnsembleVAE`.
    old
        The reference's covariate sizes.
    """
    maps: dict[str, tuple[int, list[int]]] = {}
    for name, stack in module.named_modules():
        if not isinstance(stack, EnsembleFCLayers):
            continue
        for i, layer in enumerate(stack.layers):
            linear = layer["linear"]
            src = _input_map(stack, i, old, linear.in_features)
            for suffix, axis in INPUT_AXES[type(linear)].items():
                maps[f"{name}.layers.{i}.linear.{suffix}"] = (axis, src)
    new = CovariateSizes(module.n_batch, module.n_labels)
    batch = _category_map(old.n_batch, new.n_batch)
    for key in ("library_log_means", "library_log_vars"):
        maps[key] = (1, batch)
    if module.dispersion == "gene-batch":
        maps["px_r"] = (2, batch)
    elif module.dispersion == "gene-label":
        maps["px_r"] = (2, _category_map(old.n_labels, module.n_labels))
    return maps


def _remap(old: torch.Tensor, init: torch.Tensor, axis: int, src: list[int]) -> torch.Tensor:
    out = init.detach().clone()
    idx = torch.tensor(src, device=out.device)
    keep = idx >= 0
    if keep.any():
        taken = old.to(out.device, out.dtype).index_select(axis, idx[keep])
        out.index_copy_(axis, keep.nonzero().squeeze(1), taken)
    zero = (idx == ZERO).nonzero().squeeze(1)
    if zero.numel():
        out.index_fill_(axis, zero, 0.0)
    return out


@torch.no_grad()
def transfer_reference_weights(
    module: nn.Module, reference: dict[str, torch.Tensor], old: CovariateSizes
) -> None:
    """Load a reference network's state into the query ``module``, category by category.

    Tensors of the same shape are copied; those with a covariate axis get the reference's
    columns at the positions of their categories and keep the query's initialisation for
    new categories. Any other difference raises a ``ValueError`` naming the tensor.

    Parameters
    ----------
    module
        The query :class:`~ensemblevi.module.EnsembleVAE`, built with the extended registry.
    reference
        The reference network's ``state_dict()``.
    old
        The reference's covariate sizes.
    """
    target = module.state_dict()
    missing = sorted(set(target) - set(reference))
    extra = sorted(set(reference) - set(target))
    if missing or extra:
        raise ValueError(
            "The reference model's weights are not an EnsembleVAE of the query's architecture "
            f"(missing: {missing[:5]}, unexpected: {extra[:5]}). Pass an EnsembleSCVI (or its "
            "saved folder); for a scvi.model.SCVI, build one with EnsembleSCVI.from_scvi first."
        )
    maps = input_axis_maps(module, old)
    state = {}
    for key, init in target.items():
        ref = reference[key]
        if ref.shape == init.shape and key not in maps:
            state[key] = ref
            continue
        if key not in maps:
            raise ValueError(
                f"Reference tensor {key!r} has shape {tuple(ref.shape)}, the query's "
                f"{tuple(init.shape)}: only covariate categories may differ between a reference "
                "and its query, and this tensor has none."
            )
        axis, src = maps[key]
        n_old = max([s for s in src if s >= 0], default=-1) + 1
        if ref.shape[axis] < n_old or ref.dim() != init.dim():
            raise ValueError(
                f"Reference tensor {key!r} of shape {tuple(ref.shape)} does not fit the query's "
                f"{tuple(init.shape)} with the reference registry's covariate categories."
            )
        state[key] = _remap(ref, init, axis, src)
    module.load_state_dict(state)


@dataclass
class FrozenEntries:
    """Parameters (or parts) that query training must leave at their reference values.

    The gradient hooks zero their gradients; weight decay would still move them, so
    :class:`KeepFrozen` writes the reference values back after every optimiser step.

    Parameters
    ----------
    entries
        ``(parameter, trainable mask or None for all frozen, reference values)``.
    hooks
        The gradient hooks' handles.
    """

    entries: list[tuple[nn.Parameter, torch.Tensor | None, torch.Tensor]] = field(
        default_factory=list
    )
    hooks: list = field(default_factory=list)

    def restore(self) -> None:
        """Put the frozen values back."""
        with torch.no_grad():
            for i, (p, mask, ref) in enumerate(self.entries):
                if ref.device != p.device:
                    ref = ref.to(p.device)
                    mask = None if mask is None else mask.to(p.device)
                    self.entries[i] = (p, mask, ref)
                p.copy_(ref if mask is None else torch.where(mask, p, ref))


class KeepFrozen(Callback):
    """Lightning callback: the frozen entries back to their reference values after each step.

    Parameters
    ----------
    frozen
        The query model's :class:`FrozenEntries`.
    """

    def __init__(self, frozen: FrozenEntries):
        super().__init__()
        self.frozen = frozen

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Restore after the batch's optimiser step(s).

        Parameters
        ----------
        trainer, pl_module, outputs, batch, batch_idx
            Lightning's arguments.
        """
        self.frozen.restore()


def _stacks(module: nn.Module) -> Iterator[tuple[str, EnsembleFCLayers]]:
    yield "encoder", module.z_encoder.encoder
    yield "decoder", module.decoder.px_decoder


def freeze_for_query(
    module: nn.Module,
    *,
    freeze_dropout: bool,
    freeze_expression: bool,
    freeze_decoder_first_layer: bool,
    freeze_batchnorm_encoder: bool,
    freeze_batchnorm_decoder: bool,
) -> FrozenEntries:
    """scArches' freezing of a query network: only the covariate columns learn, by default.

    As ``scvi.model.base.ArchesMixin``: the first layer of the encoder (and of the decoder)
    learns only its covariate columns unless ``freeze_expression=False``
    (``freeze_decoder_first_layer=False``), deeper layers learn their injected covariate
    columns; everything else (biases, latent and likelihood heads, dispersion, BatchEnsemble
    output fast weights, hyperparameter embeddings and bounds) is frozen, except the
    library-size encoder (all of it learns) and the batch norms not frozen by the options
    (frozen ones keep their running statistics: momentum 0).

    Parameters
    ----------
    module
        The query :class:`~ensemblevi.module.EnsembleVAE`, with the reference's weights.
    freeze_dropout, freeze_expression, freeze_decoder_first_layer, freeze_batchnorm_encoder,
    freeze_batchnorm_decoder
        As in :meth:`~ensemblevi.model.base.ArchesMixin.load_query_data`.
    """
    full: set[int] = set()
    masks: dict[int, torch.Tensor] = {}
    if module.l_encoder is not None:
        full |= {id(p) for p in module.l_encoder.parameters()}
    for part, stack in _stacks(module):
        learn_first = not (freeze_expression if part == "encoder" else freeze_decoder_first_layer)
        freeze_bn = freeze_batchnorm_encoder if part == "encoder" else freeze_batchnorm_decoder
        n_cov = sum(stack.n_cat_list)
        for i, layer in enumerate(stack.layers):
            linear = layer["linear"]
            if i == 0 and learn_first:
                full |= {id(p) for p in linear.parameters()}
            elif n_cov and (i == 0 or stack.inject_covariates):
                for suffix, axis in INPUT_AXES[type(linear)].items():
                    p = linear.get_parameter(suffix)
                    mask = torch.zeros_like(p, dtype=torch.bool)
                    mask.narrow(axis, p.shape[axis] - n_cov, n_cov).fill_(True)
                    masks[id(p)] = mask
            bn = layer["bn"]
            if isinstance(bn, EnsembleBatchNorm):
                if freeze_bn:
                    bn.momentum = 0.0
                else:
                    full |= {id(p) for p in bn.parameters()}
            if freeze_dropout:
                _drop_off(layer)
    bounds = {id(p) for p in module.hyper_parameters()}
    frozen = FrozenEntries()
    for p in module.parameters():
        if id(p) in full:
            p.requires_grad_(True)
        elif id(p) in masks:
            mask = masks[id(p)]
            p.requires_grad_(True)
            frozen.hooks.append(p.register_hook(_masked(mask)))
            frozen.entries.append((p, mask, p.detach().clone()))
        elif id(p) in bounds:
            # the tune step differentiates the bounds: they keep requires_grad, at zero gradient
            frozen.hooks.append(p.register_hook(torch.zeros_like))
            frozen.entries.append((p, None, p.detach().clone()))
        else:
            p.requires_grad_(False)
    return frozen


def _masked(mask: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask.to(grad.device, grad.dtype)

    return hook


def _drop_off(layer: nn.ModuleDict) -> None:
    drop = layer["dropout"]
    if isinstance(drop, MemberDropout):
        if drop.always_on:
            raise ValueError(
                "freeze_dropout=True would switch off the dropout masks that are the members of "
                "an ensemble='mcdropout' model (they would all become one network); use "
                "freeze_dropout=False."
            )
        drop.p = 0.0
    elif isinstance(drop, HyperDropout):
        # the tuned rate stays a hyperparameter of the layers; only its masks are dropped
        layer["dropout"] = MemberDropout(drop.n_members, 0.0)
