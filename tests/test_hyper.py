"""Hyper-BatchEnsemble pieces against float64 references: loops, closed forms, Monte Carlo."""

import math

import pytest
import torch
import torch.nn.functional as F

from ensemblevi.nn import (
    BatchEnsembleConv2d,
    BatchEnsembleLinear,
    EnsembleConv2d,
    HyperBatchEnsembleConv2d,
    HyperBatchEnsembleLinear,
)
from ensemblevi.nn._base import set_active_member
from ensemblevi.nn._batch import BatchEnsembleConvTranspose2d
from ensemblevi.nn._deep import EnsembleConvTranspose2d
from ensemblevi.nn._hyperbatch import (
    HyperBatchEnsembleConvTranspose2d,
    Hyperparameter,
    LogUniformHyperparameters,
    hyper_l2_penalty,
    set_hyperparameters,
)

K, B, J = 3, 5, 2


def _hypers(**kw):
    specs = [Hyperparameter("dropout", 1e-3, 0.9), Hyperparameter("kl_weight", 0.1, 10.0, init=1)]
    return LogUniformHyperparameters(K, specs, **kw).double()


def test_log_uniform_mean_entropy_closed_form_and_monte_carlo():
    torch.manual_seed(0)
    h = _hypers()
    with torch.no_grad():  # random, wider intervals than the init
        h.log_low.copy_(torch.log(torch.rand(K, J, dtype=torch.float64) * 0.05 + 0.1))
        h.log_high.copy_(h.log_low + torch.rand(K, J, dtype=torch.float64) * 2 + 0.1)
    a, b = h.bounds()
    # closed forms, written from the density 1 / (x (log b - log a)) on [a, b]
    closed_mean = (b - a) / (torch.log(b) - torch.log(a))
    closed_entropy = torch.log(a * b) / 2 + torch.log(torch.log(b) - torch.log(a))
    torch.testing.assert_close(h.mean(), closed_mean)
    torch.testing.assert_close(h.entropy(), closed_entropy)
    draws = h.sample(400_000).detach()  # (K, n, J)
    assert ((draws >= a.unsqueeze(1)) & (draws <= b.unsqueeze(1))).all()
    torch.testing.assert_close(draws.mean(1), h.mean().detach(), rtol=5e-3, atol=0)
    log_density = -torch.log(draws) - torch.log(torch.log(b) - torch.log(a)).unsqueeze(1)
    torch.testing.assert_close(-log_density.mean(1), h.entropy().detach(), rtol=0, atol=5e-3)


def test_log_uniform_sampling_is_reparameterised_and_clip_keeps_gap_and_range():
    torch.manual_seed(1)
    h = _hypers(gap=0.05)
    h.sample(7).sum().backward()
    assert h.log_low.grad.abs().min() > 0 and h.log_high.grad.abs().min() > 0
    with torch.no_grad():
        h.log_low.copy_(torch.tensor([[-20.0, 0.3], [0.0, 5.0], [-1.0, -1.0]]))
        h.log_high.copy_(torch.tensor([[20.0, 0.2], [-1.0, 9.0], [-1.0, -1.0]]))
    h.clip_()
    lo, hi = h.range_low, h.range_high
    assert (h.log_low >= lo - 1e-12).all() and (h.log_high <= hi + 1e-12).all()
    assert (h.log_high - h.log_low >= 0.05 - 1e-12).all()
    norm = h.normalise(h.sample(100))
    assert norm.min() >= -1e-9 and norm.max() <= 1 + 1e-9


def test_log_uniform_init_around_centre_and_clear_errors():
    torch.manual_seed(2)
    h = LogUniformHyperparameters(K, [Hyperparameter("kl_weight", 0.1, 10.0, init=1.0)], init_std=0)
    a, b = h.bounds()
    torch.testing.assert_close(a, torch.full((K, 1), math.exp(-0.2)))
    torch.testing.assert_close(b, torch.full((K, 1), math.exp(0.2)))
    default = Hyperparameter("l2", 0.1, 100.0)
    assert default.centre == pytest.approx(99.9 / math.log(1000))
    with pytest.raises(ValueError, match="0 < low < high"):
        Hyperparameter("x", 1.0, 0.5)
    with pytest.raises(ValueError, match="outside"):
        Hyperparameter("x", 0.1, 1.0, init=2.0)
    with pytest.raises(ValueError, match="unique"):
        LogUniformHyperparameters(K, [default, default])
    with pytest.raises(KeyError, match="tuned"):
        h.index("dropout")


def _random_embedding(layer, std=0.5):
    with torch.no_grad():
        layer.embedding.weight.normal_(0, std)


@pytest.mark.parametrize("tied", [False, True])
def test_hbe_linear_matches_slow_loop_float64(tied):
    torch.manual_seed(3)
    layer = HyperBatchEnsembleLinear(K, 4, 6, n_hyper=J, tied=tied).double()
    w_hyper = layer.weight if tied else layer.weight_hyper
    _random_embedding(layer)
    x = torch.randn(K, B, 4, dtype=torch.float64)
    hyper = torch.rand(K, B, J, dtype=torch.float64)
    set_hyperparameters(layer, hyper)
    out = layer(x)
    E = layer.embedding.weight  # (2 d_out, J)
    ref = torch.empty(K, B, 6, dtype=torch.float64)
    for k in range(K):
        for i in range(B):
            e = E @ hyper[k, i]
            e1, e2 = e[:6], e[6:]
            xi = layer.r[k] * x[k, i]
            ref[k, i] = (
                layer.s[k] * (layer.weight.T @ xi)
                + e1 * layer.s[k] * (w_hyper.T @ xi)
                + layer.bias[k]
                + e2 * layer.bias_hyper[k]
            )
    torch.testing.assert_close(out, ref)
    # flattened member-major rows, shared input, one member alone, per-member hyper (K, 1, J)
    torch.testing.assert_close(layer(x.reshape(K * B, 4)), ref.reshape(K * B, 6))
    shared = torch.randn(B, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(shared, shared_input=True), layer(shared.expand(K, B, 4)))
    set_active_member(layer, 1)
    torch.testing.assert_close(layer(x[1]), ref[1])
    set_active_member(layer, None)
    mean_hyper = torch.rand(K, 1, J, dtype=torch.float64)
    set_hyperparameters(layer, mean_hyper)
    set_hyperparameters(layer, mean_hyper.expand(K, B, J))
    full = layer(x)
    set_hyperparameters(layer, mean_hyper)
    torch.testing.assert_close(layer(x), full)


def test_hbe_linear_with_zero_embedding_is_the_be_layer():
    torch.manual_seed(4)
    hbe = HyperBatchEnsembleLinear(K, 4, 6, n_hyper=J).double()
    be = BatchEnsembleLinear(K, 4, 6).double()
    with torch.no_grad():
        hbe.embedding.weight.zero_()
        for name in ("weight", "r", "s", "bias"):
            getattr(be, name).copy_(getattr(hbe, name))
    set_hyperparameters(hbe, torch.rand(K, B, J, dtype=torch.float64))
    x = torch.randn(K, B, 4, dtype=torch.float64)
    torch.testing.assert_close(hbe(x), be(x))
    # the default init is near zero: an untrained HBE layer is nearly BE
    fresh = HyperBatchEnsembleLinear(K, 4, 6, n_hyper=J)
    assert fresh.embedding.weight.abs().max() < 1e-3


def test_hbe_needs_hyperparameters_and_lists_fast_weights():
    layer = HyperBatchEnsembleLinear(K, 4, 6, n_hyper=J)
    with pytest.raises(RuntimeError, match="set_hyperparameters"):
        layer(torch.randn(K, B, 4))
    fast = {id(p) for p in layer.fast_parameters()}
    assert fast == {id(layer.r), id(layer.s), id(layer.bias), id(layer.bias_hyper)}
    assert id(layer.embedding.weight) not in fast and id(layer.weight_hyper) not in fast


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("per_member", [False, True])
def test_hyper_l2_penalty_matches_explicit_matrices(per_member, tied):
    torch.manual_seed(5)
    layer = HyperBatchEnsembleLinear(K, 4, 6, n_hyper=J, tied=tied).double()
    w_hyper = layer.weight if tied else layer.weight_hyper
    _random_embedding(layer)
    hyper = torch.rand(K, 1 if per_member else B, J, dtype=torch.float64)
    strength = torch.rand(K, B, dtype=torch.float64) * 10
    set_hyperparameters(layer, hyper)
    got = hyper_l2_penalty(layer, strength)
    E = layer.embedding.weight
    terms = []
    for k in range(K):
        for i in range(B):
            e1 = (E @ hyper[k, 0 if per_member else i])[:6]
            w = layer.weight + w_hyper @ torch.diag(e1)
            terms.append(strength[k, i] * w.square().sum())
    torch.testing.assert_close(got, torch.stack(terms).mean())


def _conv_ref(x, w, b, transpose, stride, padding, output_padding):
    if transpose:
        return F.conv_transpose2d(x, w, b, stride, padding, output_padding)
    return F.conv2d(x, w, b, stride, padding)


CONV = [(False, 2, 1, 0), (True, 2, 1, 1)]  # transpose, stride, padding, output_padding


@pytest.mark.parametrize("transpose,stride,padding,out_pad", CONV)
def test_deep_and_be_convs_match_per_member_loops(transpose, stride, padding, out_pad):
    torch.manual_seed(6)
    x = torch.randn(K * B, 3, 7, 7, dtype=torch.float64)
    kw = {"stride": stride, "padding": padding, "output_padding": out_pad}
    deep = (EnsembleConvTranspose2d if transpose else EnsembleConv2d)(K, 3, 4, 3, **kw).double()
    be = (BatchEnsembleConvTranspose2d if transpose else BatchEnsembleConv2d)(K, 3, 4, 3, **kw)
    be = be.double()
    with torch.no_grad():
        be.bias.normal_()
    got_deep, got_be = deep(x), be(x)
    for k in range(K):
        xk = x[k * B : (k + 1) * B]
        ref = _conv_ref(xk, deep.weight[k], deep.bias[k], transpose, stride, padding, out_pad)
        torch.testing.assert_close(got_deep[k * B : (k + 1) * B], ref)
        ref = (
            _conv_ref(
                xk * be.r[k][:, None, None], be.weight, None, transpose, stride, padding, out_pad
            )
            * be.s[k][:, None, None]
            + be.bias[k][:, None, None]
        )
        torch.testing.assert_close(got_be[k * B : (k + 1) * B], ref)
        for layer, got in ((deep, got_deep), (be, got_be)):
            set_active_member(layer, k)
            torch.testing.assert_close(layer(xk), got[k * B : (k + 1) * B])
            set_active_member(layer, None)
    shared = x[:B]
    torch.testing.assert_close(deep(shared, shared_input=True), deep(shared.repeat(K, 1, 1, 1)))
    with pytest.raises(ValueError, match="multiple"):
        deep(x[:-1])


@pytest.mark.parametrize("transpose,stride,padding,out_pad", CONV)
def test_hbe_conv_matches_loop_and_reduces_to_be(transpose, stride, padding, out_pad):
    torch.manual_seed(7)
    kw = {"stride": stride, "padding": padding, "output_padding": out_pad}
    cls = HyperBatchEnsembleConvTranspose2d if transpose else HyperBatchEnsembleConv2d
    layer = cls(K, 3, 4, 3, n_hyper=J, **kw).double()
    _random_embedding(layer)
    x = torch.randn(K * B, 3, 6, 6, dtype=torch.float64)
    hyper = torch.rand(K, B, J, dtype=torch.float64)
    set_hyperparameters(layer, hyper)
    got = layer(x)
    E = layer.embedding.weight
    for k in range(K):
        for i in range(B):
            e = E @ hyper[k, i]
            e1, e2 = e[:4, None, None], e[4:, None, None]
            xi = x[k * B + i : k * B + i + 1] * layer.r[k][:, None, None]
            main = _conv_ref(xi, layer.weight, None, transpose, stride, padding, out_pad)[0]
            hyp = _conv_ref(xi, layer.weight_hyper, None, transpose, stride, padding, out_pad)[0]
            s = layer.s[k][:, None, None]
            ref = s * main + e1 * s * hyp + layer.bias[k][:, None, None]
            ref = ref + e2 * layer.bias_hyper[k][:, None, None]
            torch.testing.assert_close(got[k * B + i], ref)
    set_active_member(layer, 2)
    torch.testing.assert_close(layer(x[2 * B : 3 * B]), got[2 * B : 3 * B])
    set_active_member(layer, None)
    # L2 penalty over output channels against explicit kernels
    strength = torch.rand(K, B, dtype=torch.float64)
    o = 1 if transpose else 0
    terms = []
    for k in range(K):
        for i in range(B):
            e1 = (E @ hyper[k, i])[:4]
            shape = [1, 1, 1, 1]
            shape[o] = 4
            w = layer.weight + layer.weight_hyper * e1.reshape(shape)
            terms.append(strength[k, i] * w.square().sum())
    torch.testing.assert_close(hyper_l2_penalty(layer, strength), torch.stack(terms).mean())
    # zero embedding: the BE convolution
    be = (BatchEnsembleConvTranspose2d if transpose else BatchEnsembleConv2d)(K, 3, 4, 3, **kw)
    be = be.double()
    with torch.no_grad():
        layer.embedding.weight.zero_()
        for name in ("weight", "r", "s", "bias"):
            getattr(be, name).copy_(getattr(layer, name))
    torch.testing.assert_close(layer(x), be(x))
