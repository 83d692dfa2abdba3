"""EnsembleSCANVI: an ensemble of scANVI models (label transfer) trained in one pass.

An :class:`~ensemblevi.model.EnsembleSCVI` whose network is an
:class:`~ensemblevi.module.EnsembleSCANVAE`: every scVI output, uncertainty, novelty and
stability tool works on it unchanged; this class adds scANVI's set-up, its start from a
trained scVI ensemble, semi-supervised training and the members' label predictions.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LabelsWithUnlabeledObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from scvi.dataloaders import SemiSupervisedDataSplitter
from scvi.model.base import BaseModelClass, SemisupervisedTrainingMixin
from scvi.train import TrainRunner
from scvi.train._callbacks import SubSampleLabels

from ensemblevi.data._validate import check_setup_data
from ensemblevi.module import EnsembleSCANVAE
from ensemblevi.train import EnsembleSemiSupervisedTrainingPlan
from ensemblevi.train._plan import HyperSemiSupervisedTrainingPlan

from ._ensemble_scvi import EnsembleSCVI
from ._source import SourceScviMixin
from .base._archesmixin import Reference
from .base._de_settings import SAMPLE_REGISTRY_KEY

#: setup arguments under which a query's cells need a mapped model, not the reference's
COVARIATE_KEYS = ("batch_key", "categorical_covariate_keys", "continuous_covariate_keys")


class EnsembleSCANVI(SourceScviMixin, EnsembleSCVI):
    """An ensemble of K scANVI models, trained together in one vectorised pass.

    The scvi-tools ``SCANVI`` API (``setup_anndata(labels_key, unlabeled_category)``,
    :meth:`from_scvi_model`, ``train``, :meth:`predict`, ``save``/``load``,
    ``load_query_data``) over an :class:`~ensemblevi.module.EnsembleSCANVAE`; every
    :class:`EnsembleSCVI` output (normalised expression, DE, uncertainty, latents per
    member) works too. :meth:`predict` returns the ensemble's mixture of the members'
    label probabilities; :meth:`predict_members` each member's, from which
    :func:`ensemblevi.tl.label_uncertainty` computes entropy, mutual information and vote
    agreement and flags cells of unknown type.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (required: the cell types are read
        from it).
    n_members
        Number of members K.
    ensemble
        ``deep``, ``batch``, ``hyperbatch``, ``mcdropout`` or ``single``, as in
        :class:`EnsembleSCVI`.
    **kwargs
        :class:`EnsembleSCVI`'s arguments (``n_hidden``, ``n_latent``, ``seed``, ...) and
        :class:`~ensemblevi.module.EnsembleSCANVAE`'s (``linear_classifier``,
        ``classifier_parameters``, ``y_prior``).

    Examples
    --------
    >>> ev.model.EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    >>> vae = ev.model.EnsembleSCVI(adata, n_members=4)
    >>> vae.train(max_epochs=100)
    >>> model = ev.model.EnsembleSCANVI.from_scvi_model(vae, "Unknown", labels_key="cell_type")
    >>> model.train(max_epochs=20)
    >>> probs = model.predict(soft=True)  # the ensemble's label probabilities
    >>> ev.tl.label_uncertainty(model, adata)  # entropy, mutual information, unknown cells
    """

    _module_cls = EnsembleSCANVAE
    _training_plan_cls = EnsembleSemiSupervisedTrainingPlan
    _data_splitter_cls = SemiSupervisedDataSplitter
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata: AnnData | None = None,
        n_members: int = 4,
        ensemble: str = "deep",
        **kwargs: Any,
    ):
        if adata is None:
            raise ValueError(
                "EnsembleSCANVI reads its cell types from the AnnData: build it with one "
                "registered by EnsembleSCANVI.setup_anndata."
            )
        self.was_pretrained = False
        #: the EnsembleSCVI this model started from (:meth:`from_ensemble_scvi`), whose
        #: novelty rule decides ``unknown`` (see :func:`ensemblevi.tl.label_uncertainty`)
        self.source_scvi: EnsembleSCVI | None = None
        super().__init__(adata, n_members=n_members, ensemble=ensemble, **kwargs)
        if self.ensemble == "hyperbatch":
            self._training_plan_cls = HyperSemiSupervisedTrainingPlan
        self._model_summary_string = (
            self._model_summary_string.replace("EnsembleSCVI (", "EnsembleSCANVI (", 1)
            + f", unlabeled_category: {self.unlabeled_category_}"
        )

    def _build_module(self, **data_sizes: Any) -> None:
        SemisupervisedTrainingMixin._set_indices_and_labels(self)
        mapping = list(self._label_mapping)
        self.n_labels = len(mapping) - (self.unlabeled_category_ in mapping)
        super()._build_module(**{**data_sizes, "n_labels": self.n_labels})

    @property
    def cell_types(self) -> list[str]:
        """The cell types the classifier predicts, in the order of its outputs."""
        return [str(c) for c in self._label_mapping[: self.n_labels]]

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str | None = None,
        unlabeled_category: str | None = None,
        layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        sample_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Register ``adata`` as ``scvi.model.SCANVI.setup_anndata`` does, after checking it.

        Checked here, before any training: the data and ``obs`` columns (as
        :meth:`EnsembleSCVI.setup_anndata`), that the labels have no missing values and, for
        a reference, at least two cell types besides ``unlabeled_category``.

        Parameters
        ----------
        adata
            AnnData with raw counts.
        labels_key
            ``obs`` column of the cell types; cells of unknown type hold
            ``unlabeled_category``.
        unlabeled_category
            The value of ``labels_key`` that marks a cell as unlabelled.
        layer
            Layer holding the counts (``None``: ``adata.X``).
        batch_key
            ``obs`` column of the batch.
        size_factor_key
            ``obs`` column of size factors, as in :meth:`EnsembleSCVI.setup_anndata`.
        categorical_covariate_keys, continuous_covariate_keys
            ``obs`` columns of further covariates.
        sample_key
            ``obs`` column of the biological samples, as in
            :meth:`EnsembleSCVI.setup_anndata` (registered, not a covariate).
        **kwargs
            scvi-tools' registration arguments (``source_registry``, ... for query mapping;
            ``use_minified`` is accepted and ignored).
        """
        kwargs.pop("use_minified", None)
        setup_method_args = cls._get_setup_method_args(**locals())
        if labels_key is None or unlabeled_category is None:
            raise ValueError(
                "EnsembleSCANVI.setup_anndata needs labels_key (the obs column of cell types) "
                "and unlabeled_category (its value for cells of unknown type), e.g. "
                "labels_key='cell_type', unlabeled_category='Unknown'."
            )
        labels = adata.obs[labels_key] if labels_key in adata.obs else pd.Series([])
        if labels.isna().any():
            raise ValueError(
                f"obs[{labels_key!r}] has {int(labels.isna().sum())} missing values: set them "
                f"to the unlabeled category {unlabeled_category!r}."
            )
        check_setup_data(
            adata,
            layer=layer,
            obs_keys=[batch_key, labels_key, sample_key, *(categorical_covariate_keys or [])],
            continuous_keys=continuous_covariate_keys or [],
            size_factor_key=size_factor_key,
        )
        known = set(adata.obs[labels_key].astype(str)) - {str(unlabeled_category)}
        if "source_registry" not in kwargs and len(known) < 2:
            raise ValueError(
                f"obs[{labels_key!r}] has {len(known)} cell type(s) besides "
                f"{unlabeled_category!r}; label transfer needs at least 2."
            )
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        if sample_key is not None:  # bookkeeping for DE only, as in EnsembleSCVI
            anndata_fields.append(CategoricalObsField(SAMPLE_REGISTRY_KEY, sample_key))
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def from_ensemble_scvi(
        cls,
        model: EnsembleSCVI,
        unlabeled_category: str,
        labels_key: str | None = None,
        adata: AnnData | None = None,
        **scanvi_kwargs: Any,
    ) -> Self:
        """An EnsembleSCANVI that starts from a trained EnsembleSCVI's weights, every member's.

        As ``scvi.model.SCANVI.from_scvi_model``: the data are set up with the scVI
        ensemble's arguments plus the labels; the generative model and encoder take its
        weights, the classifier and the ``z2`` layers start fresh; the default number of
        epochs of :meth:`train` becomes scvi-tools' fine-tuning one.

        On ``model``'s own AnnData (``adata`` ``None`` or ``model.adata``) the new model keeps
        ``model`` as ``source_scvi`` (and :meth:`save` saves it beside it): its novelty
        rule, not scANVI's latent space, then decides which cells
        :func:`ensemblevi.tl.label_uncertainty` calls unknown. scANVI's latent space is
        trained to separate the labelled types and folds an unseen type onto them
        (``docs/new_samples.md``).

        Parameters
        ----------
        model
            A trained :class:`EnsembleSCVI` (any kind).
        unlabeled_category
            The value of ``labels_key`` marking unlabelled cells.
        labels_key
            ``obs`` column of the cell types (``None``: the one ``model`` was set up with).
        adata
            The AnnData (``None``: ``model``'s), with ``model``'s genes.
        **scanvi_kwargs
            Further arguments of the scANVI module (``linear_classifier``, ...); the scVI
            ensemble's own arguments are kept, as in scvi-tools.
        """
        if isinstance(model, EnsembleSCANVI) or not isinstance(model, EnsembleSCVI):
            raise TypeError(
                f"from_ensemble_scvi needs a trained EnsembleSCVI, got {type(model).__name__}; "
                "for a scvi.model.SCVI use EnsembleSCANVI.from_scvi_model."
            )
        if not model.is_trained:
            raise ValueError("The EnsembleSCVI is not trained; train it first.")
        setup = copy.deepcopy(dict(model.adata_manager.registry["setup_args"]))
        given = setup.get("labels_key")
        if labels_key is None and given is None:
            raise ValueError("labels_key is needed: the EnsembleSCVI was set up without one.")
        if labels_key is not None and given is not None and labels_key != given:
            raise ValueError(
                f"The EnsembleSCVI was set up with labels_key={given!r}, not {labels_key!r}; "
                "pass that one (or None)."
            )
        setup["labels_key"] = labels_key or given
        if adata is None:
            adata = model.adata
        else:
            model._validate_anndata(adata)
        cls.setup_anndata(adata, unlabeled_category=unlabeled_category, **setup)
        params = dict(model.init_params_["non_kwargs"])
        extra = {k: v for group in model.init_params_["kwargs"].values() for k, v in group.items()}
        for name in set(scanvi_kwargs) & (set(params) | set(extra)):
            warnings.warn(
                f"Ignoring {name}={scanvi_kwargs[name]!r}: the EnsembleSCVI was built with "
                f"{name}={params.get(name, extra.get(name))!r} (as scvi-tools does).",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            del scanvi_kwargs[name]
        new = cls(adata, **params, **extra, **scanvi_kwargs)
        result = new.module.load_state_dict(model.module.state_dict(), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"Weights not in the scANVI network: {result.unexpected_keys[:5]}.")
        new.was_pretrained = True
        # kept only on the AnnData it trained on: its rule reads its training cells there
        new.source_scvi = model if adata is model.adata else None
        return new

    @classmethod
    def from_scvi_model(
        cls,
        scvi_model: Any,
        unlabeled_category: str,
        labels_key: str | None = None,
        adata: AnnData | None = None,
        **scanvi_kwargs: Any,
    ) -> Self:
        """scvi-tools' name: from a trained :class:`EnsembleSCVI` or ``scvi.model.SCVI``.

        A ``scvi.model.SCVI`` becomes a one-member deep ensemble first
        (:meth:`EnsembleSCVI.from_scvi`).

        Parameters
        ----------
        scvi_model
            A trained :class:`EnsembleSCVI` or ``scvi.model.SCVI``.
        unlabeled_category, labels_key, adata, **scanvi_kwargs
            As in :meth:`from_ensemble_scvi`.
        """
        if not isinstance(scvi_model, EnsembleSCVI):
            scvi_model = EnsembleSCVI.from_scvi([scvi_model])
        return cls.from_ensemble_scvi(
            scvi_model, unlabeled_category, labels_key=labels_key, adata=adata, **scanvi_kwargs
        )

    @classmethod
    def from_scvi(cls, models: Any, adata: AnnData | None = None) -> Self:
        """Not available: assemble scVI models with :meth:`EnsembleSCVI.from_scvi`, then
        :meth:`from_ensemble_scvi`.

        Parameters
        ----------
        models, adata
            :meth:`EnsembleSCVI.from_scvi`'s arguments; any call raises.
        """
        raise NotImplementedError(
            "EnsembleSCANVI.from_scvi: build the scVI ensemble with EnsembleSCVI.from_scvi("
            "models), then EnsembleSCANVI.from_ensemble_scvi(ensemble, unlabeled_category)."
        )

    # ---------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int | None = None,
        n_samples_per_label: float | None = None,
        batch_size: int = 128,
        train_size: float = 0.9,
        fast_lr_multiplier: float = 0.5,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        seed: int | None = None,
        plan_kwargs: dict | None = None,
        compile_likelihood: bool | None = None,
        **kwargs: Any,
    ):
        """Semi-supervised training of all members at once, as ``scvi.model.SCANVI.train``.

        Each step takes a minibatch of all cells and one of labelled training cells (scvi-
        tools' ``SemiSupervisedDataSplitter``); the labelled cells of the validation split
        never enter the classification loss, so they are held out:
        :func:`ensemblevi.tl.label_uncertainty` calibrates its unknown rule on them.

        Parameters
        ----------
        max_epochs
            Epochs (``None``: scvi-tools' heuristic, and its fine-tuning one, at most 10, after
            :meth:`from_ensemble_scvi`).
        n_samples_per_label
            Labelled cells sampled per cell type and epoch (``None``: all).
        batch_size
            Cells per minibatch, seen by every member.
        train_size
            Share of the cells in the training split.
        fast_lr_multiplier, checkpoint_path, checkpoint_every, seed, compile_likelihood
            As in :meth:`EnsembleSCVI.train`.
        plan_kwargs
            Passed to :class:`~ensemblevi.train.EnsembleSemiSupervisedTrainingPlan`
            (``classification_ratio``, default 50, ``lr``, ...).
        **kwargs
            Passed to ``scvi.model.base.SemisupervisedTrainingMixin.train``.
        """
        if not len(self._labeled_indices) and not getattr(self, "is_query_model_", False):
            raise ValueError(
                f"No cell of obs[{self.original_label_key!r}] is labelled (all are "
                f"{self.unlabeled_category_!r}): the classifier has nothing to learn from."
            )
        return self._fit_guarded(
            self._semisupervised_fit,
            max_epochs=max_epochs,
            batch_size=batch_size,
            fast_lr_multiplier=fast_lr_multiplier,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            seed=seed,
            plan_kwargs=plan_kwargs,
            compile_likelihood=compile_likelihood,
            train_size=train_size,
            n_samples_per_label=n_samples_per_label,
            **kwargs,
        )

    def _semisupervised_fit(self, callbacks=None, n_samples_per_label=None, **kwargs: Any):
        callbacks = self._query_callbacks(callbacks)
        if n_samples_per_label is not None and len(self._labeled_indices):
            # scvi-tools builds this callback but drops it when other callbacks are given
            callbacks.append(SubSampleLabels())
        return SemisupervisedTrainingMixin.train(
            self, callbacks=callbacks, n_samples_per_label=n_samples_per_label, **kwargs
        )

    # -------------------------------------------------------------- prediction
    @torch.inference_mode()
    def predict_members(
        self,
        adata: AnnData | None = None,
        indices: np.ndarray | None = None,
        batch_size: int | None = None,
        use_posterior_mean: bool = True,
    ) -> np.ndarray:
        """Each member's label probabilities, ``(K, n_cells, n_types)``.

        Parameters
        ----------
        adata
            AnnData registered with :meth:`setup_anndata` (``None``: the model's).
        indices
            Cells to predict (``None``: all).
        batch_size
            Minibatch size (``None``: ``scvi.settings.batch_size``).
        use_posterior_mean
            Classify each member's posterior mean of ``z`` (else one draw).
        """
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        self.module.eval()
        parts = [
            self.module.member_label_probabilities(t, use_posterior_mean).cpu() for t in loader
        ]
        if not parts:
            return np.zeros((self.n_members, 0, self.n_labels), dtype=np.float32)
        return torch.cat(parts, dim=1).numpy()

    def predict(
        self,
        adata: AnnData | None = None,
        indices: np.ndarray | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        use_posterior_mean: bool = True,
    ) -> np.ndarray | pd.DataFrame:
        """The ensemble's cell types, or with ``soft`` its label probabilities.

        The probabilities are the mixture ``(1/K) sum_k p_k(y | x)`` of the members', the
        ensemble's predictive distribution; the label is its most probable type.

        Parameters
        ----------
        adata
            AnnData registered with :meth:`setup_anndata` (``None``: the model's).
        indices
            Cells to predict (``None``: all).
        soft
            Return a cells x types ``DataFrame`` of probabilities instead of labels.
        batch_size
            Minibatch size.
        use_posterior_mean
            As in :meth:`predict_members`.
        """
        adata = self._validate_anndata(adata)
        probs = self.predict_members(adata, indices, batch_size, use_posterior_mean).mean(0)
        if soft:
            index = adata.obs_names if indices is None else adata.obs_names[indices]
            return pd.DataFrame(probs, index=index, columns=self.cell_types)
        return np.asarray(self.cell_types, dtype=object)[probs.argmax(1)]

    # ------------------------------------------------------- reference mapping
    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model: str | os.PathLike | BaseModelClass,
        *args: Any,
        freeze_classifier: bool = True,
        unfrozen: bool = False,
        **kwargs: Any,
    ) -> Self:
        """scArches mapping of a query onto a trained EnsembleSCANVI (see ``ArchesMixin``).

        The query's labels must be the reference's cell types or its unlabelled category
        (usually all unlabelled); the classifier keeps the reference's weights unless
        ``freeze_classifier=False``.

        A reference model (not a folder) made with :meth:`from_ensemble_scvi` passes its
        ``source_scvi`` on, where the data have no batch or other covariates: that scVI
        ensemble's novelty rule then decides ``unknown`` for the query's cells, as for any
        new cells. With covariates the query model has none (the scVI ensemble would need
        mapping too: map it with ``EnsembleSCVI.load_query_data`` and pass it to
        :func:`ensemblevi.tl.label_uncertainty` as ``novelty_model``); from a folder, load
        the reference first (``EnsembleSCANVI.load(folder, adata=reference_cells)``).

        Parameters
        ----------
        adata
            The query (the reference's genes, its ``obs`` columns).
        reference_model
            A trained EnsembleSCANVI or the folder it was saved to.
        *args
            ``ArchesMixin.load_query_data``'s further arguments.
        freeze_classifier
            Keep the classifier as the reference's (scvi-tools' default).
        unfrozen
            Train every weight.
        **kwargs
            ``ArchesMixin.load_query_data``'s further arguments.
        """
        ref = Reference.read(reference_model)
        setup = ref.registry["setup_args"]
        key, unlabeled = setup.get("labels_key"), setup.get("unlabeled_category")
        if key is not None and key not in adata.obs:
            raise KeyError(
                f"The query has no obs[{key!r}]: add it, holding {unlabeled!r} for cells of "
                "unknown type (usually all of them)."
            )
        state = ref.registry["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]
        known = {str(c) for c in state["categorical_mapping"]}
        new = sorted(set(adata.obs[key].astype(str)) - known) if key is not None else []
        if new:
            raise ValueError(
                f"The query's obs[{key!r}] has cell types the reference does not know "
                f"({new[:5]}); set them to {unlabeled!r}: the classifier predicts only the "
                "reference's types."
            )
        model = super().load_query_data(adata, reference_model, *args, unfrozen=unfrozen, **kwargs)
        source = getattr(reference_model, "source_scvi", None)
        covariates = {k: v for k, v in setup.items() if k in COVARIATE_KEYS and v}
        # without covariates the reference's scVI ensemble reads the query's cells as they
        # are (what docs/new_samples.md measures); with them it would need mapping too
        model.source_scvi = None if covariates else source
        if not unfrozen and not freeze_classifier:
            for part in (model.module.classifier_head, model.module.classifier_layers):
                for p in part.parameters() if part is not None else ():
                    p.requires_grad_(True)
        return model
