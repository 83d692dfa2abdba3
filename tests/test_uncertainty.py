"""Variance decomposition against a float64 loop and against sampling from scvi-tools."""

import numpy as np
import pytest
import torch
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

from ensemblevi.model.base._uncertainty import (
    UncertaintySummary,
    VarianceParts,
    count_variance_fraction,
    decompose_variance,
)


def _loop_reference(scale, library, theta, zi, L):
    """Slow loop over members and samples, in float64 numpy."""
    s_, k_, b_, g_ = scale.shape
    mean = np.zeros((b_, g_))
    between = np.zeros((b_, g_))
    within = np.zeros((b_, g_))
    noise = np.zeros((b_, g_))
    for b in range(b_):
        for g in range(g_):
            member_means, member_vars = [], []
            for k in range(k_):
                vals = [scale[s, k, b, g] * L for s in range(s_)]
                member_means.append(np.mean(vals))
                member_vars.append(np.var(vals))
                for s in range(s_):
                    r, lib = scale[s, k, b, g], library[s, k, b, 0]
                    th = theta[k, 0, g]
                    pi = 1 / (1 + np.exp(-zi[s, k, b, g]))
                    v_nb = r / lib + r**2 / th
                    noise[b, g] += ((1 - pi) * v_nb + pi * (1 - pi) * r**2) * L**2 / (s_ * k_)
            mean[b, g] = np.mean(member_means)
            between[b, g] = np.var(member_means)
            within[b, g] = np.mean(member_vars)
    return mean, between, within, noise


def test_decomposition_matches_loop_reference():
    rng = np.random.default_rng(0)
    S, K, B, G = 4, 3, 5, 6
    scale = rng.dirichlet(np.ones(G), size=(S, K, B))
    library = rng.uniform(500, 5000, size=(S, K, B, 1))
    theta = rng.uniform(0.2, 5, size=(K, 1, G))
    zi = rng.normal(size=(S, K, B, G))
    inputs = [torch.from_numpy(a) for a in (scale, library, theta, zi)]
    before = [t.clone() for t in inputs]
    parts = decompose_variance(*inputs, library_size=1e4)
    for t, t0 in zip(inputs, before, strict=True):  # computed in place on its own buffers only
        torch.testing.assert_close(t, t0, rtol=0, atol=0)
    for ours, ref in zip(parts, _loop_reference(scale, library, theta, zi, 1e4), strict=True):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)
    # between + within is the variance over all member samples (law of total variance)
    flat = torch.from_numpy(scale * 1e4).reshape(S * K, B, G)
    torch.testing.assert_close(parts.var_between + parts.var_within, flat.var(0, unbiased=False))


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson", "zi-poisson"])
def test_overwriting_decomposition_matches_the_formulas(likelihood):
    # the streamed pass' variant (in place on its throwaway buffers) against the formulas
    # written out in float64, for every likelihood the noise term has
    from ensemblevi.model.base._uncertainty import decompose_members

    rng = np.random.default_rng(1)
    S, K, B, G = 3, 4, 5, 7
    scale = torch.from_numpy(rng.dirichlet(np.ones(G), size=(S, K, B)))
    library = torch.from_numpy(rng.uniform(500, 5000, size=(S, K, B, 1)))
    theta = torch.from_numpy(rng.uniform(0.2, 5, size=(1, K, 1, G)))
    zi = torch.from_numpy(rng.normal(size=(S, K, B, G)))
    th = None if "poisson" in likelihood else theta
    logits = zi if likelihood.startswith("z") else None
    pi = 0 if logits is None else torch.sigmoid(zi)
    noise = scale / library + (0 if th is None else scale**2 / th)
    noise = (1 - pi) * noise + pi * (1 - pi) * scale**2
    L = 1e4
    rho = scale * L
    want_members = rho.mean(0)
    want = VarianceParts(
        want_members.mean(0),
        want_members.var(0, unbiased=False),
        rho.var(0, unbiased=False).mean(0),
        (noise * L**2).mean((0, 1)),
    )
    kept = decompose_variance(scale, library, th, logits, library_size=L)
    parts, members = decompose_members(
        scale.clone(),
        library,
        th,
        None if logits is None else logits.clone(),
        library_size=L,
        overwrite=True,
    )
    torch.testing.assert_close(members, want_members, rtol=1e-12, atol=0)
    for ours, kept_part, ref in zip(parts, kept, want, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(kept_part, ref, rtol=1e-10, atol=0)


def test_count_noise_matches_sampled_variance():
    torch.manual_seed(0)
    mu = torch.tensor([0.5, 3.0, 20.0], dtype=torch.float64)
    theta = torch.tensor([0.7, 2.0, 10.0], dtype=torch.float64)
    zi = torch.tensor([-1.0, 0.3, 1.5], dtype=torch.float64)
    lib = torch.tensor(40.0, dtype=torch.float64)
    scale = mu / lib
    n = 400_000
    for dist, logits in [
        (NegativeBinomial(mu=mu, theta=theta), None),
        (ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi), zi),
    ]:
        draws = dist.sample((n,)) / lib
        analytic = count_variance_fraction(scale, lib, theta, logits)
        np.testing.assert_allclose(draws.var(0).numpy(), analytic.numpy(), rtol=0.03)
    draws = torch.poisson(mu.expand(n, 3)) / lib
    np.testing.assert_allclose(
        draws.var(0).numpy(), count_variance_fraction(scale, lib).numpy(), rtol=0.03
    )


def test_summary_over_shuffled_chunks_matches_numpy():
    rng = np.random.default_rng(1)
    n, G = 23, 7
    parts = [rng.gamma(2.0, 1.0, size=(n, G)) for _ in range(4)]
    parts[0][0, 0] = 0.0  # a zero mean: the CV is clamped, never inf or nan
    groups = rng.integers(0, 3, n)
    summary = UncertaintySummary(n, G, groups, n_groups=4)  # group 3 has no cells
    order = rng.permutation(n)
    for rows in np.array_split(order, 5):  # chunks out of order
        summary.add(rows, VarianceParts(*(torch.from_numpy(p[rows]).float() for p in parts)))
    mean, vb, vw, vn = (p.astype(np.float32).astype(np.float64) for p in parts)
    m = np.maximum(mean, np.finfo(np.float32).tiny)
    cv = np.sqrt(vb) / m
    genes = summary.genes([f"g{j}" for j in range(G)])
    np.testing.assert_allclose(genes["cv_between"], cv.mean(0), rtol=1e-12)
    np.testing.assert_allclose(genes["var_noise"], vn.mean(0), rtol=1e-12)
    np.testing.assert_allclose(genes["frac_between"], vb.sum(0) / (vb + vw).sum(0), rtol=1e-12)
    by_group = summary.genes_by_group(genes.index, ["a", "b", "c", "empty"])
    for k, name in enumerate(["a", "b", "c"]):
        np.testing.assert_allclose(by_group[name], cv[groups == k].mean(0), rtol=1e-12)
    assert (by_group["empty"] == 0).all()
    np.testing.assert_allclose(summary.cell_rms_cv, np.sqrt((vb / m**2).mean(1)), rtol=1e-12)
    cells = summary.cells(range(n))
    np.testing.assert_allclose(cells["cv_between"], cv.mean(1), rtol=1e-12)
    np.testing.assert_allclose(cells["frac_between"], vb.sum(1) / (vb + vw).sum(1), rtol=1e-12)
