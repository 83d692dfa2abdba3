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


@pytest.mark.parametrize("wanted", ["mu", "theta", "zi"])
def test_gradient_of_one_input_only(wanted):
    """Only the input that requires a gradient gets one, equal to scvi-tools' autograd."""
    x, mu, theta, zi = _inputs((K, 1, G))
    params = {"mu": mu, "theta": theta, "zi": zi}
    for name, t in params.items():
        t.requires_grad_(name == wanted)
    ref = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi).log_prob(x).sum(-1)
    ours = zinb_log_prob_sum(x, mu, theta, zi)
    w = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), params[wanted])
    (g_ours,) = torch.autograd.grad((ours * w).sum(), params[wanted])
    torch.testing.assert_close(g_ours, g_ref)


def test_poisson_matches_scvi():
    x, mu, _, _ = _inputs((K, 1, G))
    torch.testing.assert_close(poisson_log_prob_sum(x, mu), Poisson(mu).log_prob(x).sum(-1))


def _scvi_log_prob(x, mu, theta, zi):
    if zi is None:
        return NegativeBinomial(mu=mu, theta=theta).log_prob(x).sum(-1)
    return ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi).log_prob(x).sum(-1)


@pytest.mark.parametrize("zinb", [True, False])
@pytest.mark.parametrize(
    "theta_scale, mu_scale, zi_scale",
    [(1e-4, 1.0, 1.0), (1e5, 1.0, 1.0), (1.0, 1e-5, 1.0), (1.0, 1e4, 1.0), (1.0, 1.0, 40.0)],
)
def test_fused_extremes_match_scvi_autograd(zinb, theta_scale, mu_scale, zi_scale):
    """Tiny and huge dispersion and means, saturated zero-inflation logits, large counts."""
    g = torch.Generator().manual_seed(7)
    x = torch.poisson(torch.rand(B, G, generator=g, dtype=torch.float64) * 3, generator=g)
    x[2, :4] = torch.tensor([1e3, 5e4, 1.0, 0.0], dtype=torch.float64)
    mu = (torch.rand(K, B, G, generator=g, dtype=torch.float64) + 0.1) * mu_scale
    theta = (torch.rand(K, 1, G, generator=g, dtype=torch.float64) + 0.1) * theta_scale
    zi = torch.randn(K, B, G, generator=g, dtype=torch.float64) * zi_scale
    params = [mu.requires_grad_(), theta.requires_grad_()]
    if zinb:
        params.append(zi.requires_grad_())
    else:
        zi = None
    fn = zinb_log_prob_sum if zinb else nb_log_prob_sum
    ours = fn(x, *params)
    assert type(ours.grad_fn).__name__.startswith("_CountLogProbSum")
    ref = _scvi_log_prob(x, mu, theta, zi)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-8)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad((ref * w).sum(), params),
        torch.autograd.grad((ours * w).sum(), params),
        strict=True,
    ):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("theta_shape", [(2, 1, 5), (2, 4, 5)])
def test_fused_gradcheck(theta_shape):
    g = torch.Generator().manual_seed(3)
    x = torch.poisson(torch.rand(4, 5, generator=g, dtype=torch.float64) * 3, generator=g)
    x[0] = 0
    mu = (torch.rand(2, 4, 5, generator=g, dtype=torch.float64) * 5 + 0.2).requires_grad_()
    theta = (torch.rand(*theta_shape, generator=g, dtype=torch.float64) * 3 + 0.2).requires_grad_()
    zi = torch.randn(2, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, t, z: zinb_log_prob_sum(x, m, t, z), (mu, theta, zi))
    assert torch.autograd.gradcheck(lambda m, t: nb_log_prob_sum(x, m, t), (mu, theta))


def test_no_grad_path_gives_the_same_values():
    x, mu, theta, zi = _inputs((K, 1, G))
    fused = zinb_log_prob_sum(x, mu, theta, zi)
    with torch.no_grad():
        plain = zinb_log_prob_sum(x, mu, theta, zi)
    assert plain.grad_fn is None and fused.grad_fn is not None
    torch.testing.assert_close(fused.detach(), plain)


def test_fused_broadcasts_smaller_inputs():
    """``mu`` smaller than ``zi_logits`` (and ``theta``) still gets gradients of its shape."""
    g = torch.Generator().manual_seed(5)
    x = torch.poisson(torch.rand(B, G, generator=g, dtype=torch.float64) * 3, generator=g)
    mu = (torch.rand(B, G, generator=g, dtype=torch.float64) * 5 + 0.1).requires_grad_()
    theta = (torch.rand(K, B, G, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    zi = torch.randn(K, B, G, generator=g, dtype=torch.float64).requires_grad_()
    ours = zinb_log_prob_sum(x, mu, theta, zi)
    ref = _scvi_log_prob(x, mu, theta, zi)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(
        torch.autograd.grad(ref.sum(), [mu, theta, zi]),
        torch.autograd.grad(ours.sum(), [mu, theta, zi]),
        strict=True,
    ):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a)


def test_gamma_differences_tables_match_lgamma_and_digamma():
    """Small integer counts from the recurrence tables, the rest computed: both exact."""
    from ensemblevi.module._likelihood import N_TABLE, _gamma_differences

    g = torch.Generator().manual_seed(11)
    theta = torch.rand(3, 7, generator=g, dtype=torch.float64) * 50 + 1e-3
    xv = torch.tensor([1, 2, N_TABLE, N_TABLE + 1, 3.5, 1e4, 7], dtype=torch.float64)
    cols = torch.tensor([0, 6, 3, 3, 2, 5, 1])
    lg, dg = _gamma_differences(xv, cols, theta)
    th = theta[:, cols]
    torch.testing.assert_close(lg, torch.lgamma(xv + th) - torch.lgamma(th), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(
        dg, torch.digamma(xv + th) - torch.digamma(th), rtol=1e-12, atol=1e-10
    )


@pytest.fixture
def fresh_compile_state(monkeypatch):
    """A process in which the likelihood was never compiled (restored afterwards)."""
    from ensemblevi.module import _likelihood as lik

    monkeypatch.setattr(lik, "_KERNELS", {})
    monkeypatch.setattr(lik, "_LOGGED", set())
    return lik


def _fused_value_and_grads(lik):
    x, mu, theta, zi = _inputs((K, 1, G))
    out = lik.zinb_log_prob_sum(x, mu, theta, zi)
    return out, torch.autograd.grad(out.sum(), (mu, theta, zi))


@pytest.mark.parametrize("where", ["wrap", "call"])
def test_compile_failure_falls_back_to_eager_with_one_log_line(
    fresh_compile_state, monkeypatch, caplog, where
):
    lik = fresh_compile_state
    eager, eager_grads = _fused_value_and_grads(lik)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    def compiles_to_broken(fn, **kwargs):
        return broken

    monkeypatch.setattr(torch, "compile", broken if where == "wrap" else compiles_to_broken)
    with caplog.at_level("WARNING", logger=lik.__name__):
        for _ in range(2):  # each block tries again; the same reason is logged once
            with lik.compiled_likelihood() as run:
                out, grads = _fused_value_and_grads(lik)
            torch.testing.assert_close(out, eager, rtol=0, atol=0)
            for g, e in zip(grads, eager_grads, strict=True):
                torch.testing.assert_close(g, e, rtol=0, atol=0)
            assert "no C++ compiler found" in run.failed and run.compiled_calls == 0
    lines = [r for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(lines) == 1 and "no C++ compiler found" in lines[0].getMessage()
    assert lik._BLOCK.get() is None  # nothing left switched after the blocks


def test_a_failure_stays_in_its_block(fresh_compile_state, monkeypatch):
    """One block's failure leaves the next block compiling (no process-wide switch)."""
    lik = fresh_compile_state
    fail = [True]

    def flaky_compile(fn, **kwargs):  # "compiled" = the eager function, failing on demand
        def run(*args):
            if fail[0]:
                raise RuntimeError("compiler crashed once")
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", flaky_compile)
    with lik.compiled_likelihood() as first:
        _fused_value_and_grads(lik)
    fail[0] = False
    with lik.compiled_likelihood() as second:
        _fused_value_and_grads(lik)
    with lik.compiled_likelihood(False) as off:
        _fused_value_and_grads(lik)
    assert first.failed and first.compiled_calls == 0
    assert second.failed is None and second.compiled_calls == 2  # forward and backward
    assert off.compiled_calls == 0 and off.failed is None


def test_training_compiles_by_default_when_long_enough(fresh_compile_state, monkeypatch):
    """The default path: ``train()`` with no ``compile_likelihood`` compiles a long run."""
    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    lik = fresh_compile_state
    assert lik.should_compile(18_641, 128, None, None)  # heartlike, scvi's 400 epochs
    assert not lik.should_compile(300, 128, 3, None)  # a test-sized run stays eager
    # 3 steps per epoch (270 training cells): the threshold in epochs, exactly
    n_epochs = -(-lik.COMPILE_MIN_STEPS // 3)
    assert lik.should_compile(300, 128, n_epochs, 0.9)
    assert not lik.should_compile(300, 128, n_epochs - 1, 0.9)
    calls = []

    def spy(fn, **kwargs):  # compiled = the eager function, counted (no compile cost)
        def run(*args):
            calls.append(fn.__name__)
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.setattr(lik, "COMPILE_MIN_STEPS", 1)
    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=120, n_genes=20)
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    model = EnsembleSCVI(adata, n_members=2, n_hidden=8, n_latent=2, seed=0)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert "_dense_terms" in calls and "_grad_terms" in calls
    calls.clear()
    model.train(max_epochs=1, enable_progress_bar=False, compile_likelihood=False)
    assert not calls
