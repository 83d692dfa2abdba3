"""EnsembleVAE: scVI's generative model with K members computed in one forward pass."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from scvi.distributions import Normal as NormalLikelihood
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.distributions import Normal, kl_divergence

from ensemblevi._constants import EnsembleKind, check_kind
from ensemblevi.module._embedding import BatchEmbeddingMixin
from ensemblevi.module._hyperparameters import HyperparameterHost, HyperparameterSpec
from ensemblevi.module._likelihood import (
    nb_log_prob_sum,
    normal_log_prob_sum,
    poisson_log_prob_sum,
    zinb_log_prob_sum,
)
from ensemblevi.module._predictive import PredictiveMixin
from ensemblevi.nn._base import LayerSpec, set_active_member
from ensemblevi.nn._blocks import EnsembleDecoderSCVI, EnsembleEncoder
from ensemblevi.nn._hyperbatch import HyperEmbedding


class EnsembleVAE(HyperparameterHost, PredictiveMixin, BatchEmbeddingMixin, BaseModuleClass):
    """The scVI model (Lopez et al. 2018) as an ensemble of K members.

    ``z ~ N(0, I)``; ``x_g | z, l ~ ZINB / NB / Poisson(l * rho_g(z, s), theta_g)`` with the
    observed library size ``l`` by default (a latent one with ``use_observed_lib_size=False``),
    batch and categorical covariates one-hot injected into the decoder layers and continuous
    covariates appended to its input, as in ``scvi.module.VAE``. Encoder and decoder are built
    from ensemble layers, so one forward pass computes all members; each member has its own
    gene dispersion ``theta`` (``K x G``) except in the MC-dropout kind, which is one network.

    Shapes. With all members active, inference and generative outputs carry a member axis at
    position -3: ``z`` is ``(K, B, n_latent)``, ``px`` has parameters ``(K, B, G)``, and with
    ``n_samples = S`` a leading sample axis is added. Inside :meth:`member` (one member
    active), every output has exactly the shapes of ``scvi.module.VAE``, so scvi-tools' model
    mixins work on one member at a time.

    Parameters
    ----------
    n_input
        Number of genes.
    n_members
        Number of members K (forced to 1 for ``ensemble="single"``).
    ensemble
        ``single`` (one scVI network), ``deep`` (K independent networks, vectorised),
        ``batch`` (BatchEnsemble: shared kernels, per-member fast weights), ``hyperbatch``
        (Hyper-BatchEnsemble: BatchEnsemble whose members also tune hyperparameters) or
        ``mcdropout`` (one network, K dropout masks kept on at prediction).
    n_batch, n_labels, n_continuous_cov, n_cats_per_cov
        Covariates, as in ``scvi.module.VAE``.
    n_hidden, n_latent, n_layers, dropout_rate
        Architecture, as in ``scvi.module.VAE``. For ``mcdropout`` the decoder gets the same
        dropout rate as the encoder (scVI's decoder has none), so that its K masks differ.
    dispersion
        ``gene``, ``gene-batch``, ``gene-label`` or ``gene-cell`` (decoded per cell by a
        head of each member's decoder).
    gene_likelihood
        ``zinb``, ``nb``, ``poisson`` or ``normal`` (scvi-tools' Normal on continuous data:
        mean ``l * rho``, standard deviation ``exp(px_r)``, the dispersion parameter).
    latent_distribution
        ``normal`` or ``ln`` (logistic normal: ``z = softmax(u)``, ``u ~ q``), as in
        ``scvi.module.VAE``.
    var_activation
        Makes the encoders' variances positive (``None``: ``torch.exp``), as in
        ``scvi.module.VAE``.
    use_observed_lib_size, library_log_means, library_log_vars
        Library size handling, as in ``scvi.module.VAE``.
    use_size_factor_key
        The registered size factor is the library in the likelihood (with softplus
        instead of softmax expression), as ``scvi.module.VAE``; the library is then
        observed: ``use_observed_lib_size=False`` is overridden, with a warning.
    random_sign_init
        BatchEnsemble fast-weight init of ``r`` and ``s`` (``batch``, ``hyperbatch``):
        negative: ``N(1, |value|)`` (default -0.5, the reference's); positive ``p``: random
        signs, +1 with probability ``p`` (Wen, Tran & Ba 2020); 0: all ones.
    hyperparameters
        ``hyperbatch`` only: what to tune (see
        :func:`~ensemblevi.module.resolve_hyperparameters`; default: dropout, KL weight and
        the four L2 groups). A tuned dropout replaces ``dropout_rate`` in the encoder.
    hyper_heads
        ``hyperbatch`` only: ``"tied"`` (default) gives the decoder's likelihood heads
        (n_hidden -> genes, the widest layers) the tied HBE layer (``W' = W``: the hyper term
        scales each gene's output by ``1 + e1(lambda)``), at BatchEnsemble's cost there;
        ``"full"`` gives them a second kernel like every other layer (the reference's
        layer: 1.13-1.17x the tied model's training time on PBMC 3k and ``hard``; see
        ``docs/benchmarks.md``).
    batch_representation
        ``"one-hot"`` (default) or ``"embedding"``: a learned vector per batch appended to
        the decoder's input (and the encoder's with ``encode_covariates``) in place of the
        batch's one-hot code, as in ``scvi.module.VAE``. ``deep`` members each learn their
        own table; the other kinds share one (see :mod:`ensemblevi.module._embedding`).
    batch_embedding_kwargs
        ``{"embedding_dim": d}`` (default 5) for ``batch_representation="embedding"``.
    """

    def __init__(
        self,
        n_input: int,
        n_members: int = 4,
        ensemble: EnsembleKind = "deep",
        n_batch: int = 0,
        n_labels: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: list[int] | None = None,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        log_variational: bool = True,
        gene_likelihood: Literal["zinb", "nb", "poisson", "normal"] = "zinb",
        latent_distribution: Literal["normal", "ln"] = "normal",
        var_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        use_batch_norm: Literal["encoder", "decoder", "none", "both"] = "both",
        use_layer_norm: Literal["encoder", "decoder", "none", "both"] = "none",
        use_observed_lib_size: bool = True,
        library_log_means: np.ndarray | None = None,
        library_log_vars: np.ndarray | None = None,
        use_size_factor_key: bool = False,
        random_sign_init: float = -0.5,
        hyperparameters: HyperparameterSpec = None,
        hyper_heads: Literal["tied", "full"] = "tied",
        batch_representation: Literal["one-hot", "embedding"] = "one-hot",
        batch_embedding_kwargs: dict | None = None,
    ):
        super().__init__()
        check_kind(ensemble)
        if hyper_heads not in ("tied", "full"):
            raise ValueError(f"hyper_heads must be 'tied' or 'full', got {hyper_heads!r}.")
        if gene_likelihood not in ("zinb", "nb", "poisson", "normal"):
            raise ValueError(
                f"gene_likelihood must be zinb, nb, poisson or normal, got {gene_likelihood!r}."
            )
        if dispersion not in ("gene", "gene-batch", "gene-label", "gene-cell"):
            raise ValueError(
                f"dispersion must be gene, gene-batch, gene-label or gene-cell, not {dispersion!r}."
            )
        if use_size_factor_key and not use_observed_lib_size:
            # scvi-tools' rule (its own tests rely on it), said out loud here
            warnings.warn(
                "use_observed_lib_size=False is overridden: the AnnData was set up with "
                "size_factor_key, whose size factors are the library of the likelihood (as "
                "in scvi-tools). Set the data up without size_factor_key for a latent library.",
                UserWarning,
                stacklevel=2,
            )
            use_observed_lib_size = True
        if ensemble == "single":
            n_members = 1
        self.n_members = int(n_members)
        self.ensemble = ensemble
        self.n_input = n_input
        self.n_batch = n_batch
        self.n_labels = n_labels
        self.n_latent = n_latent
        self.dispersion = dispersion
        self.gene_likelihood = gene_likelihood
        self.latent_distribution = latent_distribution
        self.use_size_factor_key = use_size_factor_key
        self.log_variational = log_variational
        self.encode_covariates = encode_covariates
        self.use_observed_lib_size = use_observed_lib_size
        self._active_member: int | None = None
        mc = ensemble == "mcdropout"
        # Hyper-BatchEnsemble: per-member hyperparameter distributions
        n_hyper = self._init_hyper(
            ensemble, self.n_members, hyperparameters, baseline={"dropout": dropout_rate}
        )
        tuned = self.hyper.names if self.hyper is not None else ()

        if not use_observed_lib_size:
            if library_log_means is None or library_log_vars is None:
                raise ValueError(
                    "A latent library size needs library_log_means and library_log_vars."
                )
            self.register_buffer("library_log_means", torch.from_numpy(library_log_means).float())
            self.register_buffer("library_log_vars", torch.from_numpy(library_log_vars).float())

        # One dispersion per member, except for the single network of MC dropout; the
        # decoder computes a per-cell one.
        n_disp = 1 if mc else self.n_members
        extra = {"gene": (), "gene-batch": (n_batch,), "gene-label": (n_labels,)}
        self.px_r = (
            None
            if dispersion == "gene-cell"
            else nn.Parameter(torch.randn(n_disp, n_input, *extra[dispersion]))
        )

        # after px_r, where scvi.module.VAE draws its embedding
        batch_dim = self._init_batch_representation(
            batch_representation, n_batch, batch_embedding_kwargs
        )
        cat_list = [*([] if batch_dim else [n_batch]), *list(n_cats_per_cov or [])]
        enc_cats = cat_list if encode_covariates else None
        bn_enc = use_batch_norm in ("encoder", "both")
        bn_dec = use_batch_norm in ("decoder", "both")
        ln_enc = use_layer_norm in ("encoder", "both")
        ln_dec = use_layer_norm in ("decoder", "both")
        n_input_encoder = n_input + (n_continuous_cov + batch_dim) * encode_covariates
        dec_spec = LayerSpec(
            ensemble=ensemble,
            n_members=self.n_members,
            n_hyper=n_hyper,
            random_sign_init=random_sign_init,
        )
        enc_spec = dataclasses.replace(dec_spec, tuned_dropout="dropout" in tuned)
        self.z_encoder = EnsembleEncoder(
            n_input=n_input_encoder,
            n_output=n_latent,
            n_cat_list=enc_cats,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=bn_enc,
            use_layer_norm=ln_enc,
            inject_covariates=deeply_inject_covariates,
            spec=enc_spec,
            distribution=latent_distribution,
            var_activation=var_activation,
        )
        self.l_encoder = (
            None
            if use_observed_lib_size
            else EnsembleEncoder(
                n_input=n_input_encoder,
                n_output=1,
                n_cat_list=enc_cats,
                n_layers=1,
                n_hidden=n_hidden,
                dropout_rate=dropout_rate,
                use_batch_norm=bn_enc,
                use_layer_norm=ln_enc,
                inject_covariates=deeply_inject_covariates,
                spec=enc_spec,
                var_activation=var_activation,
            )
        )
        self.decoder = EnsembleDecoderSCVI(
            n_input=n_latent + n_continuous_cov + batch_dim,
            n_output=n_input,
            n_cat_list=cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            use_batch_norm=bn_dec,
            use_layer_norm=ln_dec,
            inject_covariates=deeply_inject_covariates,
            dropout_rate=dropout_rate if mc else 0.0,
            tied_heads=hyper_heads == "tied",
            spec=dec_spec,
            scale_activation="softplus" if use_size_factor_key else "softmax",
            dispersion_head=dispersion == "gene-cell",
        )

    # ----------------------------------------------------------------- members
    @property
    def active_member(self) -> int | None:
        """The member computed alone (``None``: all); set through :meth:`member`."""
        return self._active_member

    @active_member.setter
    def active_member(self, member: int | None) -> None:
        set_active_member(self, member)  # validates the index, for every layer at once
        self._active_member = None if member is None else int(member)

    @contextmanager
    def member(self, k: int | None):
        """Run everything inside the block with member ``k`` alone (scVI-shaped outputs).

        Parameters
        ----------
        k
            The member, or ``None`` for all.
        """
        previous = self.active_member
        self.active_member = k
        try:
            yield self
        finally:
            self.active_member = previous

    # ------------------------------------------------------ hyperparameters
    def l2_groups(self) -> dict[str, list[nn.Module]]:
        """The HBE layers of each L2 group: encoder, latent heads, decoder, likelihood heads."""
        enc = [self.z_encoder] + ([self.l_encoder] if self.l_encoder is not None else [])
        parts = {
            "encoder": [m for e in enc for m in e.encoder.modules()],
            "latent": [m for e in enc for m in e.heads.modules()],
            "decoder": list(self.decoder.px_decoder.modules()),
            "heads": list(self.decoder.heads.modules()),
        }
        return {g: [m for m in mods if isinstance(m, HyperEmbedding)] for g, mods in parts.items()}

    def negative_elbo(self, batch) -> torch.Tensor:
        """Each member's per-cell negative ELBO with ``beta = 1``, ``(K, B)`` (tune step).

        Parameters
        ----------
        batch
            A minibatch from an scvi-tools data loader.
        """
        inf = self.inference(**self._get_inference_input(batch))
        gen = self.generative(**self._get_generative_input(batch, inf))
        rec, kl_z, kl_l = self.elbo_terms(batch, inf, gen)
        return rec + kl_z + kl_l

    # ---------------------------------------------------------------- inputs
    def _get_inference_input(self, tensors, **kwargs):
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY],
            "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
            "cat_covs": tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
        }

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        size_factor = tensors.get(REGISTRY_KEYS.SIZE_FACTOR_KEY)
        return {
            "size_factor": None if size_factor is None else torch.log(size_factor),
            "z": inference_outputs["z"],
            "library": inference_outputs["library"],
            "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY],
            "y": tensors[REGISTRY_KEYS.LABELS_KEY],
            "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
            "cat_covs": tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
        }

    # ------------------------------------------------------------- inference
    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        n_samples: int = 1,
    ) -> dict:
        """q(z | x) (and q(l | x)) of every active member, and draws from it.

        Parameters
        ----------
        x
            Counts ``(B, G)``.
        batch_index
            Batch codes ``(B, 1)``.
        cont_covs, cat_covs
            Continuous ``(B, n)`` and categorical ``(B, n)`` covariates (used by the
            encoder with ``encode_covariates``).
        n_samples
            Latent draws per member and cell (a leading sample axis when above 1).

        Returns
        -------
        dict
            ``z`` ``([S,] K, B, n_latent)``, ``qz``, ``ql`` (``None`` with the observed
            library size) and ``library`` (log library size); with
            ``latent_distribution="ln"`` also ``untran_z``, the normal draws ``z`` is the
            softmax of.
        """
        self._prepare_hyper(x.shape[0])
        x_ = torch.log1p(x) if self.log_variational else x
        if cont_covs is not None and self.encode_covariates:
            x_ = torch.cat((x_, cont_covs), dim=-1)
        cats = ()
        if self.encode_covariates:
            x_ = self._with_batch_rep(x_, batch_index)
            cat_codes = torch.split(cat_covs, 1, dim=1) if cat_covs is not None else ()
            cats = (*self._batch_codes(batch_index), *cat_codes)
        shared = x_.dim() == x.dim()  # per-member batch embeddings give x_ a member axis
        qz, untran_z = self.z_encoder(x_, *cats, shared_input=shared, transform=False)
        ql = None
        if self.use_observed_lib_size:
            library = torch.log(x.sum(1)).unsqueeze(1)
        else:
            ql, library = self.l_encoder(x_, *cats, shared_input=shared)
        if n_samples > 1:
            untran_z = qz.sample((n_samples,))
            if self.use_observed_lib_size:
                library = library.unsqueeze(0).expand(n_samples, *library.shape)
            else:
                library = ql.sample((n_samples,))
        z = self.z_encoder.z_transformation(untran_z)
        out = {"z": z, "qz": qz, "ql": ql, "library": library}
        if self.latent_distribution == "ln":
            # importance weights need the draw of q itself; softmax is not invertible
            out["untran_z"] = untran_z
        return out

    # ------------------------------------------------------------ generative
    def _dispersion(self, batch_index, y):
        r = self.px_r
        k = self.active_member
        if k is not None:
            r = r[0 if r.shape[0] == 1 else k]  # (G[, n])
        if self.dispersion == "gene":
            return r if k is not None else r.unsqueeze(-2)  # (G) or (M, 1, G)
        idx = batch_index if self.dispersion == "gene-batch" else y
        n = r.shape[-1]
        onehot = F.one_hot(idx.reshape(-1).long(), n).to(r.dtype)  # (B, n)
        return torch.matmul(r, onehot.T).transpose(-1, -2)  # (B, G) or (M, B, G)

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        transform_batch: int | None = None,
        size_factor: torch.Tensor | None = None,
    ) -> dict:
        """p(x | z, l) and the priors, for every active member.

        Parameters
        ----------
        z
            Latent draws ``([S,] K, B, n_latent)`` (no member axis inside :meth:`member`).
        library
            Log library sizes, as :meth:`inference` returns them.
        batch_index
            Batch codes ``(B, 1)``.
        cont_covs, cat_covs
            Continuous and categorical covariates.
        y
            Label codes ``(B, 1)`` (for ``dispersion="gene-label"``).
        transform_batch
            Decode every cell as if it came from this batch code.
        size_factor
            Log size factors ``(B, 1)``: the library of the likelihood when the model uses
            ``size_factor_key`` (``library`` is then not used by the decoder).

        Returns
        -------
        dict
            ``px`` (scvi-tools' ZINB / NB / Poisson / Normal), ``pl`` (prior of a latent
            library size, else ``None``), ``pz`` and ``theta`` (the dispersion at its own
            shape: the NB inverse dispersion, or the Normal's standard deviation).
        """
        dec_in = z
        if cont_covs is not None:
            dec_in = torch.cat([z, cont_covs.expand(*z.shape[:-1], cont_covs.shape[-1])], dim=-1)
        cats = torch.split(cat_covs, 1, dim=1) if cat_covs is not None else ()
        if transform_batch is not None:
            batch_index = torch.ones_like(batch_index) * transform_batch
        if self.use_size_factor_key:
            if size_factor is None:
                raise ValueError(
                    "The model was set up with size_factor_key, but the minibatch has no size "
                    "factors: register the AnnData with the same setup_anndata arguments."
                )
            library = size_factor
        dec_in = self._with_batch_rep(dec_in, batch_index)
        batch_codes = self._batch_codes(batch_index)
        px_scale, px_rate, px_dropout, px_r = self.decoder(dec_in, library, *batch_codes, *cats)
        theta = torch.exp(px_r if px_r is not None else self._dispersion(batch_index, y))
        if self.gene_likelihood == "zinb":
            px = ZeroInflatedNegativeBinomial(
                mu=px_rate, theta=theta, zi_logits=px_dropout, scale=px_scale
            )
        elif self.gene_likelihood == "nb":
            px = NegativeBinomial(mu=px_rate, theta=theta, scale=px_scale)
        elif self.gene_likelihood == "poisson":
            px = Poisson(rate=px_rate, scale=px_scale)
        else:
            px = NormalLikelihood(px_rate, theta, normal_mu=px_scale)
        pl = None
        if not self.use_observed_lib_size:
            onehot = F.one_hot(batch_index.reshape(-1).long(), self.library_log_means.shape[1])
            means = F.linear(onehot.float(), self.library_log_means)
            variances = F.linear(onehot.float(), self.library_log_vars)
            pl = Normal(means, variances.sqrt())
        pz = Normal(torch.zeros_like(z), torch.ones_like(z))
        return {"px": px, "pl": pl, "pz": pz, "theta": theta}

    # ------------------------------------------------------------------ loss
    def _log_prob_sum(self, generative_outputs, x: torch.Tensor) -> torch.Tensor:
        """``px.log_prob(x).sum(-1)``, through the faster exact sums of ``_likelihood``.

        Uses the dispersion at its own shape (``theta``, e.g. ``(K, 1, G)``): the
        distribution object holds it broadcast to ``(K, B, G)``.
        """
        px = generative_outputs["px"]
        theta = generative_outputs.get("theta", getattr(px, "theta", None))
        if self.gene_likelihood == "zinb":
            return zinb_log_prob_sum(x, px.mu, theta, px.zi_logits)
        if self.gene_likelihood == "nb":
            return nb_log_prob_sum(x, px.mu, theta)
        if self.gene_likelihood == "normal":
            return normal_log_prob_sum(x, px.loc, theta)
        return poisson_log_prob_sum(x, px.rate)

    def elbo_terms(self, tensors, inference_outputs, generative_outputs):
        """Per-cell reconstruction loss and KL terms, shaped ``(K, B)`` (``(B,)`` in one member).

        Parameters
        ----------
        tensors
            The minibatch.
        inference_outputs, generative_outputs
            :meth:`inference` and :meth:`generative` on it.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        rec = -self._log_prob_sum(generative_outputs, x)
        kl_z = kl_divergence(inference_outputs["qz"], generative_outputs["pz"]).sum(-1)
        if self.use_observed_lib_size:
            kl_l = torch.zeros_like(kl_z)
        else:
            kl_l = kl_divergence(inference_outputs["ql"], generative_outputs["pl"]).sum(-1)
        return rec, kl_z, kl_l

    def loss(
        self, tensors, inference_outputs, generative_outputs, kl_weight: float = 1.0
    ) -> LossOutput:
        """Each member's mean negative ELBO, summed (deep) or averaged (shared weights).

        The reduction is :meth:`reduce_members`'. The logged per-cell metrics are member
        averages. Hyper-BatchEnsemble in training mode weighs each cell's KL by its sampled
        ``beta`` (times the warm-up ``kl_weight``) and adds the tuned L2 penalty; in
        evaluation mode the loss is the plain ELBO, as for the other kinds.

        Parameters
        ----------
        tensors
            The minibatch.
        inference_outputs, generative_outputs
            :meth:`inference` and :meth:`generative` on it.
        kl_weight
            The KL warm-up weight (scvi-tools' training plan sets it).
        """
        rec, kl_z, kl_l = self.elbo_terms(tensors, inference_outputs, generative_outputs)
        beta = self._hyper_value("kl_weight") if self.training else None
        per_cell = rec + kl_weight * (kl_z if beta is None else beta * kl_z) + kl_l
        if self.active_member is None:
            loss = self.reduce_members(per_cell.mean(-1))
            if self.training:
                loss = loss + self.hyper_l2()
            rec, kl_z, kl_l = rec.mean(0), kl_z.mean(0), kl_l.mean(0)
        else:
            loss = per_cell.mean()
        return LossOutput(
            loss=loss,
            reconstruction_loss=rec,
            kl_local={"kl_divergence_l": kl_l, "kl_divergence_z": kl_z},
        )
