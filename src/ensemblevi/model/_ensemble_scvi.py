"""EnsembleSCVI: an ensemble of scVI models as one scvi-tools model, trained in one pass."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scvi
import torch
from anndata import AnnData
from lightning.pytorch import seed_everything
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
)
from scvi.model._utils import _init_library_size
from scvi.model.base import BaseModelClass, RNASeqMixin, UnsupervisedTrainingMixin, VAEMixin
from scvi.utils import track

from ensemblevi.data import require_obs_columns, validate_counts
from ensemblevi.module import ENSEMBLE_KINDS, EnsembleVAE
from ensemblevi.train import EnsembleTrainingPlan, EpochCheckpoint, NaNGuard

from ._uncertainty import decompose_variance

logger = logging.getLogger(__name__)

UNCERTAINTY_LAYERS = ("mean", "var_between", "var_within", "var_noise")


def _logmeanexp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(x, dim=dim) - np.log(x.shape[dim])


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
        ``"mcdropout"`` (one network, K dropout masks kept on at prediction) or ``"single"``
        (one scVI network, for comparisons).
    n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood
        As in ``scvi.model.SCVI``.
    use_observed_lib_size
        Observed library size (default) or a latent one, as in ``scvi.model.SCVI``.
    seed
        Seed of the weight initialisation; ``None`` uses the global torch generator
        (``scvi.settings.seed``).
    **module_kwargs
        Passed to :class:`~ensemblevi.module.EnsembleVAE` (``random_sign_init``,
        ``encode_covariates``, ``use_batch_norm``, ...).

    Examples
    --------
    >>> ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    >>> model = ev.model.EnsembleSCVI(adata, n_members=4, ensemble="deep")
    >>> model.train(max_epochs=100)
    >>> parts = model.get_uncertainty(n_samples=25)  # also in adata.layers["ensemblevi_*"]
    """

    _module_cls = EnsembleVAE
    _training_plan_cls = EnsembleTrainingPlan

    def __init__(
        self,
        adata: AnnData | None = None,
        n_members: int = 4,
        ensemble: Literal["single", "deep", "batch", "mcdropout"] = "deep",
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label"] = "gene",
        gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
        use_observed_lib_size: bool = True,
        seed: int | None = None,
        **module_kwargs: Any,
    ):
        if adata is None:
            raise ValueError(
                "EnsembleSCVI needs an AnnData registered with EnsembleSCVI.setup_anndata(adata)."
            )
        if ensemble not in ENSEMBLE_KINDS:
            raise ValueError(f"ensemble must be one of {ENSEMBLE_KINDS}, got {ensemble!r}.")
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
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                n_members=int(n_members),
                ensemble=ensemble,
                n_batch=n_batch,
                n_labels=self.summary_stats.n_labels,
                n_continuous_cov=self.summary_stats.get("n_extra_continuous_covs", 0),
                n_cats_per_cov=n_cats_per_cov,
                n_hidden=n_hidden,
                n_latent=n_latent,
                n_layers=n_layers,
                dropout_rate=dropout_rate,
                dispersion=dispersion,
                gene_likelihood=gene_likelihood,
                use_observed_lib_size=use_observed_lib_size,
                library_log_means=library_log_means,
                library_log_vars=library_log_vars,
                **module_kwargs,
            )
        self._model_summary_string = (
            f"EnsembleSCVI ({ensemble}, {self.module.n_members} member(s)): n_hidden: "
            f"{n_hidden}, n_latent: {n_latent}, n_layers: {n_layers}, dropout_rate: "
            f"{dropout_rate}, dispersion: {dispersion}, gene_likelihood: {gene_likelihood}"
        )
        self.init_params_ = self._get_init_params(locals())

    @property
    def n_members(self) -> int:
        return self.module.n_members

    @property
    def ensemble(self) -> str:
        return self.module.ensemble

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
            Sets ``scvi.settings.seed`` (the train/validation split) and seeds torch, numpy
            and Python (data order, dropout, sampling) before training.
        plan_kwargs
            Passed to :class:`~ensemblevi.train.EnsembleTrainingPlan` (``lr``, ...).
        **kwargs
            Passed to ``scvi.model.base.UnsupervisedTrainingMixin.train``
            (``train_size``, ``early_stopping``, ``accelerator``, ``callbacks``, ...).

        Raises
        ------
        FloatingPointError
            On a NaN or infinite loss; the model then holds the last good epoch's weights.
        """
        if seed is not None:
            # scvi-tools draws the train/validation split from settings.seed
            scvi.settings.seed = seed
            seed_everything(seed, workers=True, verbose=False)
        plan_kwargs = {"fast_lr_multiplier": fast_lr_multiplier, **(plan_kwargs or {})}
        callbacks = list(kwargs.pop("callbacks", None) or [])
        guard = NaNGuard()
        callbacks.append(guard)
        if checkpoint_path is not None:
            callbacks.append(EpochCheckpoint(self, checkpoint_path, every=checkpoint_every))
        try:
            return super().train(
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

    def _members_arg(self, member: int | None) -> list[int]:
        if member is None:
            return list(range(self.n_members))
        if not 0 <= member < self.n_members:
            raise IndexError(f"member {member} out of range: the ensemble has {self.n_members}.")
        return [int(member)]

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
    def _stream_members(
        self,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        seed: int | None = 0,
    ) -> torch.Tensor:
        """Concatenate ``fn(tensors)`` (``(K, B)``) over minibatches: ``(K, n_cells)``."""
        self._check_if_trained(warn=True)
        adata = self._validate_anndata(adata)
        out = [
            fn(tensors).reshape(self.n_members, -1).cpu()
            for tensors in self._seeded_batches(adata, indices, batch_size, seed)
        ]
        return torch.cat(out, dim=1)

    def _member_table(
        self, values: torch.Tensor, adata: AnnData | None, indices, return_mean: bool, member
    ):
        cols = [f"member_{k}" for k in range(self.n_members)]
        table = values.double().numpy()
        if member is not None:
            row = table[member]
            return float(row.mean()) if return_mean else row
        mixture = _logmeanexp(values.double(), dim=0).numpy()
        frame = pd.DataFrame(np.vstack([table, mixture[None]]).T, columns=[*cols, "mixture"])
        if return_mean:
            return frame.mean(0)
        adata = self._validate_anndata(adata)
        idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        frame.index = adata.obs_names[idx]
        return frame

    # ---------------------------------------------------------------- outputs
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        member: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Latent representation: ``(K, cells, n_latent)``, or ``(cells, n_latent)`` for one member.

        Members' latent spaces are not aligned with each other: use one member (e.g. to put
        into ``adata.obsm``) or compare members through data-space outputs, never average
        the codes.
        """
        outs = []
        for k in self._members_arg(member):
            with self.module.member(k):
                outs.append(
                    super().get_latent_representation(
                        adata=adata,
                        indices=indices,
                        give_mean=give_mean,
                        batch_size=batch_size,
                        **kwargs,
                    )
                )
        return outs[0] if member is not None else np.stack(outs)

    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch=None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        member: int | None = None,
        return_members: bool = False,
        **kwargs: Any,
    ) -> np.ndarray | pd.DataFrame:
        """Normalised expression, as ``scvi.model.SCVI.get_normalized_expression``.

        Runs scvi-tools' own implementation once per member (the module's member switch
        makes each pass an ordinary scVI pass) and averages the members in data space.

        Parameters
        ----------
        member
            One member's output (exactly what scvi-tools returns for one scVI model).
        return_members
            Return the members' outputs stacked, ``(K, cells, genes)`` (``(K, n_samples,
            cells, genes)`` with ``n_samples > 1`` and ``return_mean=False``).
        Other parameters
            As in scvi-tools.

        Returns
        -------
        The member average as a cells x genes ``DataFrame`` (numpy with ``return_numpy=True``
        or when samples are kept), or the stacked members.
        """
        adata_ = self._validate_anndata(adata)
        mask = self._gene_mask(adata_, gene_list)
        args = {
            "adata": adata,
            "indices": indices,
            "transform_batch": transform_batch,
            "gene_list": gene_list,
            "library_size": library_size,
            "n_samples": n_samples,
            "batch_size": batch_size,
            "return_mean": return_mean,
            **kwargs,
        }
        if member is not None and not return_members:
            with self.module.member(self._members_arg(member)[0]):
                return super().get_normalized_expression(**args, return_numpy=return_numpy)
        outs = []
        for k in self._members_arg(member):
            with self.module.member(k):
                outs.append(super().get_normalized_expression(**args, return_numpy=True))
        stacked = np.stack(outs)
        if return_members:
            return stacked
        mean = stacked.mean(0)
        if return_numpy or mean.ndim != 2:
            return mean
        idx = np.arange(adata_.n_obs) if indices is None else np.asarray(indices)
        return pd.DataFrame(mean, index=adata_.obs_names[idx], columns=adata_.var_names[mask])

    def get_elbo(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        member: int | None = None,
        seed: int | None = 0,
        **kwargs: Any,
    ):
        """ELBO (higher is better) of each member and of the member mixture.

        The mixture value of a cell is ``log((1/K) sum_k exp(ELBO_k))``, a lower bound on
        the log-likelihood of the equal-weight mixture of the members.

        Returns
        -------
        A ``Series`` (``member_0`` ... ``mixture``, means over cells), a cells x columns
        ``DataFrame`` with ``return_mean=False``, or one member's value with ``member=k``.
        """
        values = self._stream_members(self.module.member_elbo, adata, indices, batch_size, seed)
        return self._member_table(values, adata, indices, return_mean, member)

    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 100,
        batch_size: int | None = None,
        return_mean: bool = True,
        member: int | None = None,
        seed: int | None = 0,
        n_mc_samples_per_pass: int = 25,
        **kwargs: Any,
    ):
        """Importance-sampled log p(x) of each member and of the member mixture.

        The mixture is ``log((1/K) sum_k p_k(x))``: the log-likelihood of the ensemble's
        predictive distribution, the number to compare with a single model. Same return
        types as :meth:`get_elbo`.
        """

        def fn(tensors):
            return self.module.marginal_ll(
                tensors, n_mc_samples=n_mc_samples, n_mc_samples_per_pass=n_mc_samples_per_pass
            )

        values = self._stream_members(fn, adata, indices, batch_size, seed)
        return self._member_table(values, adata, indices, return_mean, member)

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
        store: bool = True,
        progress: bool = True,
    ) -> dict[str, pd.DataFrame]:
        """Posterior mean of normalised expression and the three parts of its variance.

        For each cell and gene, ``n_samples`` latent samples of each of the K members give
        the mean normalised expression (per ``library_size`` counts) and the variance of
        the cell's normalised count split by the law of total variance into
        ``var_between`` (between members: model uncertainty), ``var_within`` (within a
        member: latent-posterior uncertainty) and ``var_noise`` (the count model's noise);
        see :mod:`ensemblevi.model._uncertainty` for the formulas.

        With ``store=True`` the four parts go to ``adata.layers["ensemblevi_<part>"]``
        (NaN for cells and genes not computed), per-gene summaries to ``adata.var``
        (``ensemblevi_mean``, ``ensemblevi_var_between``, ``ensemblevi_var_within``,
        ``ensemblevi_var_noise``: means over cells; ``ensemblevi_cv_between``: mean over
        cells of ``sqrt(var_between) / mean``; ``ensemblevi_frac_between``: between-member
        share of the model (between + within) variance) and the settings to
        ``adata.uns["ensemblevi"]["uncertainty"]``.

        Returns
        -------
        ``{"mean", "var_between", "var_within", "var_noise"}``: cells x genes DataFrames.
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
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in UNCERTAINTY_LAYERS}
        batches = self._seeded_batches(
            adata, idx, batch_size, seed, "ensemble uncertainty" if progress else None
        )
        for tensors in batches:
            _, gen = self.module.forward(
                tensors, inference_kwargs={"n_samples": n_samples}, compute_loss=False
            )
            px = gen["px"]
            scale = px.scale
            library = px.get_normalized("mu").sum(-1, keepdim=True) / scale.sum(-1, keepdim=True)
            theta = getattr(px, "theta", None)
            zi = getattr(px, "zi_logits", None)
            if n_samples == 1:
                scale, library = scale[None], library[None]
                zi = None if zi is None else zi[None]
            if theta is not None and theta.dim() == scale.dim() - 1:
                theta = theta[None]
            res = decompose_variance(
                scale[..., mask],
                library,
                None if theta is None else theta.expand(*scale.shape[:-1], -1)[..., mask],
                None if zi is None else zi[..., mask],
                library_size=library_size,
            )
            for name, value in zip(UNCERTAINTY_LAYERS, res, strict=True):
                parts[name].append(value.float().cpu())
        obs_names, var_names = adata.obs_names[idx], adata.var_names[mask]
        result = {
            name: pd.DataFrame(torch.cat(v).numpy(), index=obs_names, columns=var_names)
            for name, v in parts.items()
        }
        if store:
            self._store_uncertainty(adata, idx, mask, result, n_samples, library_size, seed)
        return result

    def _store_uncertainty(self, adata, idx, mask, result, n_samples, library_size, seed):
        cols = np.flatnonzero(mask)
        for name, frame in result.items():
            layer = np.full(adata.shape, np.nan, dtype=np.float32)
            layer[np.ix_(idx, cols)] = frame.to_numpy()
            adata.layers[f"ensemblevi_{name}"] = layer
        mean = result["mean"].to_numpy()
        between = result["var_between"].to_numpy()
        within = result["var_within"].to_numpy()
        summaries = {
            **{f"ensemblevi_{n}": result[n].to_numpy().mean(0) for n in UNCERTAINTY_LAYERS},
            "ensemblevi_cv_between": np.mean(
                np.sqrt(between) / np.maximum(mean, np.finfo(np.float32).tiny), axis=0
            ),
            "ensemblevi_frac_between": between.sum(0)
            / np.maximum((between + within).sum(0), np.finfo(np.float32).tiny),
        }
        for key, values in summaries.items():
            column = np.full(adata.n_vars, np.nan)
            column[cols] = values
            adata.var[key] = column
        adata.uns.setdefault("ensemblevi", {})["uncertainty"] = {
            "ensemble": self.ensemble,
            "n_members": self.n_members,
            "n_samples": int(n_samples),
            "library_size": float(library_size),
            "seed": int(seed),
            "n_cells": len(idx),
            "n_genes": len(cols),
            "layers": [f"ensemblevi_{n}" for n in UNCERTAINTY_LAYERS],
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
        """``scvi-tools``' save, made atomic.

        Everything is written to a temporary directory next to ``dir_path`` and renamed into
        place, so a crash while saving leaves the previous model (or nothing), never a
        partial one.
        """
        dir_path = os.path.abspath(os.fspath(dir_path))
        if os.path.exists(dir_path) and not overwrite:
            raise FileExistsError(
                f"{dir_path} already exists; pass overwrite=True to replace the saved model."
            )
        parent = os.path.dirname(dir_path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(dir_path)}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            super().save(tmp, prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs)
            old = None
            if os.path.exists(dir_path):
                old = f"{tmp}.old"
                os.replace(dir_path, old)
            os.replace(tmp, dir_path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if os.path.exists(tmp):
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
        wrong columns; here that is a ``ValueError`` that names the differences.
        """
        dir_path = os.fspath(dir_path)
        model_file = os.path.join(dir_path, f"{prefix or ''}model.pt")
        if not os.path.exists(model_file):
            raise FileNotFoundError(
                f"No saved model at {model_file}; pass the directory given to model.save()."
            )
        if adata is not None:
            saved = torch.load(model_file, map_location="cpu", weights_only=False)
            saved_vars = pd.Index(np.asarray(saved["var_names"]).astype(str))
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
