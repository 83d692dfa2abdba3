"""Evaluation of an EnsembleVAE: the all-member prediction of one minibatch (explicit
sample and member axes) and what is read from it (ELBO, marginal likelihood, samples)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from scvi.module.base import auto_move_data
from torch.distributions import Normal, kl_divergence

from ensemblevi._constants import logmeanexp
from ensemblevi.module._likelihood import (
    nb_log_prob_sum,
    normal_log_prob_sum,
    poisson_log_prob_sum,
    zinb_log_prob_sum,
)


class Predictive(NamedTuple):
    """All members' latent draws and likelihood parameters for one minibatch.

    Every tensor has the axes ``(S, M, B, .)``: S latent samples, M members (K, or 1 inside
    :meth:`EnsembleVAE.member`), B cells; dispersions keep size-1 axes where they do not
    vary (``theta`` is ``(1, M, 1, G)`` with gene-wise dispersion, ``(S, M, B, G)`` with
    ``gene-cell``). ``library`` is the library of the likelihood: the size factor when the
    model uses one. With ``gene_likelihood="normal"``, ``theta`` and ``zi_logits`` are
    ``None`` and ``std`` holds the Normal's standard deviation (shaped like ``theta``).
    """

    z: torch.Tensor  # (S, M, B, n_latent), what the decoder sees (softmax(u) for "ln")
    qz: Normal  # q(z | x), (1, M, B, n_latent)
    library: torch.Tensor  # log library size, (S, M, B, 1)
    ql: Normal | None  # q(l | x) with a latent library size, (1, M, B, 1)
    pl: Normal | None  # p(l), (1, 1|M, B, 1)
    scale: torch.Tensor  # normalised expression (fractions), (S, M, B, G)
    rate: torch.Tensor  # mean counts, (S, M, B, G)
    theta: torch.Tensor | None  # NB dispersion (None for Poisson)
    zi_logits: torch.Tensor | None  # zero-inflation logits (ZINB only), (S, M, B, G)
    std: torch.Tensor | None = None  # Normal likelihood's standard deviation
    untran_z: torch.Tensor | None = None  # the draws of qz when z = softmax(u) ("ln")

    @property
    def qz_draw(self) -> torch.Tensor:
        """The draws of ``qz`` themselves (``z`` unless the latent is logistic normal)."""
        return self.z if self.untran_z is None else self.untran_z

    def mixture_draw(self):
        """Draw a member uniformly per (sample, cell): samples of the equal-weight mixture.

        Returns a function that takes any ``(S, M|1, B|1, G)`` tensor of this prediction
        and gives the drawn members' values, ``(S, B, G)``.
        """
        n_s, n_m, n_b, _ = self.scale.shape
        pick = torch.randint(n_m, (n_s, 1, n_b, 1), device=self.scale.device)

        def choose(t: torch.Tensor) -> torch.Tensor:
            t = t.expand(n_s, n_m, n_b, -1)
            return t.gather(1, pick.expand(-1, -1, -1, t.shape[-1]))[:, 0]

        return choose

    def log_prob_sum(self, x: torch.Tensor, gene_likelihood: str) -> torch.Tensor:
        """``sum_g log p(x_g | z, l)``: ``(S, M, B)``.

        Parameters
        ----------
        x
            Counts ``(B, G)``.
        gene_likelihood
            ``zinb``, ``nb``, ``poisson`` or ``normal``.
        """
        if gene_likelihood == "zinb":
            return zinb_log_prob_sum(x, self.rate, self.theta, self.zi_logits)
        if gene_likelihood == "nb":
            return nb_log_prob_sum(x, self.rate, self.theta)
        if gene_likelihood == "normal":
            return normal_log_prob_sum(x, self.rate, self.std)
        return poisson_log_prob_sum(x, self.rate)


def to_smbd(t: torch.Tensor, n_samples: int, one_member: bool) -> torch.Tensor:
    """Add the sample and member axes that ``inference``/``generative`` leave out.

    Parameters
    ----------
    t
        An output of ``inference`` or ``generative``.
    n_samples
        Latent samples it was computed with (1: no sample axis yet).
    one_member
        It comes from a single-member pass (no member axis yet).
    """
    if one_member:
        t = t.unsqueeze(-3)
    if n_samples == 1 or t.dim() == 3:
        t = t.unsqueeze(0)
    return t


def first_sample(pred: Predictive) -> Predictive:
    """``pred`` restricted to its first latent sample (views: nothing is copied).

    Parameters
    ----------
    pred
        A prediction with ``S >= 1`` samples.
    """

    def first(t):
        return None if t is None else t[:1]

    return pred._replace(
        z=first(pred.z),
        library=first(pred.library),
        scale=first(pred.scale),
        rate=first(pred.rate),
        theta=first(pred.theta),
        zi_logits=first(pred.zi_logits),
        std=first(pred.std),
        untran_z=first(pred.untran_z),
    )


class PredictiveMixin:
    """EnsembleVAE's evaluation methods, all computed through :meth:`predictive`.

    The host defines ``inference``, ``generative``, their ``_get_*_input`` methods,
    ``active_member``, ``gene_likelihood``, ``dispersion``, ``z_encoder``,
    ``use_observed_lib_size`` and ``use_size_factor_key``.
    """

    @auto_move_data
    def predictive(
        self,
        tensors: dict[str, torch.Tensor],
        n_samples: int = 1,
        transform_batch: int | None = None,
        use_mean: bool = False,
    ) -> Predictive:
        """The one all-member computation path behind every evaluation output.

        Encodes the minibatch, draws ``n_samples`` latent samples per member (or takes the
        posterior means with ``use_mean``) and decodes them, returning everything with
        explicit ``(S, M, B, .)`` axes. Inside :meth:`member` only that member is computed
        (``M = 1``). ELBO, marginal likelihood, posterior predictive samples, stacked
        normalised expression and the uncertainty decomposition all read from here.

        Parameters
        ----------
        tensors
            A minibatch from an scvi-tools data loader.
        n_samples
            Latent samples per member and cell.
        transform_batch
            Decode every cell as if it came from this batch code.
        use_mean
            Decode the posterior means of ``z`` (and of the latent library size) instead of
            samples; ``n_samples`` must then be 1.
        """
        if use_mean and n_samples != 1:
            raise ValueError("use_mean=True decodes the posterior mean: pass n_samples=1.")
        one = self.active_member is not None
        inf = self.inference(**self._get_inference_input(tensors), n_samples=n_samples)
        if use_mean:
            inf["z"] = inf["qz"].loc
            if "untran_z" in inf:
                inf["untran_z"] = inf["qz"].loc
                inf["z"] = self.z_encoder.z_transformation(inf["qz"].loc)
            if inf["ql"] is not None:
                inf["library"] = inf["ql"].loc
        gen = self.generative(
            **self._get_generative_input(tensors, inf), transform_batch=transform_batch
        )
        px = gen["px"]

        def smbd(t):
            return None if t is None else to_smbd(t, n_samples, one)

        def dist(d):
            return None if d is None else Normal(smbd(d.loc), smbd(d.scale), validate_args=False)

        z = smbd(inf["z"])
        untran_z = smbd(inf.get("untran_z"))
        if self.use_observed_lib_size:  # (B, 1) or (S, B, 1): no member axis
            library = inf["library"]
            if self.use_size_factor_key:  # the likelihood's library is the size factor
                library = self._get_generative_input(tensors, inf)["size_factor"]
            library = library.reshape(-1, 1, z.shape[2], 1).expand(*z.shape[:2], -1, -1)
        else:
            library = smbd(inf["library"])
        pl = gen["pl"]
        if pl is not None:  # the prior depends on the batch only: (1, 1, B, 1)
            pl = Normal(pl.loc.reshape(1, 1, -1, 1), pl.scale.reshape(1, 1, -1, 1))
        theta = gen["theta"] if self.gene_likelihood != "poisson" else None
        if theta is not None and self.dispersion == "gene-cell":
            theta = smbd(theta)  # decoded per cell: ([S,] M, B, G)
        elif theta is not None:
            theta = theta.reshape(1, *([1] if one else []), *theta.shape)
            theta = theta.reshape(1, theta.shape[1], -1, theta.shape[-1])
        std = None
        if self.gene_likelihood == "normal":
            theta, std = None, theta
            scale, rate = px.normal_mu, px.loc
        else:
            scale = px.scale
            rate = px.mu if self.gene_likelihood != "poisson" else px.rate
        return Predictive(
            z=z,
            qz=dist(inf["qz"]),
            library=library,
            ql=dist(inf["ql"]),
            pl=pl,
            scale=smbd(scale),
            rate=smbd(rate),
            theta=theta,
            zi_logits=smbd(getattr(px, "zi_logits", None)),
            std=std,
            untran_z=untran_z,
        )

    @torch.inference_mode()
    def member_elbo(self, tensors) -> torch.Tensor:
        """Per-member, per-cell ELBO (beta = 1) from one latent sample: ``(M, B)``.

        Parameters
        ----------
        tensors
            A minibatch.
        """
        return self.elbo_of(self.predictive(tensors), tensors[REGISTRY_KEYS.X_KEY])

    def elbo_of(self, pred: Predictive, x: torch.Tensor) -> torch.Tensor:
        """Per-member, per-cell ELBO (beta = 1) from the first latent sample of ``pred``.

        What :meth:`member_elbo` returns for a one-sample prediction; the streamed
        uncertainty pass reads it from its own first sample instead of a second pass.

        Parameters
        ----------
        pred
            A :meth:`predictive` output (any number of samples: only the first is read).
        x
            The minibatch's counts ``(B, G)``.

        Returns
        -------
        ``(M, B)``.
        """
        first = first_sample(pred)
        elbo = first.log_prob_sum(x, self.gene_likelihood)[0]
        elbo = elbo - kl_divergence(first.qz, Normal(0.0, 1.0)).sum(-1)[0]
        if first.ql is not None:
            elbo = elbo - kl_divergence(first.ql, first.pl).sum(-1)[0]
        return elbo

    @torch.inference_mode()
    @auto_move_data
    def marginal_ll(
        self,
        tensors,
        n_mc_samples: int,
        return_mean: bool = False,
        n_mc_samples_per_pass: int = 1,
    ):
        """Importance-sampled log p(x) per member: ``(K, B)``; ``(B,)`` in one member, as scVI.

        Parameters
        ----------
        tensors
            A minibatch.
        n_mc_samples
            Importance samples per member and cell.
        return_mean
            Return the mean over cells (and members) as a float.
        n_mc_samples_per_pass
            Samples decoded together (memory against speed).
        """
        n_per = max(1, min(n_mc_samples_per_pass, n_mc_samples))
        x = tensors[REGISTRY_KEYS.X_KEY]
        terms, done = [], 0
        while done < n_mc_samples:
            n = min(n_per, n_mc_samples - done)
            pred = self.predictive(tensors, n_samples=n)
            # weights of the draws of q: for a logistic-normal latent the softmax is a
            # deterministic part of the decoder, so u (not z = softmax(u)) is weighed
            log_w = (
                pred.log_prob_sum(x, self.gene_likelihood)
                + Normal(0.0, 1.0).log_prob(pred.qz_draw).sum(-1)
                - pred.qz.log_prob(pred.qz_draw).sum(-1)
            )
            if pred.ql is not None:
                log_w = log_w + pred.pl.log_prob(pred.library).sum(-1)
                log_w = log_w - pred.ql.log_prob(pred.library).sum(-1)
            terms.append(log_w)
            done += n
        ll = logmeanexp(torch.cat(terms, dim=0), dim=0)  # (M, B)
        if self.active_member is not None:
            ll = ll[0]
        return ll.mean().item() if return_mean else ll.cpu()

    @torch.inference_mode()
    def sample(
        self,
        tensors,
        n_samples: int = 1,
        max_poisson_rate: float = 1e8,
        generative_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Posterior predictive counts, with the signature and shapes of ``scvi.module.VAE``.

        ``(B, G)``, or ``(B, G, S)`` with ``n_samples > 1``, on the CPU. Inside
        :meth:`member` these are that member's samples. With all members active they are
        samples of the ensemble's predictive distribution, the equal-weight member mixture:
        each cell's each sample comes from a member drawn uniformly at random.

        Parameters
        ----------
        tensors
            A minibatch.
        n_samples
            Samples per cell.
        max_poisson_rate
            Rates are clipped to this before Poisson sampling.
        generative_kwargs
            ``{"transform_batch": code}`` decodes every cell as from that batch.
        """
        transform_batch = (generative_kwargs or {}).get("transform_batch")
        pred = self.predictive(tensors, n_samples=n_samples, transform_batch=transform_batch)
        choose = pred.mixture_draw()
        rate = choose(pred.rate)
        if self.gene_likelihood == "poisson":
            samples = Poisson(rate.clamp(max=max_poisson_rate)).sample()
        elif self.gene_likelihood == "nb":
            samples = NegativeBinomial(mu=rate, theta=choose(pred.theta)).sample()
        elif self.gene_likelihood == "normal":
            samples = Normal(rate, choose(pred.std)).sample()
        else:
            samples = ZeroInflatedNegativeBinomial(
                mu=rate, theta=choose(pred.theta), zi_logits=choose(pred.zi_logits)
            ).sample()
        samples = samples.movedim(0, -1) if n_samples > 1 else samples[0]
        return samples.cpu()
