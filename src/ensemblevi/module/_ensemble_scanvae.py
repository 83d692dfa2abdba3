"""EnsembleSCANVAE: scANVI's generative model and classifier with K members in one pass."""

from __future__ import annotations

from typing import Any

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch import nn
from torch.distributions import Categorical, Normal, kl_divergence

from ensemblevi.nn._base import LayerSpec
from ensemblevi.nn._blocks import EnsembleEncoder, EnsembleFCLayers, make_linear

from ._ensemble_vae import EnsembleVAE


class EnsembleSCANVAE(EnsembleVAE):
    """The scANVI model (Xu et al. 2021) as an ensemble of K members.

    scVI's generative model (:class:`~ensemblevi.module.EnsembleVAE`) with scANVI's
    hierarchy on its latent ``z1``: ``y ~ Cat(pi)``, ``z2 ~ N(0, I)``,
    ``z1 | z2, y ~ N(mu(z2, y), sigma(z2, y))``, inferred by ``q(y | z1)`` (the classifier)
    and ``q(z2 | z1, y)``. Every cell's ELBO marginalises ``y`` under the classifier, and
    labelled cells add the classifier's cross-entropy, weighted by ``classification_ratio``,
    as ``scvi.module.SCANVAE`` does in scvi-tools 1.4. Each member has its own classifier,
    ``q(z2 | z1, y)`` and ``p(z1 | z2, y)``, built from the same ensemble layers as its
    encoder and decoder, so one forward pass computes all K members; the ensemble's label
    probabilities are the mixture ``(1/K) sum_k p_k(y | x)``.

    Shapes are those of :class:`~ensemblevi.module.EnsembleVAE`: :meth:`classify` returns
    logits ``(K, B, n_labels)``, and ``(B, n_labels)`` inside :meth:`member`.

    Parameters
    ----------
    n_input
        Number of genes.
    n_labels
        Number of cell types (the unlabelled category not counted).
    n_hidden, n_latent, n_layers, dropout_rate
        As in ``scvi.module.SCANVAE``.
    y_prior
        Prior of the labels ``(1, n_labels)`` (``None``: uniform).
    linear_classifier
        The classifier is one linear layer (else an MLP of ``n_layers`` hidden layers).
    classifier_parameters
        ``n_layers``, ``n_hidden``, ``dropout_rate`` of the classifier (as in
        ``scvi.module.Classifier``; ``logits`` must stay ``True``).
    use_batch_norm, use_layer_norm
        As in ``scvi.module.SCANVAE`` (the classifier and ``q(z2 | z1, y)`` follow the
        encoder's setting, ``p(z1 | z2, y)`` the decoder's).
    **vae_kwargs
        Passed to :class:`~ensemblevi.module.EnsembleVAE` (``n_members``, ``ensemble``,
        covariates, likelihood, ...). ``dispersion="gene-label"`` is refused: unlabelled
        cells have no label to pick a dispersion with.

    Notes
    -----
    ``hyperbatch`` members tune the VAE's hyperparameters (dropout, KL weight, L2) as in
    EnsembleVAE; the classifier and the ``z2`` layers are BatchEnsemble layers (same
    members and fast weights, no hyperparameter conditioning), because they see every cell
    once per label and the per-cell hyperparameter draws are for the cells themselves.
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        y_prior: torch.Tensor | None = None,
        linear_classifier: bool = False,
        classifier_parameters: dict | None = None,
        use_batch_norm: str = "both",
        use_layer_norm: str = "none",
        **vae_kwargs: Any,
    ):
        if vae_kwargs.get("dispersion") == "gene-label":
            raise ValueError(
                "dispersion='gene-label' needs every cell's label, and scANVI's unlabelled cells "
                "have none: use 'gene' or 'gene-batch'."
            )
        if n_labels < 2:
            raise ValueError(
                f"scANVI needs at least 2 cell types among the labelled cells, got {n_labels}."
            )
        super().__init__(
            n_input,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            n_labels=n_labels,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            **vae_kwargs,
        )
        params = {
            "n_layers": 0 if linear_classifier else n_layers,
            "n_hidden": 0 if linear_classifier else n_hidden,
            "dropout_rate": dropout_rate,
            **(classifier_parameters or {}),
        }
        if not params.pop("logits", True):
            raise ValueError("classifier_parameters: logits=False is not supported.")
        bn_enc = use_batch_norm in ("encoder", "both")
        bn_dec = use_batch_norm in ("decoder", "both")
        ln_enc = use_layer_norm in ("encoder", "both")
        ln_dec = use_layer_norm in ("decoder", "both")
        spec = LayerSpec(
            ensemble="batch" if self.ensemble == "hyperbatch" else self.ensemble,
            n_members=self.n_members,
            random_sign_init=vae_kwargs.get("random_sign_init", -0.5),
        )
        hidden = params["n_hidden"] if params["n_hidden"] > 0 and params["n_layers"] > 0 else 0
        self.classifier_layers = None
        if hidden:
            self.classifier_layers = EnsembleFCLayers(
                spec=spec,
                n_in=n_latent,
                n_out=hidden,
                n_layers=params["n_layers"],
                n_hidden=hidden,
                dropout_rate=params["dropout_rate"],
                use_batch_norm=bn_enc,
                use_layer_norm=ln_enc,
            )
        self.classifier_head = make_linear(spec=spec, d_in=hidden or n_latent, d_out=n_labels)
        self.encoder_z2_z1 = EnsembleEncoder(
            spec=spec,
            n_input=n_latent,
            n_output=n_latent,
            n_cat_list=[n_labels],
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=bn_enc,
            use_layer_norm=ln_enc,
            cat_role="labels",
        )
        self.decoder_z1_z2 = EnsembleFCLayers(
            spec=spec,
            n_in=n_latent,
            n_out=n_hidden,
            n_cat_list=[n_labels],
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=0.0,
            use_batch_norm=bn_dec,
            use_layer_norm=ln_dec,
            cat_role="labels",
        )
        # mean and log-variance heads of p(z1 | z2, y), fused as the encoder's
        self.decoder_z1_z2_heads = make_linear(spec=spec, d_in=n_hidden, d_out=2 * n_latent)
        prior = y_prior if y_prior is not None else torch.full((1, n_labels), 1.0 / n_labels)
        self.y_prior = nn.Parameter(
            torch.as_tensor(prior, dtype=torch.float32), requires_grad=False
        )

    # ------------------------------------------------------------ classifier
    def classifier(self, z: torch.Tensor) -> torch.Tensor:
        """Each active member's label logits from its latent ``z``.

        Parameters
        ----------
        z
            ``(..., K, B, n_latent)`` (``(..., B, n_latent)`` inside :meth:`member`).
        """
        h = self.classifier_layers(z) if self.classifier_layers is not None else z
        return self.classifier_head(h)

    @auto_move_data
    def classify(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        use_posterior_mean: bool = True,
    ) -> torch.Tensor:
        """Encoder and classifier: label logits ``(K, B, n_labels)``, as scvi-tools'.

        Parameters
        ----------
        x
            Counts ``(B, G)``.
        batch_index
            Batch codes ``(B, 1)``.
        cont_covs, cat_covs
            Covariates (used by the encoder with ``encode_covariates``).
        use_posterior_mean
            Classify the posterior mean of ``q(z1 | x)`` (else one draw), as scvi-tools.
        """
        if batch_index is None:
            batch_index = torch.zeros(x.shape[0], 1, device=x.device, dtype=torch.long)
        inf = self.inference(x, batch_index, cont_covs=cont_covs, cat_covs=cat_covs)
        z = inf["qz"].loc if use_posterior_mean else inf["z"]
        return self.classifier(z)

    def classification_loss(
        self, labelled: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each member's mean cross-entropy on labelled cells.

        Parameters
        ----------
        labelled
            A minibatch of labelled cells.

        Returns
        -------
        tuple
            ``(ce, y, logits)``: cross-entropy per member ``(K,)`` (a scalar inside
            :meth:`member`), the labels ``(B, 1)`` and the logits.
        """
        inputs = self._get_inference_input(labelled)
        y = labelled[REGISTRY_KEYS.LABELS_KEY]
        logits = self.classify(
            inputs["x"],
            inputs["batch_index"],
            cont_covs=inputs["cont_covs"],
            cat_covs=inputs["cat_covs"],
        )
        log_p = torch.log_softmax(logits, dim=-1)
        index = y.reshape(-1).long()
        nll = -log_p.gather(-1, index.expand(*log_p.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        return nll.mean(-1), y, logits

    # ------------------------------------------------------------------ loss
    def _z1_hierarchy(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``-log p(z1 | z2, y)`` and ``KL(q(z2 | z1, y) || p(z2))`` for every label.

        Returns two tensors ``(..., B, n_labels)``.
        """
        n, b = self.n_labels, z1.shape[-2]
        # label-major blocks, as scvi-tools' broadcast_labels
        z1s = torch.cat([z1] * n, dim=-2)
        ys = torch.arange(n, device=z1.device).repeat_interleave(b).unsqueeze(1)
        qz2, z2 = self.encoder_z2_z1(z1s, ys, shared_input=False)
        h = self.decoder_z1_z2(z2, ys)
        pz1_m, pz1_logv = self.decoder_z1_z2_heads(h).split(self.n_latent, dim=-1)
        pz1 = Normal(pz1_m, torch.exp(pz1_logv).sqrt())
        nll_z1 = -pz1.log_prob(z1s).sum(-1)
        kl_z2 = kl_divergence(qz2, Normal(torch.zeros_like(qz2.loc), torch.ones_like(qz2.scale)))
        kl_z2 = kl_z2.sum(-1)

        def per_label(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(*t.shape[:-1], n, b).transpose(-1, -2)

        return per_label(nll_z1), per_label(kl_z2)

    def loss(
        self,
        tensors,
        inference_outputs,
        generative_outputs,
        kl_weight: float = 1.0,
        labelled_tensors: dict[str, torch.Tensor] | None = None,
        classification_ratio: float | None = None,
    ) -> LossOutput:
        """scANVI's loss for every member, reduced over members as EnsembleVAE's.

        Per cell: ``-log p(x | z1) + log q(z1 | x) + E_q(y|z1)[-log p(z1 | z2, y)]`` and,
        weighted by ``kl_weight``, ``E_q(y|z1)[KL(q(z2) || p(z2))] + KL(q(y | z1) || pi)``
        (plus the library KL); labelled cells add ``classification_ratio`` times each
        member's cross-entropy. Hyper-BatchEnsemble in training mode also weighs the KL by
        each cell's ``beta`` and adds the tuned L2.

        Parameters
        ----------
        tensors
            The minibatch of all cells.
        inference_outputs, generative_outputs
            :meth:`inference` and :meth:`generative` on it.
        kl_weight
            The KL warm-up weight.
        labelled_tensors
            A minibatch of labelled cells (``None``: no classification loss).
        classification_ratio
            Weight of the classification loss.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        z1, qz1 = inference_outputs["z"], inference_outputs["qz"]
        rec = -self._log_prob_sum(generative_outputs, x)
        log_q_z1 = qz1.log_prob(z1).sum(-1)
        nll_z1, kl_z2 = self._z1_hierarchy(z1)
        probs = torch.softmax(self.classifier(z1), dim=-1)
        prior = self.y_prior.to(probs.dtype).expand_as(probs)
        kl_y = kl_divergence(Categorical(probs=probs), Categorical(probs=prior))
        rec = rec + log_q_z1 + (nll_z1 * probs).sum(-1)
        kl = (kl_z2 * probs).sum(-1) + kl_y
        beta = self._hyper_value("kl_weight") if self.training else None
        if beta is not None:
            kl = beta * kl
        if self.use_observed_lib_size:
            kl_l = torch.zeros_like(kl)
        else:
            kl_l = kl_divergence(inference_outputs["ql"], generative_outputs["pl"]).sum(-1)
        kl = kl + kl_l
        per_member = (rec + kl_weight * kl).mean(-1)
        extra: dict[str, Any] = {}
        if labelled_tensors is not None:
            ce, y, logits = self.classification_loss(labelled_tensors)
            per_member = per_member + ce * classification_ratio
            extra = {
                "classification_loss": ce.mean(),
                "true_labels": y,
                "logits": self._mixture_logits(logits),
            }
        if self.active_member is None:
            loss = self.reduce_members(per_member)
            if self.training:
                loss = loss + self.hyper_l2()
            rec, kl = rec.mean(0), kl.mean(0)
        else:
            loss = per_member
        return LossOutput(loss=loss, reconstruction_loss=rec, kl_local=kl, **extra)

    def _mixture_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Log of the members' mean label probabilities ``(B, C)`` (the ensemble's)."""
        if self.active_member is not None:
            return logits
        log_p = torch.log_softmax(logits, dim=-1)
        return torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(log_p.shape[0])))

    @torch.inference_mode()
    def member_label_probabilities(
        self, tensors: dict[str, torch.Tensor], use_posterior_mean: bool = True
    ) -> torch.Tensor:
        """Each member's label probabilities ``(K, B, n_labels)`` for a minibatch.

        Parameters
        ----------
        tensors
            A minibatch from an scvi-tools data loader.
        use_posterior_mean
            Classify the posterior mean (else a draw).
        """
        inputs = self._get_inference_input(tensors)
        logits = self.classify(
            inputs["x"],
            inputs["batch_index"],
            cont_covs=inputs["cont_covs"],
            cat_covs=inputs["cat_covs"],
            use_posterior_mean=use_posterior_mean,
        )
        probs = torch.softmax(logits, dim=-1)
        return probs if probs.dim() == 3 else probs.unsqueeze(0)
