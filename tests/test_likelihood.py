"""The loss's count log-likelihoods against scvi-tools' distributions, in float64."""

import pytest
import torch
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial

from ensemblevi.module._likelihood import (
    nb_log_prob_sum,
    poisson_log_prob_sum,
    zinb_log_prob_sum,
)

K, B, G = 3, 9, 13


def _inputs(theta_shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(B, G, generator=g, dtype=torch.float64) * 4, generator=g)
    x[0] = 0  # an all-zero cell
    x[1, 0] = 250  # a large count
    mu = (torch.rand(2, K, B, G, generator=g, dtype=torch.float64) * 8 + 1e-3).requires_grad_()
    theta = (torch.rand(*theta_shape, generator=g, dtype=torch.float64) * 4 + 0.05).requires_grad_()
    zi = torch.randn(K, B, G, generator=g, dtype=torch.float64).requires_grad_()
    return x, mu, theta, zi


@pytest.mark.parametrize("theta_shape", [(K, 1, G), (K, B, G), (G,)])
@pytest.mark.parametrize("seed", [0, 1])
def test_zinb_and_nb_match_scvi_values_and_gradients(theta_shape, seed):
    x, mu, theta, zi = _inputs(theta_shape, seed)
    cases = [
        (
            ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi).log_prob(x).sum(-1),
            zinb_log_prob_sum(x, mu, theta, zi),
            [mu, theta, zi],
        ),
        (
            NegativeBinomial(mu=mu, theta=theta).log_prob(x).sum(-1),
            nb_log_prob_sum(x, mu, theta),
            [mu, theta],
        ),
    ]
    for ref, ours, params in cases:
        assert ours.shape == (2, K, B)
        torch.testing.assert_close(ours, ref)
        w = torch.randn_like(ref)
        for a, b in zip(
            torch.autograd.grad((ref * w).sum(), params),
            torch.autograd.grad((ours * w).sum(), params),
            strict=True,
        ):
            torch.testing.assert_close(b, a)


def test_poisson_matches_scvi():
    x, mu, _, _ = _inputs((K, 1, G))
    torch.testing.assert_close(poisson_log_prob_sum(x, mu), Poisson(mu).log_prob(x).sum(-1))
