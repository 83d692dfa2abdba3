"""Reference mapping (scArches, Lotfollahi et al. 2022) for ensemble models.

scvi-tools' ``ArchesMixin`` semantics (the reference's registry transferred to the query
with new categories appended, the reference weights loaded, the surgery's freezing), on
the ensemble's own weight layout (see :mod:`ensemblevi.model.base._surgery`); every member
is kept. The query model is an ordinary ensemble model of the same class: train it with
``train()`` and every output works on it.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Self

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi.model.base import BaseModelClass

from ensemblevi._compat import UntrustedModelError, read_saved_model, saved_model_file
from ensemblevi.module import EnsembleVAE

from ._refused import REFUSED
from ._surgery import CovariateSizes, KeepFrozen, freeze_for_query, transfer_reference_weights

logger = logging.getLogger(__name__)

#: Below this share of the reference's genes in the query, mapping is unreliable (warned).
MIN_VAR_NAME_RATIO = 0.8


@dataclass
class Reference:
    """What a query needs of a reference model: registry, arguments, genes and weights.

    Parameters
    ----------
    registry
        The reference's ``AnnDataManager`` registry.
    init_params
        Its ``init_params_`` (constructor arguments).
    var_names
        Its genes, in order.
    state_dict
        Its network's weights (on the CPU).
    """

    registry: dict
    init_params: dict
    var_names: pd.Index
    state_dict: dict[str, torch.Tensor]

    @classmethod
    def read(
        cls, reference_model: str | os.PathLike | BaseModelClass, *, trust: bool = False
    ) -> Reference:
        """From a trained ensemble model or the folder it was saved to.

        Parameters
        ----------
        reference_model
            A trained model of an ensemble class, or a folder given to its ``save``.
        trust
            Also read a folder in scvi-tools' pickled format (see
            :func:`ensemblevi._compat.read_saved_model`): unpickling runs any code the file
            carries. Without it such a folder is refused; a model loaded with
            ``Model.load(path, adata, trust=True)`` can be passed instead.
        """
        if isinstance(reference_model, (str, os.PathLike)):
            path = saved_model_file(reference_model)
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"reference_model: no saved model at {path}; pass the folder given to "
                    "model.save() or the trained model itself."
                )
            try:
                saved = read_saved_model(reference_model, trust=trust)
            except UntrustedModelError as err:
                raise UntrustedModelError(
                    f"reference_model: {err} For a reference you trust, pass the model "
                    "loaded with Model.load(path, adata, trust=True) as reference_model."
                ) from err
            attrs = saved.attrs
            if not attrs.get("is_trained_", False):
                raise ValueError(f"reference_model: the model saved at {path} is not trained.")
            state = dict(saved.state_dict)
            state.pop("pyro_param_store", None)  # scvi-tools saves it with every model
            return cls(attrs["registry_"], attrs["init_params_"], saved.var_names, state)
        if not isinstance(reference_model, BaseModelClass):
            raise TypeError(
                "reference_model must be a trained model or the folder it was saved to, not "
                f"{type(reference_model).__name__}."
            )
        if not isinstance(reference_model.module, EnsembleVAE):
            raise TypeError(
                f"reference_model is a {type(reference_model).__name__}, whose network is not an "
                "EnsembleVAE: for a scvi.model.SCVI, build the reference with "
                "EnsembleSCVI.from_scvi([model]) first (or map with scvi's own "
                "SCVI.load_query_data)."
            )
        if not reference_model.is_trained:
            raise ValueError("reference_model is not trained; train it first.")
        return cls(
            copy.deepcopy(reference_model.registry_),
            copy.deepcopy(reference_model.init_params_),
            pd.Index(np.asarray(reference_model.get_var_names()).astype(str)),
            {k: v.detach().cpu().clone() for k, v in reference_model.module.state_dict().items()},
        )


class ArchesMixin:
    """scArches reference mapping: ``prepare_query_anndata`` and ``load_query_data``.

    Expects what ``scvi.model.base.BaseModelClass`` provides and an
    :class:`~ensemblevi.module.EnsembleVAE` network. The query's freezing lasts for the
    model object's life: a query model saved and loaded again trains unfrozen, as in
    scvi-tools.
    """

    @staticmethod
    def prepare_query_anndata(
        adata: AnnData,
        reference_model: str | os.PathLike | BaseModelClass,
        return_reference_var_names: bool = False,
        inplace: bool = True,
    ) -> AnnData | pd.Index | None:
        """The query's genes as the reference's: missing ones added as zeros, extra dropped.

        Genes end in the reference's order, with zero counts (in ``X`` and every layer) for
        reference genes the query lacks; fewer than 80% of the reference's genes in the
        query gives a warning.

        Parameters
        ----------
        adata
            The query data (raw counts).
        reference_model
            A trained ensemble model or the folder it was saved to.
        return_reference_var_names
            Only return the reference's genes.
        inplace
            Change ``adata`` itself (returns ``None``); else return a new AnnData.
        """
        var_names = Reference.read(reference_model).var_names
        if return_reference_var_names:
            return var_names
        if not isinstance(adata, AnnData):
            raise TypeError(f"adata must be an AnnData, not {type(adata).__name__}.")
        out = _pad_and_order(adata, var_names)
        if not inplace:
            return out
        if out is not adata:
            # anndata has no public way to change an object's genes in place
            adata._init_as_actual(out)
        return None

    @staticmethod
    def prepare_query_mudata(
        mdata: Any,
        reference_model: str | os.PathLike | BaseModelClass,
        return_reference_var_names: bool = False,
        inplace: bool = True,
    ) -> None:
        """Refused: an EnsembleSCVI is set up on an AnnData, not a MuData.

        Parameters
        ----------
        mdata, reference_model, return_reference_var_names, inplace
            scvi-tools' arguments; any call raises.
        """
        raise NotImplementedError(
            f"prepare_query_mudata: {REFUSED[('prepare_query_mudata', 'mdata')]}."
        )

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model: str | os.PathLike | BaseModelClass,
        inplace_subset_query_vars: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
        unfrozen: bool = False,
        freeze_dropout: bool = False,
        freeze_expression: bool = True,
        freeze_decoder_first_layer: bool = True,
        freeze_batchnorm_encoder: bool = True,
        freeze_batchnorm_decoder: bool = False,
        freeze_classifier: bool = True,
        transfer_batch: bool = True,
        registry: dict | None = None,
        datamodule: Any = None,
    ) -> Self:
        """A query model: the reference ensemble extended to the query's new categories.

        The query is registered with the reference's registry, new batch (and categorical
        covariate, label) categories appended; a model of the reference's class and
        arguments is built on it and takes the reference's weights, every member's, with
        the new categories' covariate columns (and ``gene-batch`` dispersions, library-size
        priors of new batches, from the query's cells) initialised. Then scArches'
        freezing: by default only covariate columns (and a latent library encoder, and the
        decoder's batch norms) learn in :meth:`train`; the rest keeps the reference's
        values exactly, also under weight decay.

        Parameters
        ----------
        adata
            The query data, with the reference's genes in its order (see
            :meth:`prepare_query_anndata`) and every ``obs`` column the reference was set up
            with.
        reference_model
            A trained ensemble model of this class or the folder it was saved to.
        inplace_subset_query_vars
            Subset and order the query's genes to the reference's in place (all must be
            there).
        accelerator, device
            Where the query model goes (``"auto"``: a GPU if there is one).
        unfrozen
            Train every weight (overrides the other ``freeze_*`` options).
        freeze_dropout
            No dropout in query training (refused for ``mcdropout``, whose members are
            dropout masks).
        freeze_expression
            The encoder's first layer learns only its covariate columns.
        freeze_decoder_first_layer
            The decoder's first layer learns only its covariate columns.
        freeze_batchnorm_encoder, freeze_batchnorm_decoder
            Keep the encoder's (decoder's) batch-norm weights and running statistics.
        freeze_classifier
            scvi-tools' option for SCANVI's classifier; this model has none, so only
            ``True`` (nothing to train) is accepted.
        transfer_batch
            ``True`` (scvi-tools' default): the query's new batches are appended to the
            reference's. ``False`` is refused (see ``REFUSED``).
        registry, datamodule
            scvi-tools' query mapping without an AnnData; refused (see ``REFUSED``).
        """
        for name, value, default in (
            ("transfer_batch", transfer_batch, True),
            ("registry", registry, None),
            ("datamodule", datamodule, None),
        ):
            if value is not default:
                raise ValueError(
                    f"load_query_data({name}=...): {REFUSED[('load_query_data', name)]}."
                )
        if not freeze_classifier:
            raise ValueError(
                f"freeze_classifier=False: {cls.__name__} has no classifier to train (the "
                "option is for SCANVI); leave it at True."
            )
        if not isinstance(adata, AnnData):
            raise TypeError(f"adata must be an AnnData, not {type(adata).__name__}.")
        ref = Reference.read(reference_model)
        registry = ref.registry
        name = registry.get("model_name")
        if name is not None and name != cls.__name__:
            raise ValueError(
                f"reference_model was trained as a {name}; map the query with "
                f"{name}.load_query_data."
            )
        if registry.get("setup_method_name", "setup_anndata") != "setup_anndata":
            raise ValueError(
                "reference_model was set up with "
                f"{registry['setup_method_name']}; only setup_anndata references can be mapped."
            )
        _check_genes(adata, ref.var_names, inplace_subset_query_vars)
        setup_args = dict(registry["setup_args"])
        _check_obs_columns(adata, setup_args)
        cls.setup_anndata(
            adata,
            source_registry=registry,
            extend_categories=True,
            allow_missing_labels=True,
            **setup_args,
        )
        non_kwargs = dict(ref.init_params.get("non_kwargs", {}))
        kwargs = {
            k: v for group in ref.init_params.get("kwargs", {}).values() for k, v in group.items()
        }
        model = cls(adata, **non_kwargs, **kwargs)
        transfer_reference_weights(
            model.module, ref.state_dict, CovariateSizes.from_registry(registry)
        )
        model.to_device(_resolve_device(accelerator, device))
        model.module.eval()
        model._query_frozen = None
        if not unfrozen:
            model._query_frozen = freeze_for_query(
                model.module,
                freeze_dropout=freeze_dropout,
                freeze_expression=freeze_expression,
                freeze_decoder_first_layer=freeze_decoder_first_layer,
                freeze_batchnorm_encoder=freeze_batchnorm_encoder,
                freeze_batchnorm_decoder=freeze_batchnorm_decoder,
            )
        model.is_trained_ = False
        # saved with the model (scvi-tools keeps attributes ending in "_"): novelty on a
        # query model must be calibrated on its reference's cells, not the query's
        model.is_query_model_ = True
        return model

    def train(self, *args: Any, callbacks: list | None = None, **kwargs: Any):
        """Train, keeping a query model's frozen weights at the reference's values.

        Parameters
        ----------
        *args, callbacks, **kwargs
            As the model's ``train``; a query model adds a callback that writes the frozen
            entries back after every step (weight decay would otherwise move them).
        """
        return super().train(*args, callbacks=self._query_callbacks(callbacks), **kwargs)

    def _query_callbacks(self, callbacks: list | None) -> list:
        """``callbacks`` plus, for a query model, the one that keeps frozen weights frozen."""
        callbacks = list(callbacks or [])
        frozen = getattr(self, "_query_frozen", None)
        if frozen is not None and frozen.entries:
            callbacks.append(KeepFrozen(frozen))
        return callbacks


def _check_genes(adata: AnnData, var_names: pd.Index, subset: bool) -> None:
    given = pd.Index(adata.var_names.astype(str))
    if subset:
        missing = var_names.difference(given)
        if len(missing):
            raise ValueError(
                f"inplace_subset_query_vars=True, but the query lacks {len(missing)} of the "
                f"reference's {len(var_names)} genes (e.g. {list(missing[:5])}); pad them "
                "with prepare_query_anndata(adata, reference_model) first."
            )
        if not given.equals(var_names):
            adata._inplace_subset_var(var_names)  # anndata's own in-place gene subset
        return
    if not given.equals(var_names):
        raise ValueError(
            f"The query's {len(given)} genes are not the reference's {len(var_names)} in its "
            "order; run prepare_query_anndata(adata, reference_model) first, or pass "
            "inplace_subset_query_vars=True when the query has every reference gene."
        )


def _check_obs_columns(adata: AnnData, setup_args: dict) -> None:
    """KeyError, as scvi-tools raises, for each reference ``obs`` column the query lacks."""
    roles = {
        "batch_key": [setup_args.get("batch_key")],
        "labels_key": [setup_args.get("labels_key")],
        "categorical_covariate_keys": list(setup_args.get("categorical_covariate_keys") or []),
        "continuous_covariate_keys": list(setup_args.get("continuous_covariate_keys") or []),
    }
    missing = [
        f"{key!r} ({role})"
        for role, keys in roles.items()
        for key in keys
        if key is not None and key not in adata.obs.columns
    ]
    if missing:
        raise KeyError(
            f"The reference model was set up with obs column(s) {', '.join(missing)}, which "
            "the query AnnData lacks; add them (new batches as new categories) before "
            "load_query_data. Extra query columns are ignored."
        )


def _pad_and_order(adata: AnnData, var_names: pd.Index) -> AnnData:
    given = pd.Index(adata.var_names.astype(str))
    shared = given.intersection(var_names)
    if not len(shared):
        raise ValueError(
            "The query shares no gene with the reference; compare adata.var_names with "
            "prepare_query_anndata(adata, reference_model, return_reference_var_names=True) "
            "(symbols vs Ensembl ids?)."
        )
    ratio = len(shared) / len(var_names)
    logger.info("Found %.1f%% of the reference's genes in the query.", 100 * ratio)
    if ratio < MIN_VAR_NAME_RATIO:
        warnings.warn(
            f"The query has only {ratio:.0%} of the reference's genes (fewer than "
            f"{MIN_VAR_NAME_RATIO:.0%}); the missing ones are zeros, and mapping may be poor.",
            UserWarning,
            stacklevel=3,
        )
    absent = var_names.difference(given)
    out = adata
    if len(absent):
        shape = (adata.n_obs, len(absent))
        pad = AnnData(
            X=sp.csr_matrix(shape, dtype=_dtype(adata.X)),
            layers={k: sp.csr_matrix(shape, dtype=_dtype(v)) for k, v in adata.layers.items()},
            obs=pd.DataFrame(index=adata.obs_names),
            var=pd.DataFrame(index=absent),
        )
        out = anndata.concat([adata, pad], axis=1, join="outer", merge="unique")
        out.obs = adata.obs.copy()
    if not pd.Index(out.var_names.astype(str)).equals(var_names):
        out = out[:, var_names].copy()
    return out


def _dtype(x) -> np.dtype:
    return np.float32 if x is None else x.dtype


def _resolve_device(accelerator: str, device: int | str) -> str:
    """``accelerator`` and ``device`` (Lightning's names) as one torch device string."""
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
        raise ValueError(
            f"accelerator must be 'auto', 'cpu', 'gpu' (or 'cuda') or 'mps', not {accelerator!r}."
        )
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu":
        return "cpu"
    if accelerator == "mps":
        return "mps"
    if not torch.cuda.is_available():
        raise ValueError(f"accelerator={accelerator!r}, but no CUDA GPU is available here.")
    if device == "auto":
        return "cuda:0"
    if isinstance(device, int):
        return f"cuda:{device}"
    return str(device)
