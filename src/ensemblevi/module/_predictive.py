"""The all-member prediction of one minibatch, with explicit sample and member axes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.distributions import Normal

from ensemblevi.module._likelihood import (
    nb_log_prob_sum,
    poisson_log_prob_sum,
    zinb_log_prob_sum,
)


class Predictive(NamedTuple):
    """All members' latent draws and likelihood parameters for one minibatch.

    Every tensor has the axes ``(S, M, B, .)``: S latent samples, M members (K, or 1 inside
    :meth:`EnsembleVAE.member`), B cells; dispersions keep size-1 axes where they do not
    vary (``theta`` is ``(1, M, 1, G)`` with gene-wise dispersion).
    """

    z: torch.Tensor  # (S, M, B, n_latent)
    qz: Normal  # q(z | x), (1, M, B, n_latent)
    library: torch.Tensor  # log library size, (S, M, B, 1)
    ql: Normal | None  # q(l | x) with a latent library size, (1, M, B, 1)
    pl: Normal | None  # p(l), (1, 1|M, B, 1)
    scale: torch.Tensor  # normalised expression (fractions), (S, M, B, G)
    rate: torch.Tensor  # mean counts, (S, M, B, G)
    theta: torch.Tensor | None  # NB dispersion (None for Poisson)
    zi_logits: torch.Tensor | None  # zero-inflation logits (ZINB only), (S, M, B, G)

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
            ``zinb``, ``nb`` or ``poisson``.
        """
        if gene_likelihood == "zinb":
            return zinb_log_prob_sum(x, self.rate, self.theta, self.zi_logits)
        if gene_likelihood == "nb":
            return nb_log_prob_sum(x, self.rate, self.theta)
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
