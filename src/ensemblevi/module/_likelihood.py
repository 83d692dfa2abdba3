"""Per-cell count log-likelihoods for the training loss, with fewer transcendental calls.

Measured reason for writing these by hand (``benchmarks/bench_ensemble_speed.py``): in a
K-member training step on a 2-core CPU, scvi-tools' ``log_zinb_positive`` spent over a
third of the step in ``lgamma``/``digamma`` on the full ``(K, B, G)`` tensor, computing
``lgamma(theta)`` and ``lgamma(x + 1)`` per element although they depend on the gene
(or the cell) only. The functions here return exactly the same values summed over genes
(tested against scvi-tools in float64) and compute those two terms once:

* ``sum_g lgamma(x + 1)`` depends on the data only: once per minibatch, ``(B,)``;
* ``sum_g [lgamma(x + theta) - lgamma(theta)]`` is exactly 0 on zero counts, so with
  gene-wise dispersion it is evaluated on the non-zero counts only.

The outputs used by callers (the distributions in ``generative``) remain scvi-tools'
``ZeroInflatedNegativeBinomial`` / ``NegativeBinomial`` / ``Poisson``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8  # as scvi-tools' log_nb_positive / log_zinb_positive


def _lgamma_ratio_sum(x: torch.Tensor, theta: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``sum_g [lgamma(x + theta) - lgamma(theta)]`` per cell, shaped ``shape[:-1]``.

    Zero counts contribute exactly 0, so with a per-gene theta (``(..., 1, G)``) only the
    non-zero counts are evaluated: ``lgamma`` and its ``digamma`` gradient run on the
    non-zeros, and the ``lgamma(theta)`` part is a (cells x genes) @ (genes) product.
    Any other theta shape takes the dense path.
    """
    if x.dim() == 2 and theta.dim() >= 2 and theta.shape[-2] == 1:
        rows, cols = torch.nonzero(x, as_tuple=True)
        th = theta[..., 0, :]  # (..., G)
        vals = torch.lgamma(x[rows, cols] + th.index_select(-1, cols))  # (..., nnz)
        acc = vals.new_zeros(*vals.shape[:-1], x.shape[0]).index_add_(vals.dim() - 1, rows, vals)
        nonzero = (x > 0).to(th.dtype)  # (B, G)
        out = acc - torch.matmul(torch.lgamma(th).unsqueeze(-2), nonzero.T).squeeze(-2)
        return out.expand(shape[:-1])
    return (torch.lgamma(x + theta) - torch.lgamma(theta)).sum(-1).expand(shape[:-1])


def nb_log_prob_sum(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sum over genes of the negative-binomial log-pmf (scvi-tools' parameterisation).

    ``x`` is ``(B, G)``; ``mu`` ``(..., B, G)``; ``theta`` broadcastable to ``mu`` (e.g.
    ``(K, 1, G)``). Returns ``(..., B)``.
    """
    log_theta_mu = torch.log(theta + mu + EPS)
    dense = theta * (torch.log(theta + EPS) - log_theta_mu) + x * (
        torch.log(mu + EPS) - log_theta_mu
    )
    shape = torch.broadcast_shapes(mu.shape, x.shape)
    return dense.sum(-1) + _lgamma_ratio_sum(x, theta, shape) - torch.lgamma(x + 1).sum(-1)


def zinb_log_prob_sum(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor
) -> torch.Tensor:
    """Sum over genes of the zero-inflated negative-binomial log-pmf (scvi-tools' form).

    Same shapes as :func:`nb_log_prob_sum`; ``zi_logits`` like ``mu``. Returns ``(..., B)``.
    """
    softplus_pi = F.softplus(-zi_logits)
    log_theta_mu = torch.log(theta + mu + EPS)
    pi_theta_log = -zi_logits + theta * (torch.log(theta + EPS) - log_theta_mu)
    is_zero = x < EPS
    # zero counts: log(pi + (1 - pi) NB(0)); non-zero: log(1 - pi) + log NB(x)
    dense = (
        torch.where(is_zero, F.softplus(pi_theta_log), pi_theta_log)
        - softplus_pi
        + x * (torch.log(mu + EPS) - log_theta_mu)
    )
    shape = torch.broadcast_shapes(mu.shape, x.shape)
    return dense.sum(-1) + _lgamma_ratio_sum(x, theta, shape) - torch.lgamma(x + 1).sum(-1)


def poisson_log_prob_sum(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Sum over genes of the Poisson log-pmf; ``lgamma(x + 1)`` once per minibatch."""
    return (torch.xlogy(x, rate) - rate).sum(-1) - torch.lgamma(x + 1).sum(-1)
