"""EnsembleSCVI: an ensemble of scVI models as one scvi-tools model, trained in one pass."""

from __future__ import annotations

import logging
import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
)
from scvi.model.base import BaseModelClass, RNASeqMixin, UnsupervisedTrainingMixin, VAEMixin
from scvi.utils import track

from ensemblevi._compat import (
    _init_library_size,
    batch_codes,
    data_split_seed,
    saved_model_file,
    saved_var_names,
)
from ensemblevi._constants import VARIANCE_PARTS, EnsembleKind, check_kind, logmeanexp
from ensemblevi.data import is_collection, require_obs_columns, validate_counts
from ensemblevi.module import EnsembleVAE, Predictive, load_scvi_member
from ensemblevi.module._hyperparameters import hyperparameter_table, trajectory_frame
from ensemblevi.module._likelihood import compiled_likelihood
from ensemblevi.nn import set_member_stream
from ensemblevi.train import EnsembleTrainingPlan, EpochCheckpoint, HyperTrainingPlan, NaNGuard

from ._members import MEMBER_ONLY, Members, member_only
from ._memory import check_weights_memory
from ._shards import check_shard, member_slice, merge_models
from ._uncertainty import UncertaintySummary, decompose_variance

logger = logging.getLogger(__name__)


@contextmanager
def _seeded_globally(seed: int | None) -> Iterator[None]:
    """Seed torch, numpy, Python and the data split for a block; restore them all afterwards."""
    if seed is None:
        yield
        return
    # numpy's legacy global generator is the one third-party code draws from
    states = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)
    try:
        with data_split_seed(seed):
            yield
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])  # noqa: NPY002
        random.setstate(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class EnsembleSCVI(RNASeqMixin, VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """An ensemble of K scVI models trained together in one vectorised pass.

    The scvi-tools model API (``setup_anndata``, ``train``, ``save``/``load``, ``get_*``)
    over an :class:`~ensemblevi.module.EnsembleVAE`. Outputs that mean something per
    member (latent spaces, which are not aligned between members) are returned per member;
    outputs in data space (normalised expression, likelihoods) are also averaged over
    members, which is how an ensemble predicts.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_members
        Number of members K (ignored, i.e. 1, for ``ensemble="single"``).
    ensemble
        ``"deep"`` (K independent scVI networks, vectorised), ``"batch"`` (BatchEnsemble),
        ``"mcdropout"`` (one network, K dropout masks kept on at prediction: its members are
        mask draws, new at every call, not fixed functions) or ``"single"`` (one scVI
        network, for comparisons).
    n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood
        As in ``scvi.model.SCVI``.
    use_observed_lib_size
        Observed library size (default) or a latent one, as in ``scvi.model.SCVI``.
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
        Passed to :class:`~ensemblevi.module.EnsembleVAE` (``random_sign_init``,
        ``encode_covariates``, ``use_batch_norm``, ...).

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
        dispersion: Literal["gene", "gene-batch", "gene-label"] = "gene",
        gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
        use_observed_lib_size: bool = True,
        seed: int | None = None,
        member_offset: int = 0,
        n_members_total: int | None = None,
        **module_kwargs: Any,
    ):
        if adata is None:
            raise ValueError(
                "EnsembleSCVI needs an AnnData registered with EnsembleSCVI.setup_anndata(adata)."
            )
        check_kind(ensemble)
        if int(n_members) != n_members or n_members < 1:
            raise ValueError(f"n_members must be a positive integer, got {n_members!r}.")
        super().__init__(adata)
        n_cats_per_cov = None
        if REGISTRY_KEYS.CAT_COVS_KEY in self.adata_manager.data_registry:
            n_cats_per_cov = self.adata_manager.get_state_registry(
                REGISTRY_KEYS.CAT_COVS_KEY
            ).n_cats_per_key
        n_batch = self.summary_stats.n_batch
        library_log_means = library_log_vars = None
        if not use_observed_lib_size:
            library_log_means, library_log_vars = _init_library_size(self.adata_manager, n_batch)
        shard = check_shard(ensemble, int(n_members), member_offset, n_members_total, seed)
        module_args = {
            "n_input": self.summary_stats.n_vars,
            "ensemble": ensemble,
            "n_batch": n_batch,
            "n_labels": self.summary_stats.n_labels,
            "n_continuous_cov": self.summary_stats.get("n_extra_continuous_covs", 0),
            "n_cats_per_cov": n_cats_per_cov,
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "dispersion": dispersion,
            "gene_likelihood": gene_likelihood,
            "use_observed_lib_size": use_observed_lib_size,
            "library_log_means": library_log_means,
            "library_log_vars": library_log_vars,
            **module_kwargs,
        }
        # a raw allocation error (or the OOM killer) is all --members 100000 would give
        check_weights_memory(lambda n: self._module_cls(n_members=n, **module_args),
                             int(n_members) + (shard[1] if shard else 0))  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            full = self._module_cls(n_members=shard[1] if shard else int(n_members), **module_args)
        if shard is None:
            self.module = full
        else:
            with torch.random.fork_rng(devices=[]):
                self.module = self._module_cls(n_members=int(n_members), **module_args)
            self.module.load_state_dict(
                member_slice(full.state_dict(), self.module.state_dict(), shard[0])
            )
            set_member_stream(self.module, *shard)
            del full
        part = f", members {shard[0]}..{shard[0] + n_members - 1} of {shard[1]}" if shard else ""
        self._model_summary_string = (
            f"EnsembleSCVI ({ensemble}, {self.module.n_members} member(s){part}): n_hidden: "
            f"{n_hidden}, n_latent: {n_latent}, n_layers: {n_layers}, dropout_rate: "
            f"{dropout_rate}, dispersion: {dispersion}, gene_likelihood: {gene_likelihood}"
        )
        self.init_params_ = self._get_init_params(locals())

    @property
    def n_members(self) -> int:
        """Number of members K."""
        return self.module.n_members

    @property
    def n_members_total(self) -> int:
        """Members of the whole ensemble this model is a shard of (``n_members`` if whole)."""
        return self.init_params_["non_kwargs"].get("n_members_total") or self.n_members

    @property
    def member_range(self) -> tuple[int, int]:
        """``[start, stop)`` of this model's members within the whole ensemble."""
        start = int(self.init_params_["non_kwargs"].get("member_offset") or 0)
        return start, start + self.n_members

    @classmethod
    def merge(cls, shards: Sequence[EnsembleSCVI], adata: AnnData | None = None) -> EnsembleSCVI:
        """One model holding the members of trained shards (``member_offset=`` models).

        The shards must come from one ensemble specification (same architecture, ``seed``
        and ``n_members_total``), share genes and data registration, and hold contiguous
        members (in any order here). Shards trained with the same ``train(seed=...)`` on
        the same data merge into exactly the ensemble trained in one piece (tested).

        Parameters
        ----------
        shards
            Trained shards, e.g. ``[EnsembleSCVI.load(d, adata) for d in shard_dirs]``.
        adata
            AnnData for the merged model (default: the first shard's).
        """
        return merge_models(cls, shards, adata)

    @property
    def ensemble(self) -> str:
        """The ensemble kind (``single``, ``deep``, ``batch``, ``hyperbatch``, ``mcdropout``)."""
        return self.module.ensemble

    @property
    def members(self) -> Members:
        """The members as ``scvi.model.SCVI``-like views: ``model.members[k]``.

        Every scvi-tools ``RNASeqMixin``/``VAEMixin`` method of a view runs on member ``k``
        alone and returns what scvi-tools returns for one model.
        """
        return Members(self)

    @classmethod
    def from_scvi(cls, models: Sequence[Any], adata: AnnData | None = None) -> EnsembleSCVI:
        """A deep ensemble whose member ``k`` holds the weights of ``models[k]``.

        Puts separately trained ``scvi.model.SCVI`` models (e.g. one per seed, the original
        experiment) behind the ensemble API, so every ensemble output and analysis applies
        to them. The models must share genes, data registration and architecture.

        Parameters
        ----------
        models
            Trained ``scvi.model.SCVI`` models.
        adata
            AnnData registered with ``EnsembleSCVI.setup_anndata`` using the same arguments
            as the scVI models (default: the first model's AnnData, registered here).
        """
        if not models:
            raise ValueError("from_scvi needs at least one trained scvi.model.SCVI.")
        first = models[0]
        names = first.adata.var_names
        for i, m in enumerate(models):
            if not m.is_trained:
                raise ValueError(f"models[{i}] is not trained; train it first.")
            if not m.adata.var_names.equals(names):
                raise ValueError(f"models[{i}] was set up on other genes than models[0].")
        params = dict(first.init_params_["non_kwargs"])
        extra = dict(first.init_params_["kwargs"].get("kwargs", {}))
        if params.pop("latent_distribution", "normal") != "normal":
            raise ValueError("Only scVI models with latent_distribution='normal' can be loaded.")
        if adata is None:
            adata = first.adata
            setup = dict(first.adata_manager.registry["setup_args"])
            if setup.pop("size_factor_key", None) is not None:
                raise ValueError("scVI models set up with size_factor_key are not supported.")
            cls.setup_anndata(adata, **setup)
        ensemble = cls(adata, n_members=len(models), ensemble="deep", **params, **extra)
        for k, m in enumerate(models):
            load_scvi_member(ensemble.module, k, m.module.cpu())
        ensemble.module.eval()
        ensemble.is_trained_ = True
        return ensemble

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Register ``adata`` as ``scvi.model.SCVI.setup_anndata`` does, after checking it.

        The counts (``adata.X`` or ``layers[layer]``) must be raw counts: finite,
        non-negative integers; anything else raises a ``ValueError`` naming the problem and
        the fix (see :func:`ensemblevi.data.validate_counts`). Missing ``obs`` columns raise
        one too.

        Parameters
        ----------
        adata
            AnnData with raw counts.
        layer
            Layer holding the counts (``None``: ``adata.X``).
        batch_key, labels_key
            ``obs`` columns of the batch and the labels.
        categorical_covariate_keys, continuous_covariate_keys
            ``obs`` columns of further covariates.
        """
        validate_counts(adata, layer=layer)
        require_obs_columns(
            adata,
            [
                batch_key,
                labels_key,
                *(categorical_covariate_keys or []),
                *(continuous_covariate_keys or []),
            ],
        )
        for key in continuous_covariate_keys or []:
            values = np.asarray(adata.obs[key], dtype=float)
            if not np.isfinite(values).all():
                raise ValueError(
                    f"Continuous covariate obs[{key!r}] has {int((~np.isfinite(values)).sum())} "
                    "NaN or infinite values; fill or drop those cells first."
                )
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
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
        compile_likelihood: bool = False,
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
            for the measured gain). Needs a C++ compiler on CPU, Triton on CUDA.
        **kwargs
            Passed to ``scvi.model.base.UnsupervisedTrainingMixin.train``
            (``train_size``, ``early_stopping``, ``accelerator``, ``devices``,
            ``callbacks``, ...). Data-parallel training is scvi-tools' Lightning DDP
            (``devices=N, strategy="ddp"``, ``num_nodes``): batch norms synchronise their
            statistics across processes and rank 0 alone writes checkpoints.

        Raises
        ------
        FloatingPointError
            On a NaN or infinite loss; the model then holds the last good epoch's weights.
        """
        plan_kwargs = {"fast_lr_multiplier": fast_lr_multiplier, **(plan_kwargs or {})}
        hyper = self.ensemble == "hyperbatch"
        self._training_plan_cls = HyperTrainingPlan if hyper else EnsembleTrainingPlan
        if hyper and kwargs.get("train_size", 0.9) >= 1:
            raise ValueError(
                "ensemble='hyperbatch' tunes its hyperparameters on validation cells: use "
                "train_size < 1 (default 0.9)."
            )
        callbacks = list(kwargs.pop("callbacks", None) or [])
        guard = NaNGuard()
        callbacks.append(guard)
        if checkpoint_path is not None:
            callbacks.append(EpochCheckpoint(self, checkpoint_path, every=checkpoint_every))
        try:
            with _seeded_globally(seed), compiled_likelihood(compile_likelihood):
                out = super().train(
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
            if hyper and getattr(self.module, "hyper_trajectory", None):
                self._store_trajectory(self.module.hyper_trajectory)
                self.module.hyper_trajectory = []
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

    # ------------------------------------------------------------ helpers
    def _gene_mask(self, adata: AnnData, gene_list: Sequence[str] | None) -> np.ndarray:
        if gene_list is None:
            return np.ones(adata.n_vars, dtype=bool)
        gene_list = [gene_list] if isinstance(gene_list, str) else list(gene_list)
        missing = [g for g in gene_list if g not in adata.var_names]
        if missing:
            raise ValueError(
                f"{len(missing)} gene(s) of gene_list are not in adata.var_names, e.g. "
                f"{missing[:5]}. The model knows {adata.n_vars} genes; check the names "
                "(symbols vs Ensembl ids) and that the genes survived HVG selection."
            )
        return adata.var_names.isin(gene_list)

    def _check_member(self, member: int | None) -> int | None:
        if member is not None and not 0 <= member < self.n_members:
            raise IndexError(f"member {member} out of range: the ensemble has {self.n_members}.")
        return member

    @contextmanager
    def _only(self, member: int | None):
        """Compute only ``member`` inside the block (all members for ``None``)."""
        if member is None:
            yield
        else:
            with self.module.member(self._check_member(member)):
                yield

    def _seeded_batches(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        batch_size: int | None,
        seed: int | None,
        description: str | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Minibatches on the model's device, module in eval mode, under a private seeded RNG.

        The global RNG is left as it was, so outputs are reproducible for a ``seed`` without
        disturbing the caller's random state. ``description`` shows a progress bar.
        """
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        self.module.eval()
        device = self.device
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            for tensors in track(
                loader, description=description or "", disable=description is None, style="tqdm"
            ):
                yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in tensors.items()}

    @torch.inference_mode()
    def _stream(
        self,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        seed: int | None,
        member: int | None,
    ) -> torch.Tensor:
        """Concatenate ``fn(tensors)`` (``(M, B)``) over minibatches: ``(M, n_cells)``.

        With ``member`` only that member is computed (``M = 1``).
        """
        self._check_if_trained(warn=True)
        adata = self._validate_anndata(adata)
        with self._only(member):
            out = [
                fn(tensors).reshape(1 if member is not None else self.n_members, -1).cpu()
                for tensors in self._seeded_batches(adata, indices, batch_size, seed)
            ]
        return torch.cat(out, dim=1).double()

    def _cell_names(self, adata: AnnData | None, indices) -> pd.Index:
        adata = self._validate_anndata(adata)
        return adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]

    def _likelihood_output(
        self,
        values: torch.Tensor,
        adata: AnnData | None,
        indices,
        return_mean: bool,
        member: int | None,
        return_table: bool,
    ):
        """A float or per-cell array (scvi-tools' types), or the member/mixture table."""
        if member is not None:
            row = values[0].numpy()
            return float(row.mean()) if return_mean else row
        mixture = logmeanexp(values, dim=0).numpy()
        if not return_table:
            return float(mixture.mean()) if return_mean else mixture
        cols = [f"member_{k}" for k in range(self.n_members)]
        frame = pd.DataFrame(
            np.vstack([values.numpy(), mixture[None]]).T,
            columns=[*cols, "mixture"],
            index=self._cell_names(adata, indices),
        )
        return frame.mean(0) if return_mean else frame

    # ---------------------------------------------------------------- outputs
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5_000,
        batch_size: int | None = None,
        return_dist: bool = False,
        member: int = 0,
        return_members: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Latent representation of one member (default member 0), or of all members stacked.

        Members' latent spaces are not aligned with each other: never average them. One
        member's codes go into ``adata.obsm`` and into any scvi-tools/scib code that
        expects ``(n_obs, n_latent)``; compare members through data-space outputs.

        Parameters
        ----------
        adata, indices, give_mean, mc_samples, batch_size, return_dist
            As in ``scvi.model.SCVI.get_latent_representation``.
        member
            The member whose latent space is returned.
        return_members
            Return every member's codes stacked, ``(K, n_obs, n_latent)`` (and the
            variances likewise with ``return_dist``); ``member`` is then ignored.

        Returns
        -------
        ``(n_obs, n_latent)`` (``(K, n_obs, n_latent)`` with ``return_members``), or a tuple
        of means and variances with ``return_dist=True``.
        """
        args = {
            "adata": adata,
            "indices": indices,
            "give_mean": give_mean,
            "mc_samples": mc_samples,
            "batch_size": batch_size,
            "return_dist": return_dist,
        }
        if not return_members:
            return self.members[self._check_member(member)].get_latent_representation(**args)
        outs = [view.get_latent_representation(**args) for view in self.members]
        if return_dist:
            return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
        return np.stack(outs)

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Sequence[int | str] | int | str | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        member: int | None = None,
        return_members: bool = False,
        seed: int | None = None,
        silent: bool = True,
    ) -> np.ndarray | pd.DataFrame:
        """Normalised expression: the member average (how an ensemble predicts), or members.

        Parameters
        ----------
        adata, indices, gene_list, n_samples, batch_size, return_mean, return_numpy
            As in ``scvi.model.SCVI.get_normalized_expression``.
        transform_batch
            Decode as if from this batch category (its name in ``obs``); a list averages over
            those batches, as scvi-tools does.
        library_size
            Counts per cell the expression is scaled to, or ``"latent"`` for the modelled
            mean counts of each cell.
        member
            Only this member, through scvi-tools' own implementation (``model.members[k]``):
            exactly what ``scvi.model.SCVI`` returns. Importance weighting
            (``weights="importance"``) is available there.
        return_members
            Every member stacked: ``(K, n_obs, n_genes)``, or ``(K, n_samples, n_obs,
            n_genes)`` with ``n_samples > 1`` and ``return_mean=False``.
        seed
            Seed of the latent samples (``None``: the global torch generator).
        silent
            Hide the progress bar.

        Returns
        -------
        The member average as an ``n_obs x n_genes`` DataFrame (numpy with
        ``return_numpy=True``, or ``(n_samples, n_obs, n_genes)`` numpy when samples are
        kept, as scvi-tools), or the stacked members.
        """
        if member is not None and not return_members:
            return self.members[self._check_member(member)].get_normalized_expression(
                adata=adata,
                indices=indices,
                transform_batch=transform_batch,
                gene_list=gene_list,
                library_size=library_size,
                n_samples=n_samples,
                batch_size=batch_size,
                return_mean=return_mean,
                return_numpy=return_numpy,
                silent=silent,
            )
        self._check_if_trained(warn=True)
        adata_ = self._validate_anndata(adata)
        mask = torch.from_numpy(self._gene_mask(adata_, gene_list))
        codes = batch_codes(self.get_anndata_manager(adata_, required=True), transform_batch)
        chunks = []
        batches = self._seeded_batches(
            adata_, indices, batch_size, seed, None if silent else "normalised expression"
        )
        for tensors in batches:
            per_batch = []
            for code in codes:
                pred = self.module.predictive(tensors, n_samples=n_samples, transform_batch=code)
                values = pred.rate if library_size == "latent" else pred.scale * library_size
                per_batch.append(values[..., mask])
            chunks.append(torch.stack(per_batch).mean(0).cpu())  # (S, K, B, G)
        values = torch.cat(chunks, dim=2).numpy()
        if return_mean or n_samples == 1:
            values = values.mean(0)  # (K, n, G)
        else:
            values = values.swapaxes(0, 1)  # (K, S, n, G)
        if return_members:
            return values
        mean = values.mean(0)
        if return_numpy or mean.ndim != 2:
            return mean
        return pd.DataFrame(
            mean, index=self._cell_names(adata, indices), columns=adata_.var_names[mask.numpy()]
        )

    def get_elbo(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        member: int | None = None,
        return_table: bool = False,
        seed: int | None = 0,
    ) -> float | np.ndarray | pd.Series | pd.DataFrame:
        """ELBO (higher is better) of the ensemble, of one member, or of each member.

        The ensemble's value for a cell is ``log((1/K) sum_k exp(ELBO_k))``, a lower bound on
        the log-likelihood of the equal-weight member mixture.

        Parameters
        ----------
        adata, indices, batch_size, return_mean
            As in ``scvi.model.SCVI.get_elbo``.
        member
            Compute only this member (its ELBO, as ``model.members[k].get_elbo``).
        return_table
            Return every member and the mixture: a ``Series`` of means over cells, or a
            cells x (``member_0`` ... ``mixture``) ``DataFrame`` with ``return_mean=False``.
        seed
            Seed of the latent sample (``None``: the global torch generator).

        Returns
        -------
        A float (mean over cells), a per-cell array with ``return_mean=False``, or the table.
        """
        values = self._stream(self.module.member_elbo, adata, indices, batch_size, seed, member)
        return self._likelihood_output(values, adata, indices, return_mean, member, return_table)

    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1_000,
        batch_size: int | None = None,
        return_mean: bool = True,
        member: int | None = None,
        return_table: bool = False,
        seed: int | None = 0,
        n_mc_samples_per_pass: int = 25,
    ) -> float | np.ndarray | pd.Series | pd.DataFrame:
        """Importance-sampled log p(x) of the ensemble, of one member, or of each member.

        The ensemble's value is ``log((1/K) sum_k p_k(x))``: the log-likelihood of its
        predictive distribution, the number to compare with one scVI model.

        Parameters
        ----------
        adata, indices, n_mc_samples, batch_size, return_mean
            As in ``scvi.model.SCVI.get_marginal_ll``.
        member, return_table, seed
            As in :meth:`get_elbo`.
        n_mc_samples_per_pass
            Importance samples decoded at once (memory: samples x members x cells x genes).

        Returns
        -------
        Same types as :meth:`get_elbo`.
        """

        def fn(tensors):
            return self.module.marginal_ll(
                tensors, n_mc_samples=n_mc_samples, n_mc_samples_per_pass=n_mc_samples_per_pass
            )

        values = self._stream(fn, adata, indices, batch_size, seed, member)
        return self._likelihood_output(values, adata, indices, return_mean, member, return_table)

    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        member: int | None = None,
        seed: int | None = 0,
    ) -> dict[str, float | np.ndarray]:
        """``-log p(x | z)`` from one latent sample, of the ensemble (mixture) or one member.

        The ensemble's value is ``-log((1/K) sum_k p_k(x | z_k))``.

        Returns
        -------
        ``{"reconstruction_loss": value}`` as scvi-tools (a mean, or per cell).
        """

        def fn(tensors):
            x = tensors[REGISTRY_KEYS.X_KEY]
            return self.module.predictive(tensors).log_prob_sum(x, self.module.gene_likelihood)

        values = self._stream(fn, adata, indices, batch_size, seed, member)
        log_p = values[0] if member is not None else logmeanexp(values, dim=0)
        rec = -log_p.numpy()
        return {"reconstruction_loss": float(rec.mean()) if return_mean else rec}

    def get_latent_library_size(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        member: int | None = None,
    ) -> np.ndarray:
        """Library size (counts) of each cell: the member average, or one member's.

        With the observed library size (the default) every member returns the cell's total
        count. Returns ``(n_obs, 1)`` as scvi-tools.
        """
        args = {"adata": adata, "indices": indices, "give_mean": give_mean}
        if member is not None:
            return self.members[self._check_member(member)].get_latent_library_size(
                **args, batch_size=batch_size
            )
        return np.mean(
            [m.get_latent_library_size(**args, batch_size=batch_size) for m in self.members], 0
        )

    @torch.inference_mode()
    def _get_denoised_samples(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 25,
        batch_size: int = 64,
        rna_size_factor: int = 1000,
        transform_batch: int | None = None,
    ) -> np.ndarray:
        """scvi-tools' denoised samples (Gamma around the NB mean), from the member mixture.

        Used by the inherited ``get_feature_correlation_matrix``: each cell's each sample
        comes from a member drawn uniformly at random.
        """
        if self.module.gene_likelihood == "poisson":
            raise ValueError(
                "Denoised samples (and get_feature_correlation_matrix) need a dispersion: "
                "train with gene_likelihood='nb' or 'zinb'."
            )
        adata = self._validate_anndata(adata)
        out = []
        for tensors in self._seeded_batches(adata, indices, batch_size, seed=None):
            pred = self.module.predictive(tensors, n_samples, transform_batch=transform_batch)
            choose = pred.mixture_draw()
            rate, theta = choose(rna_size_factor * pred.scale), choose(pred.theta)
            data = torch.distributions.Gamma(theta, theta / rate).sample().cpu().numpy()
            out.append(data[0] if n_samples == 1 else np.transpose(data, (1, 2, 0)))
        return np.concatenate(out, axis=0)

    @torch.inference_mode()
    def get_uncertainty(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        gene_list: Sequence[str] | None = None,
        n_samples: int = 25,
        library_size: float = 1e4,
        batch_size: int | None = None,
        seed: int = 0,
        key_added: str | None = None,
        store_layers: bool = True,
        progress: bool = True,
        return_frames: bool = True,
    ) -> dict[str, pd.DataFrame]:
        """Posterior mean of normalised expression and the three parts of its variance.

        For each cell and gene, ``n_samples`` latent samples of each of the K members give
        the mean normalised expression (per ``library_size`` counts) and the variance of
        the cell's normalised count split by the law of total variance into
        ``var_between`` (between members: model uncertainty), ``var_within`` (within a
        member: latent-posterior uncertainty) and ``var_noise`` (the count model's noise);
        see :mod:`ensemblevi.model._uncertainty` for the formulas.

        Parameters
        ----------
        adata, indices, gene_list, batch_size
            Cells and genes to compute, as in ``get_normalized_expression``.
        n_samples
            Latent samples per member and cell.
        library_size
            Counts per cell the expression is expressed in.
        seed
            Seed of the latent samples; the global random state is not touched.
        key_added
            Write the results into ``adata`` under this prefix (nothing is written when
            ``None``, the default): per-gene summaries to ``adata.var`` (``<key>_mean``,
            ``<key>_var_between``, ``<key>_var_within``, ``<key>_var_noise``: means over
            cells; ``<key>_cv_between``: mean over cells of ``sqrt(var_between) / mean``;
            ``<key>_frac_between``: between-member share of between + within), per-cell
            summaries to ``adata.obs`` (``<key>_cv_between``: mean over genes of
            ``sqrt(var_between) / mean``; ``<key>_frac_between``), the settings to
            ``adata.uns[key]["uncertainty"]`` and, with ``store_layers``, the four cells x
            genes parts to ``adata.layers["<key>_<part>"]`` (NaN outside the computed cells
            and genes).
        store_layers
            With ``key_added``: also write the four dense cells x genes layers (4 x 4 bytes
            per cell and gene: 32 GB for 1M cells x 2,000 genes; turn off for large data).
        progress
            Show a progress bar.
        return_frames
            Return the four cells x genes DataFrames (default). ``False`` returns only the
            per-gene and per-cell summaries, accumulated chunk by chunk: with
            ``store_layers=False`` too, memory stays O(cells + genes) at any data size.

        Returns
        -------
        ``{"mean", "var_between", "var_within", "var_noise"}``: cells x genes DataFrames; or,
        with ``return_frames=False``, ``{"genes", "cells"}``: the summaries (genes x
        ``mean, var_between, var_within, var_noise, cv_between, frac_between``; cells x
        ``cv_between, frac_between``).
        """
        if key_added is not None and is_collection(adata):
            raise ValueError(
                "key_added writes into adata.var/obs, which an AnnCollection does not have: "
                "call get_uncertainty(..., return_frames=False) without key_added and keep "
                "the returned per-gene and per-cell summaries."
            )
        adata = self._validate_anndata(adata)
        mask = self._gene_mask(adata, gene_list)
        idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in VARIANCE_PARTS}
        summary = UncertaintySummary(len(idx), int(mask.sum()))
        chunks = self.iter_uncertainty(
            adata, idx, gene_list, n_samples, library_size, batch_size, seed, progress
        )
        start = 0
        for _, res, _ in chunks:
            n = res.mean.shape[0]
            summary.add(np.arange(start, start + n), res)
            start += n
            if return_frames or (key_added is not None and store_layers):
                for name, value in zip(VARIANCE_PARTS, res, strict=True):
                    parts[name].append(value.float().cpu())
        obs_names, var_names = adata.obs_names[idx], adata.var_names[mask]
        frames = {
            name: pd.DataFrame(torch.cat(v).numpy(), index=obs_names, columns=var_names)
            for name, v in parts.items()
            if v
        }
        genes, cells = summary.genes(var_names), summary.cells(obs_names)
        if key_added is not None:
            settings = {"n_samples": int(n_samples), "library_size": float(library_size)}
            settings["seed"] = int(seed)
            self._store_uncertainty(
                adata, idx, mask, frames if store_layers else {}, genes, cells, key_added,
                settings,
            )  # fmt: skip
        return frames if return_frames else {"genes": genes, "cells": cells}

    def differential_expression(self, adata: AnnData | None = None, **kwargs: Any) -> pd.DataFrame:
        """Differential expression with the ensemble posterior and a posterior expected FDR.

        :func:`ensemblevi.tl.differential_expression` with ``model=self``; ``kwargs`` are its
        arguments (``groupby``, ``group1``, ``group2``, ``delta``, ``fdr_target``,
        ``estimand``, ``n_samples``, ``max_cells``, ``batch_correction``, ``pseudocount``,
        ``seed``, ``key_added``, ``progress``).
        """
        from ensemblevi.tl import differential_expression

        return differential_expression(self, adata, **kwargs)

    @torch.inference_mode()
    def iter_uncertainty(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        gene_list: Sequence[str] | None = None,
        n_samples: int = 25,
        library_size: float = 1e4,
        batch_size: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> Iterator[tuple[np.ndarray, Any, torch.Tensor]]:
        """Stream :meth:`get_uncertainty` over cell chunks, for reductions in bounded memory.

        Yields ``(cell_positions, parts, member_means)`` per minibatch: the positions in
        ``adata`` of the chunk's cells, the :class:`~ensemblevi.model.VarianceParts` of the
        chunk (each ``(B, G)``) and the members' means over latent samples ``(K, B, G)``
        (normalised expression per ``library_size``), for the genes of ``gene_list``.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
        self._check_if_trained(warn=True)
        adata = self._validate_anndata(adata)
        mask = self._gene_mask(adata, gene_list)
        idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        if batch_size is None:
            # bound the (samples, members, cells, genes) tensor to about 2e7 floats
            per_cell = n_samples * self.n_members * adata.n_vars
            batch_size = int(np.clip(2e7 // per_cell, 1, 256))
        batches = self._seeded_batches(
            adata, idx, batch_size, seed, "ensemble uncertainty" if progress else None
        )
        # all genes: no index (an index_select would copy the (S, K, B, G) tensors)
        gene_idx = None if mask.all() else torch.from_numpy(np.flatnonzero(mask))
        start = 0
        for tensors in batches:
            pred = self.module.predictive(tensors, n_samples=n_samples)
            inputs = _variance_inputs(pred, gene_idx)
            res = decompose_variance(**inputs, library_size=library_size)
            n = res.mean.shape[0]
            yield idx[start : start + n], res, (inputs["scale"] * library_size).mean(0)
            start += n

    def _store_uncertainty(self, adata, idx, mask, frames, genes, cells, key, settings):
        cols = np.flatnonzero(mask)
        for name, frame in frames.items():
            layer = np.full(adata.shape, np.nan, dtype=np.float32)
            layer[np.ix_(idx, cols)] = frame.to_numpy()
            adata.layers[f"{key}_{name}"] = layer
        for column, values in genes.items():
            full = np.full(adata.n_vars, np.nan)
            full[cols] = values.to_numpy()
            adata.var[f"{key}_{column}"] = full
        for column, values in cells.items():
            full = np.full(adata.n_obs, np.nan)
            full[idx] = values.to_numpy()
            adata.obs[f"{key}_{column}"] = full
        adata.uns.setdefault(key, {})["uncertainty"] = {
            "ensemble": self.ensemble,
            "n_members": self.n_members,
            **settings,
            "n_cells": len(idx),
            "n_genes": len(cols),
            "layers": [f"{key}_{n}" for n in frames],
        }

    # ------------------------------------------------------------ save / load
    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs: Any,
    ) -> None:
        """``scvi-tools``' save, made atomic, that touches only the files it writes.

        The model is written to a temporary folder inside ``dir_path`` and its files are
        renamed into place one by one, so a crash while saving leaves the previous model (or
        nothing) under the final names, never a partial one. Other files in ``dir_path``
        (an input ``.h5ad``, notes) are never removed.

        Parameters
        ----------
        dir_path
            Folder of the saved model (created if needed; it may hold other files).
        prefix
            Prefix of the file names (``{prefix}model.pt``).
        overwrite
            Replace a model saved there before. Without it, only an existing model file of
            this name (or its AnnData with ``save_anndata``) is refused.
        save_anndata
            Also save the AnnData (``{prefix}adata.h5ad``).
        **kwargs
            Passed to scvi-tools' ``save``.
        """
        from ensemblevi._files import TMP_PREFIX, move_into

        dir_path = os.path.abspath(os.fspath(dir_path))
        model_file = saved_model_file(dir_path, prefix)
        own = [model_file] + ([os.path.join(dir_path, f"{prefix or ''}adata.h5ad")]
                              if save_anndata else [])  # fmt: skip
        existing = [f for f in own if os.path.exists(f)]
        if existing and not overwrite:
            raise FileExistsError(
                f"{existing[0]} already exists; pass overwrite=True to replace the saved model "
                "(or save to another folder)."
            )
        os.makedirs(dir_path, exist_ok=True)
        # inside dir_path: same file system for the renames, and a folder an interrupted
        # save leaves behind carries the prefix that clean_temporaries removes
        tmp = os.path.join(dir_path, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
        try:
            super().save(tmp, prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs)
            move_into(tmp, dir_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        prefix: str | None = None,
        **kwargs: Any,
    ) -> EnsembleSCVI:
        """``scvi-tools``' load; refuses an AnnData whose genes differ from the model's.

        scvi-tools only warns when the genes differ, and a model then silently reads the
        wrong columns; here that is a ``ValueError`` that names the differences. A damaged
        or truncated model file is a ``ValueError`` naming the file, not torch's unpickling
        traceback.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        adata
            AnnData to attach (registered with :meth:`setup_anndata`; same genes, same
            order); ``None``: the one saved with the model.
        prefix
            Prefix the model was saved with.
        **kwargs
            Passed to scvi-tools' ``load`` (``accelerator``, ``device``, ...).
        """
        model_file = saved_model_file(dir_path, prefix)
        if not os.path.exists(model_file):
            raise FileNotFoundError(
                f"No saved model at {model_file}; pass the directory given to model.save()."
            )
        try:
            saved_vars = saved_var_names(dir_path, prefix)
        except Exception as err:  # torch raises UnpicklingError, EOFError, RuntimeError, ...
            raise ValueError(
                f"{model_file} is not a readable saved model ({type(err).__name__}: {err}); it "
                "is truncated or damaged, e.g. by a process killed while copying it. Restore "
                "it from a copy or train the model again."
            ) from err
        if adata is not None:
            given = pd.Index(adata.var_names.astype(str))
            if not saved_vars.equals(given):
                missing = saved_vars.difference(given)
                extra = given.difference(saved_vars)
                order = " (same genes, other order)" if not len(missing) and not len(extra) else ""
                raise ValueError(
                    f"The model at {dir_path} was trained on {len(saved_vars)} genes; this "
                    f"AnnData has {len(given)}{order}. Missing here: {len(missing)} "
                    f"(e.g. {list(missing[:5])}); not in the model: {len(extra)} "
                    f"(e.g. {list(extra[:5])}). Subset and order the AnnData as "
                    "adata[:, model_var_names] before loading."
                )
        return super().load(dir_path, adata=adata, prefix=prefix, **kwargs)


for _name, _why in MEMBER_ONLY.items():
    setattr(EnsembleSCVI, _name, member_only(_name, _why))


def _variance_inputs(
    pred: Predictive, genes: torch.Tensor | None
) -> dict[str, torch.Tensor | None]:
    """The inputs of :func:`decompose_variance` for the selected genes (``None``: all)."""

    def sel(t):
        return t if t is None or genes is None else t.index_select(-1, genes.to(t.device))

    return {
        "scale": sel(pred.scale),
        "library": pred.library.exp(),
        "theta": sel(pred.theta),
        "zi_logits": sel(pred.zi_logits),
    }
