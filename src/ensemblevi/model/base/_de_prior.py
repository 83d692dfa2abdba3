"""The empirical-Bayes prior of the counts estimand: a scale mixture of normals centred at zero,
fitted to all genes' LFC estimates (ash's unimodal prior), and the posterior draws it gives.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

#: prior standard deviations (log2) of the scale mixture; 0 is the point mass at no change
EM_ITERATIONS = 500
EM_TOLERANCE = 1e-8
GRID = np.array([0.0, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4])


#: ash's ``nullbiased`` penalty: the EM's prior count on the point mass at 0
NULL_WEIGHT = 10.0


def _component_loglik(d: np.ndarray, v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    var = v[:, None] + grid[None, :] ** 2
    return -0.5 * (np.log(2 * np.pi * var) + d[:, None] ** 2 / var)


def fit_scale_mixture(
    r: np.ndarray, v: np.ndarray, grid: np.ndarray = GRID, null_weight: float = NULL_WEIGHT
) -> np.ndarray:
    """Step 4: mixture weights of ``theta ~ sum_k pi_k N(0, grid_k^2)`` given
    ``r ~ N(theta, v)``, by EM on the marginal likelihood with a Dirichlet penalty
    (``null_weight`` on the first component, 1 on the others: ash's ``nullbiased``).

    Parameters
    ----------
    r
        Observed LFCs, one per gene.
    v
        Their sampling variances (> 0).
    grid
        Prior standard deviations (the first is 0).
    null_weight
        Dirichlet parameter of the first component (>= 1).
    """
    ll = _component_loglik(np.asarray(r, float), np.asarray(v, float), grid)
    pi = np.full(grid.size, 1.0 / grid.size)
    extra = np.zeros(grid.size)
    extra[0] = null_weight - 1.0
    prev = -np.inf
    for _ in range(EM_ITERATIONS):
        log_pi = np.log(np.maximum(pi, 1e-300))
        lw = ll + log_pi
        norm = logsumexp(lw, axis=1, keepdims=True)
        # the penalised log-likelihood at the current weights: likelihood and penalty at the
        # same pi (EM raises it every step, so its gain is the stopping rule)
        objective = float(norm.sum() + extra @ log_pi)
        counts = np.exp(lw - norm).sum(axis=0) + extra
        pi = counts / counts.sum()
        if objective - prev < EM_TOLERANCE * max(1.0, abs(objective)):
            break
        prev = objective
    return pi


def mixture_posterior(
    r: np.ndarray, v: np.ndarray, pi: np.ndarray, grid: np.ndarray = GRID
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per gene the posterior of ``theta``: component weights, means and sds, ``(G, K)``.

    Parameters
    ----------
    r, v
        Observed LFCs and their sampling variances.
    pi
        Prior weights on ``grid``.
    grid
        Prior standard deviations.
    """
    r, v = np.asarray(r, float), np.asarray(v, float)
    lw = _component_loglik(r, v, grid) + np.log(np.maximum(pi, 1e-300))
    w = np.exp(lw - logsumexp(lw, axis=1, keepdims=True))
    s2 = grid[None, :] ** 2
    shrink = s2 / (s2 + v[:, None])
    return w, shrink * r[:, None], np.sqrt(shrink * v[:, None])


def posterior_draws(
    w: np.ndarray, mu: np.ndarray, sd: np.ndarray, n_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n_draws, G)`` draws of the mixture posteriors of :func:`mixture_posterior`.

    Parameters
    ----------
    w, mu, sd
        ``(G, K)`` component weights, means and standard deviations.
    n_draws
        Draws per gene.
    rng
        Random generator.
    """
    g = np.arange(w.shape[0])
    cum = np.cumsum(w, axis=1)
    comp = (rng.random((n_draws, w.shape[0]))[..., None] > cum[None]).sum(-1)
    comp = np.minimum(comp, w.shape[1] - 1)
    return mu[g, comp] + sd[g, comp] * rng.standard_normal((n_draws, w.shape[0]))
