"""EnsembleSCVI: an ensemble of scVI models as one scvi-tools model, trained in one pass.

The class holds what is specific to the ensemble model (construction, ``setup_anndata``,
training, ``save``/``load`` and its properties); its outputs come from the mixins of
:mod:`ensemblevi.model.base`, as scvi-tools composes ``scvi.model.SCVI``:
:class:`~ensemblevi.model.base.EnsembleRNASeqMixin` (normalised expression, DE),
:class:`~ensemblevi.model.base.EnsembleVAEMixin` (latents, likelihoods),
:class:`~ensemblevi.model.base.UncertaintyMixin` and
:class:`~ensemblevi.model.base.AssemblyMixin` (``from_scvi``, ``merge``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any, Literal

import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from ensemblevi._compat import (
    _init_library_size,
    base_accepts_no_data,
)
from ensemblevi._constants import EnsembleKind, check_kind
from ensemblevi._seeding import seeded_globally as _seeded_globally
from ensemblevi.data import validate_counts
from ensemblevi.data._validate import check_setup_data
from ensemblevi.module import EnsembleVAE
from ensemblevi.module._hyperparameters import hyperparameter_table, trajectory_frame
from ensemblevi.module._likelihood import compiled_likelihood, should_compile
from ensemblevi.nn._norm_dropout import EnsembleBatchNorm
from ensemblevi.train import EnsembleTrainingPlan, HyperTrainingPlan
from ensemblevi.train._callbacks import EpochCheckpoint, HyperparameterTrajectory, NaNGuard

from ._building import ModuleBuilderMixin
from ._persistence import SafePersistenceMixin
from ._shards import check_shard
from .base import (
    ArchesMixin,
    AssemblyMixin,
    EnsembleEmbeddingMixin,
    EnsembleRNASeqMixin,
    EnsembleVAEMixin,
    MinificationMixin,
    UncertaintyMixin,
)
from .base._de_settings import SAMPLE_REGISTRY_KEY
from .base._members import Members
from .base._refused import REFUSED

logger = logging.getLogger(__name__)


class EnsembleSCVI(
    EnsembleRNASeqMixin,
    EnsembleVAEMixin,
    EnsembleEmbeddingMixin,
    UncertaintyMixin,
    AssemblyMixin,
    ModuleBuilderMixin,
    ArchesMixin,
    MinificationMixin,
    SafePersistenceMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """An ensemble of K scVI models trained together in one vectorised pass.

    The scvi-tools model API (``setup_anndata``, ``train``, ``save``/``load``, ``get_*``)
    over an :class:`~ensemblevi.module.EnsembleVAE`. Outputs that mean something per
    member (latent spaces, which are not aligned between members) are returned per member;
    outputs in data space (normalised expression, likelihoods) are also averaged over
    members, which is how an ensemble predicts.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`; ``None``: the module is built at the
        first :meth:`train` from its ``datamodule`` (scvi-tools' experimental path; the
        outputs then need an AnnData passed to them, as in scvi-tools).
    n_members
        Number of members K (ignored, i.e. 1, for ``ensemble="single"``).
    ensemble
        How the members differ, one of:

        * ``"single"``: one scVI network (K = 1), the baseline to compare with;
        * ``"deep"``: K independent scVI networks with their own initialisations, trained
          in one vectorised pass (a deep ensemble: the reference, K times the weights);
        * ``"batch"``: BatchEnsemble, one shared network whose layers each member rescales
          with its own rank-1 fast weights (about one network's weights);
        * ``"hyperbatch"``: Hyper-BatchEnsemble, BatchEnsemble whose members also tune
          their own hyperparameters (dropout, KL weight, L2 per block) during training
          (:meth:`get_hyperparameters`, :class:`~ensemblevi.train.HyperTrainingPlan`);
        * ``"mcdropout"``: one network with K dropout masks kept on at prediction; its
          members are mask draws, new at every call, not fixed functions.
    n_hidden, n_latent, n_layers, dropout_rate
        As in ``scvi.model.SCVI``.
    dispersion
        ``gene``, ``gene-batch``, ``gene-label`` or ``gene-cell`` (decoded per cell, each
        member its own), as in ``scvi.model.SCVI``.
    gene_likelihood
        ``zinb``, ``nb``, ``poisson`` (these need raw integer counts: anything else is
        refused here, naming the problem and the fix) or ``normal`` (continuous data, e.g.
        log-normalised).
    use_observed_lib_size
        Observed library size (default) or a latent one, as in ``scvi.model.SCVI``. Data set
        up with ``size_factor_key`` use the size factors as the library.
    latent_distribution
        ``normal`` or ``ln`` (logistic normal), as in ``scvi.model.SCVI``.
    var_activation
        Callable making the encoders' variances positive (``None``: ``torch.exp``), as
        ``scvi.module.VAE``'s.
    seed
        Seed of the weight initialisation; ``None`` uses the global torch generator
        (``scvi.settings.seed``).
    member_offset, n_members_total
        Member sharding (``deep`` only): this model holds members ``member_offset`` to
        ``member_offset + n_members - 1`` of an ``n_members_total``-member ensemble. With
        the same ``seed`` here and in :meth:`train`, every shard initialises and trains its
        members exactly as the ensemble trained in one piece would (its random draws are
        slices of the whole ensemble's), so :meth:`merge` of the shards gives that
        ensemble. Each shard builds the whole ensemble once at initialisation, to slice
        its members' initial weights from it.
    **module_kwargs
        Passed to :class:`~ensemblevi.module.EnsembleVAE` (scvi-tools' ``registry=``, a
        model from a registry alone, is refused; ``random_sign_init``,
        ``encode_covariates``, ``use_batch_norm``, ``hyperparameters``,
        ``batch_representation``, ``batch_embedding_kwargs``, ...). With
        ``batch_representation="embedding"``, ``deep`` members each learn their own batch
        embedding (they are independent models); ``batch``, ``hyperbatch`` and
        ``mcdropout`` members share one, which their per-member fast weights (or dropout
        masks) read differently; :meth:`get_batch_representation` returns them.

    Notes
    -----
    Three names about Hyper-BatchEnsemble's hyperparameters, each meaning one thing:

    * ``hyperparameters=`` (an :class:`~ensemblevi.module.EnsembleVAE` argument, passed
      through ``**module_kwargs``): the *specification*, which hyperparameters the members
      tune and their initial ranges (names, or ``{name: (low, high, init)}``).
    * :meth:`get_hyperparameters` (this model): the *tuned values*, a table of each
      member's log-uniform interval and mean.
    * ``module.hyper_parameters()`` (the module): the *trainable torch parameters* of
      those intervals (their log bounds), which only the tune step's optimiser updates.

    None of them is scvi-tools' ``init_params_`` (the constructor arguments saved with the
    model, which hold ``hyperparameters=`` among the module arguments).

    Examples
    --------
    >>> ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    >>> model = ev.model.EnsembleSCVI(adata, n_members=4, ensemble="deep")
    >>> model.train(max_epochs=100)
    >>> parts = model.get_uncertainty(n_samples=25, key_added="ensemblevi")
    >>> z0 = model.members[0].get_latent_representation()  # scvi.model.SCVI API, member 0
    """

    _module_cls = EnsembleVAE
    _training_plan_cls = EnsembleTrainingPlan

    def __init__(
        self,
        adata: AnnData | None = None,
        n_members: int = 4,
        ensemble: EnsembleKind = "deep",
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: Literal["zinb", "nb", "poisson", "normal"] = "zinb",
        use_observed_lib_size: bool = True,
        latent_distribution: Literal["normal", "ln"] = "normal",
        var_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int | None = None,
        member_offset: int = 0,
        n_members_total: int | None = None,
        **module_kwargs: Any,
    ):
        if "registry" in module_kwargs:  # not named: scvi's load would pass it if it were
            raise ValueError(f"EnsembleSCVI(registry=...): {REFUSED[('__init__', 'registry')]}.")
        check_kind(ensemble)
        if int(n_members) != n_members or n_members < 1:
            raise ValueError(f"n_members must be a positive integer, got {n_members!r}.")
        with base_accepts_no_data(self) if adata is None else contextlib.nullcontext():
            super().__init__(adata)
        use_size_factor_key = False
        if adata is not None:
            setup_args = self.registry_["setup_args"]
            if gene_likelihood in ("zinb", "nb", "poisson"):
                # checked here, where the likelihood is known: "normal" takes continuous data
                validate_counts(self.adata, layer=setup_args.get("layer"))
            use_size_factor_key = setup_args.get("size_factor_key") is not None
        shard = check_shard(ensemble, int(n_members), member_offset, n_members_total, seed)
        # fixed for the model's life (scvi-tools' train() reads it)
        if ensemble == "hyperbatch":
            self._training_plan_cls = HyperTrainingPlan
        n_built = 1 if ensemble == "single" else int(n_members)
        self._build_plan = (n_built, seed, shard)
        # what the module gets besides the data's sizes (scvi-tools' name for it)
        self._module_kwargs = {
            "ensemble": ensemble,
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "dispersion": dispersion,
            "gene_likelihood": gene_likelihood,
            "use_observed_lib_size": use_observed_lib_size,
            "latent_distribution": latent_distribution,
            "var_activation": var_activation,
            "use_size_factor_key": use_size_factor_key,
            **module_kwargs,
        }
        part = f", members {shard[0]}..{shard[0] + n_members - 1} of {shard[1]}" if shard else ""
        self._model_summary_string = (
            f"EnsembleSCVI ({ensemble}, {n_built} member(s){part}): n_hidden: "
            f"{n_hidden}, n_latent: {n_latent}, n_layers: {n_layers}, dropout_rate: "
            f"{dropout_rate}, dispersion: {dispersion}, gene_likelihood: {gene_likelihood}, "
            f"latent_distribution: {latent_distribution}"
        )
        if self._module_init_on_train:
            self.module = None
            warnings.warn(
                "EnsembleSCVI was built without an AnnData: its module is built when train() "
                "is called with datamodule=..., from the datamodule's n_vars, n_batch, ... "
                "(scvi-tools' experimental behaviour).",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        else:
            n_cats_per_cov = None
            if REGISTRY_KEYS.CAT_COVS_KEY in self.adata_manager.data_registry:
                n_cats_per_cov = self.adata_manager.get_state_registry(
                    REGISTRY_KEYS.CAT_COVS_KEY
                ).n_cats_per_key
            n_batch = self.summary_stats.n_batch
            library_log_means = library_log_vars = None
            if not use_observed_lib_size and not use_size_factor_key:
                library_log_means, library_log_vars = _init_library_size(
                    self.adata_manager, n_batch
                )
            self._build_module(
                n_input=self.summary_stats.n_vars,
                n_batch=n_batch,
                n_labels=self.summary_stats.n_labels,
                n_continuous_cov=self.summary_stats.get("n_extra_continuous_covs", 0),
                n_cats_per_cov=n_cats_per_cov,
                library_log_means=library_log_means,
                library_log_vars=library_log_vars,
            )
        self.init_params_ = self._get_init_params(locals())

    @property
    def n_members(self) -> int:
        """Number of members K."""
        return self.module.n_members if self.module is not None else self._build_plan[0]

    @property
    def n_members_total(self) -> int:
        """Members of the whole ensemble this model is a shard of (``n_members`` if whole)."""
        return self.init_params_["non_kwargs"].get("n_members_total") or self.n_members

    @property
    def member_range(self) -> tuple[int, int]:
        """``[start, stop)`` of this model's members within the whole ensemble."""
        start = int(self.init_params_["non_kwargs"].get("member_offset") or 0)
        return start, start + self.n_members

    @property
    def ensemble(self) -> str:
        """The ensemble kind (``single``, ``deep``, ``batch``, ``hyperbatch``, ``mcdropout``)."""
        return self.module.ensemble if self.module is not None else self._module_kwargs["ensemble"]

    @property
    def members(self) -> Members:
        """The members as ``scvi.model.SCVI``-like views: ``model.members[k]``.

        Every scvi-tools ``RNASeqMixin``/``VAEMixin`` method of a view runs on member ``k``
        alone and returns what scvi-tools returns for one model.
        """
        return Members(self)

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        sample_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Register ``adata`` as ``scvi.model.SCVI.setup_anndata`` does, after checking it.

        Checked here: the data (``adata.X`` or ``layers[layer]``) exist and are finite, the
        ``obs`` columns exist, continuous covariates are finite and size factors positive
        and finite; each problem raises a ``ValueError`` naming it and the fix. Whether the
        data must be raw integer counts depends on the likelihood, so that is checked when
        the model is built (``gene_likelihood`` ``zinb``, ``nb``, ``poisson``; see
        :func:`ensemblevi.data.validate_counts`), still before any training.

        Parameters
        ----------
        adata
            AnnData with raw counts (or continuous data for ``gene_likelihood="normal"``).
        layer
            Layer holding the counts (``None``: ``adata.X``).
        batch_key, labels_key
            ``obs`` columns of the batch and the labels.
        size_factor_key
            ``obs`` column of size factors (positive), used as the library of the
            likelihood instead of the total counts, as in ``scvi.model.SCVI``.
        categorical_covariate_keys, continuous_covariate_keys
            ``obs`` columns of further covariates.
        sample_key
            ``obs`` column of the biological samples (donors, patients), registered as
            scvi-tools registers a categorical column but not given to the model (no
            covariate): ``differential_expression`` then compares samples, not cells,
            unless its own ``sample_key=`` names another column. Saved with the model.
        """
        check_setup_data(
            adata,
            layer=layer,
            obs_keys=[batch_key, labels_key, sample_key, *(categorical_covariate_keys or [])],
            continuous_keys=continuous_covariate_keys or [],
            size_factor_key=size_factor_key,
        )
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        if sample_key is not None:  # bookkeeping for DE only: no module reads this key
            anndata_fields.append(CategoricalObsField(SAMPLE_REGISTRY_KEY, sample_key))
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # ---------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        fast_lr_multiplier: float = 0.5,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        seed: int | None = None,
        plan_kwargs: dict | None = None,
        compile_likelihood: bool | None = None,
        **kwargs: Any,
    ):
        """Train all members at once with scvi-tools' trainer.

        Every member sees the same minibatch of ``batch_size`` cells (the BatchEnsemble
        layout), so ``batch_size`` is the batch size *per member*.

        Parameters
        ----------
        max_epochs
            Epochs (``None``: scvi-tools' heuristic, ``min(400, 400 * 20000 / n_cells)``).
        batch_size
            Cells per minibatch, seen by every member.
        fast_lr_multiplier
            Learning-rate multiplier of BatchEnsemble fast weights (no weight decay on them).
        checkpoint_path
            Directory to save the model to (atomically) every ``checkpoint_every`` epochs and
            at the end, so an interrupted run leaves a loadable model.
        checkpoint_every
            Epochs between checkpoints.
        seed
            Seeds the train/validation split, torch, numpy and Python (data order, dropout,
            sampling) for this training only: the global random state and
            ``scvi.settings.seed`` are as they were afterwards.
        plan_kwargs
            Passed to :class:`~ensemblevi.train.EnsembleTrainingPlan` (``lr``, ...), for
            ``hyperbatch`` to :class:`~ensemblevi.train.HyperTrainingPlan` (also
            ``tune_every``, ``tau``, ``tune_lr``). ``hyperbatch`` tunes on the validation
            split, so it needs ``train_size < 1``.
        compile_likelihood
            Compile the element-wise part of the fused ZINB/NB likelihood with
            ``torch.compile`` (one kernel per minibatch shape; see ``docs/benchmarks.md``
            for the measured gain). ``None`` (default): compile when the training has at
            least ``ensemblevi.module._likelihood.COMPILE_MIN_STEPS`` steps (3,000), where
            the one-off compile time is repaid; with a ``datamodule`` (whose steps are not
            known beforehand) only ``True`` compiles. Where ``torch.compile`` does not work (no
            C++ compiler on CPU, no Triton on CUDA, an unsupported platform) training runs
            the eager kernel, with one logged warning.
        **kwargs
            Passed to ``scvi.model.base.UnsupervisedTrainingMixin.train``
            (``train_size``, ``early_stopping``, ``accelerator``, ``devices``,
            ``callbacks``, ...). Data-parallel training is scvi-tools' Lightning DDP
            (``devices=N, strategy="ddp"``, ``num_nodes``): batch norms synchronise their
            statistics across processes and rank 0 alone writes checkpoints.
            ``datamodule=`` (a ``LightningDataModule`` with ``n_vars``, ``n_batch``, ...)
            trains on it instead of the AnnData; a model built with ``adata=None`` builds
            its module from those sizes at its first training, as scvi-tools does.

        Raises
        ------
        FloatingPointError
            On a NaN or infinite loss; the model then holds the last good epoch's weights.
        """
        datamodule = kwargs.get("datamodule")
        if datamodule is None and getattr(self, "_adata", None) is None:
            raise AttributeError(
                "This EnsembleSCVI was built without an AnnData (adata=None): pass the data "
                "as train(datamodule=...), or build the model with an AnnData."
            )
        if datamodule is not None and self.module is None:
            if max_epochs is None and not hasattr(datamodule, "n_obs"):
                raise ValueError(
                    "max_epochs=None takes scvi-tools' heuristic from the number of cells, "
                    "which this datamodule does not give: pass max_epochs or set "
                    "datamodule.n_obs."
                )
            self._build_module_from_datamodule(datamodule)
        return self._fit_guarded(
            super().train,
            max_epochs=max_epochs,
            batch_size=batch_size,
            fast_lr_multiplier=fast_lr_multiplier,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            seed=seed,
            plan_kwargs=plan_kwargs,
            compile_likelihood=compile_likelihood,
            **kwargs,
        )

    def _check_last_minibatch(self, splitter_kwargs: dict | None, batch_size: int) -> None:
        """Refuse, before training, training cells given by index that leave a last
        minibatch of one cell: batch normalisation cannot train on it (PyTorch raises
        mid-epoch), and scvi-tools only warns for a split given by index (its own random
        split moves such cells to validation)."""
        split = (splitter_kwargs or {}).get("external_indexing")
        if split is None or self.module is None or len(split[0]) % batch_size != 1:
            return
        norms = (torch.nn.modules.batchnorm._BatchNorm, EnsembleBatchNorm)
        if any(isinstance(m, norms) for m in self.module.modules()):
            raise ValueError(
                f"The {len(split[0]):,} training cells of external_indexing leave a last "
                f"minibatch of 1 cell at batch_size={batch_size}, and batch normalisation "
                "cannot train on one cell: move a training cell to the validation cells, "
                f"pass another batch_size (e.g. {batch_size - 1}), or build the split with "
                f"ev.tl.sample_split(..., batch_size={batch_size}), which does this."
            )

    def _fit_guarded(
        self,
        fit: Callable[..., Any],
        *,
        max_epochs: int | None,
        batch_size: int,
        fast_lr_multiplier: float,
        checkpoint_path: str | os.PathLike | None,
        checkpoint_every: int,
        seed: int | None,
        plan_kwargs: dict | None,
        compile_likelihood: bool | None,
        **kwargs: Any,
    ):
        """Run scvi-tools' ``fit`` (a ``train`` method) with the NaN guard, checkpoints,
        seeding and the compiled likelihood that every ensemble training gets."""
        datamodule = kwargs.get("datamodule")
        plan_kwargs = {"fast_lr_multiplier": fast_lr_multiplier, **(plan_kwargs or {})}
        hyper = self.ensemble == "hyperbatch"
        if hyper and datamodule is None and (kwargs.get("train_size") or 0.9) >= 1:
            raise ValueError(
                "ensemble='hyperbatch' tunes its hyperparameters on validation cells: use "
                "train_size < 1 (default 0.9)."
            )
        self._check_last_minibatch(kwargs.get("datasplitter_kwargs"), batch_size)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        guard = NaNGuard()
        callbacks.append(guard)
        if checkpoint_path is not None:
            callbacks.append(EpochCheckpoint(self, checkpoint_path, every=checkpoint_every))
        trajectory = HyperparameterTrajectory() if hyper else None
        if trajectory is not None:
            callbacks.append(trajectory)
        if compile_likelihood is None:
            # a datamodule's steps per epoch are unknown until the trainer sets it up
            compile_likelihood = datamodule is None and should_compile(
                self.adata.n_obs, batch_size, max_epochs, kwargs.get("train_size")
            )
        try:
            with _seeded_globally(seed), compiled_likelihood(compile_likelihood):
                out = fit(
                    max_epochs=max_epochs,
                    batch_size=batch_size,
                    plan_kwargs=plan_kwargs,
                    callbacks=callbacks,
                    **kwargs,
                )
        except FloatingPointError:
            if guard.restored and guard.good_epoch > 0:
                self.is_trained_ = True
            self.module.eval()
            raise
        finally:
            if trajectory is not None and trajectory.records:
                self._store_trajectory(trajectory.records)
        return out

    # ------------------------------------------------------ hyperparameters
    def _store_trajectory(self, records: list[dict]) -> None:
        new = trajectory_frame(self.module.hyper, records)
        old = getattr(self, "hyper_trajectory_", None)
        if old is not None and len(old):  # a further train() call continues the record
            new = new.assign(step=new["step"] + old["step"].max() + 1)
            new = pd.concat([old, new], ignore_index=True)
        self.hyper_trajectory_ = new

    def get_hyperparameters(self) -> pd.DataFrame:
        """The tuned hyperparameters of a ``hyperbatch`` model, one row per member and name.

        Columns ``member``, ``hyperparameter``, ``low``, ``high`` (the member's log-uniform
        interval) and ``mean`` (what the member uses at prediction). Their trajectory during
        training is ``model.hyper_trajectory_`` (one row per tune step, member and name).
        """
        if self.module.hyper is None:
            raise ValueError(
                f"get_hyperparameters needs ensemble='hyperbatch'; this model is {self.ensemble!r}."
            )
        return hyperparameter_table(self.module.hyper)
