"""Ensemble layers against references made of separate torch.nn layers, in float64."""

import pytest
import torch
from torch import nn

from ensemblevi.nn import BatchEnsembleLinear, EnsembleLinear, MemberDropout
from ensemblevi.nn._base import set_active_member, split_members
from ensemblevi.nn._batch import fast_weight_init_
from ensemblevi.nn._norm_dropout import EnsembleBatchNorm, SharedLinear

K, B, D_IN, D_OUT = 3, 5, 7, 4


@pytest.fixture(autouse=True)
def _float64():
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _reference_linears(weights: torch.Tensor, biases: torch.Tensor) -> list[nn.Linear]:
    """K separate nn.Linear holding copies of the given (K, d_in, d_out) weights."""
    refs = []
    for w, b in zip(weights, biases, strict=True):
        lin = nn.Linear(D_IN, D_OUT)
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        refs.append(lin)
    return refs


def _forward_backward_against(layer, refs):
    """Run member-major input through ``layer`` and through the K ``refs``; compare both ways."""
    x = torch.randn(K * B, D_IN, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    grad_out = torch.randn(K * B, D_OUT)
    out = layer(x)
    out_ref = torch.cat([refs[k](x_ref[k * B : (k + 1) * B]) for k in range(K)])
    torch.testing.assert_close(out, out_ref)
    out.backward(grad_out)
    out_ref.backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_ensemble_linear_matches_separate_linears_forward_and_backward():
    layer = EnsembleLinear(K, D_IN, D_OUT)
    refs = _reference_linears(layer.weight.detach(), layer.bias.detach())
    _forward_backward_against(layer, refs)
    for k in range(K):
        torch.testing.assert_close(layer.weight.grad[k], refs[k].weight.grad.T)
        torch.testing.assert_close(layer.bias.grad[k], refs[k].bias.grad)


def test_ensemble_linear_3d_shared_and_single_member_agree():
    layer = EnsembleLinear(K, D_IN, D_OUT)
    x = torch.randn(B, D_IN)
    shared = layer(x, shared_input=True)
    assert shared.shape == (K, B, D_OUT)
    stacked = layer(x.expand(K, B, D_IN))
    torch.testing.assert_close(shared, stacked)
    for k in range(K):
        set_active_member(layer, k)
        torch.testing.assert_close(layer(x), shared[k])
    set_active_member(layer, None)
    # a leading sample axis broadcasts over members
    samples = torch.randn(2, K, B, D_IN)
    torch.testing.assert_close(layer(samples)[1], layer(samples[1]))


@pytest.mark.parametrize("bias", [True, False])
def test_ensemble_linear_sample_axes_match_a_loop_over_members(bias):
    # (S, T, K, B, d) inputs take the folded bmm path; reference: each member's own
    # nn.Linear on each (sample, member) slice, forward and backward
    layer = EnsembleLinear(K, D_IN, D_OUT, bias=bias)
    x = torch.randn(2, 3, K, B, D_IN, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 3, K, B, D_OUT)
    ref = torch.stack(
        [
            torch.nn.functional.linear(
                x[:, :, k], layer.weight[k].T, None if layer.bias is None else layer.bias[k]
            )
            for k in range(K)
        ],
        dim=2,
    )
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    (g_layer,) = torch.autograd.grad(out, layer.weight, grad, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref, layer.weight, grad)
    torch.testing.assert_close(g_layer, g_ref)


def test_members_are_initialised_independently():
    layer = EnsembleLinear(K, D_IN, D_OUT)
    assert not torch.allclose(layer.weight[0], layer.weight[1])
    bound = 1 / D_IN**0.5
    assert layer.weight.abs().max() <= bound and layer.weight.std() > bound / 3


def test_deep_member_gradient_does_not_touch_other_members():
    layer = EnsembleLinear(K, D_IN, D_OUT)
    out = layer(torch.randn(B, D_IN), shared_input=True)
    out[1].square().sum().backward()
    assert layer.weight.grad[1].abs().sum() > 0
    assert torch.count_nonzero(layer.weight.grad[[0, 2]]) == 0
    assert torch.count_nonzero(layer.bias.grad[[0, 2]]) == 0


def test_batch_ensemble_matches_member_weights_w_times_rs():
    layer = BatchEnsembleLinear(K, D_IN, D_OUT)
    with torch.no_grad():
        layer.bias.normal_()
    w = layer.weight.detach()
    member_w = torch.stack([w * torch.outer(layer.r[k], layer.s[k]) for k in range(K)]).detach()
    refs = _reference_linears(member_w, layer.bias.detach())
    _forward_backward_against(layer, refs)
    # chain rule through W_k = W * r_k s_k^T, from the separate layers' weight gradients
    g = [refs[k].weight.grad.T for k in range(K)]
    r, s = layer.r.detach(), layer.s.detach()
    torch.testing.assert_close(
        layer.weight.grad, sum(g[k] * torch.outer(r[k], s[k]) for k in range(K))
    )
    for k in range(K):
        torch.testing.assert_close(layer.r.grad[k], (g[k] * w * s[k]).sum(1))
        torch.testing.assert_close(layer.s.grad[k], (g[k] * w * r[k][:, None]).sum(0))
        torch.testing.assert_close(layer.bias.grad[k], refs[k].bias.grad)


def test_batch_ensemble_with_unit_fast_weights_is_a_shared_linear():
    layer = BatchEnsembleLinear(K, D_IN, D_OUT, random_sign_init=0.0)  # r = s = 1
    assert torch.all(layer.r == 1) and torch.all(layer.s == 1)
    assert torch.all(layer.bias == 0)
    shared = nn.Linear(D_IN, D_OUT)
    with torch.no_grad():
        shared.weight.copy_(layer.weight.T)
        shared.bias.zero_()
    x = torch.randn(B, D_IN)
    out = layer(x, shared_input=True)
    for k in range(K):
        torch.testing.assert_close(out[k], shared(x))


def test_fast_weight_init_sign_convention():
    t = torch.empty(200_000)
    fast_weight_init_(t, -0.5)  # negative: N(1, 0.5)
    assert abs(t.mean() - 1) < 0.01 and abs(t.std() - 0.5) < 0.01
    fast_weight_init_(t, 0.75)  # positive p: +-1 with P(+1) = p
    assert set(t.unique().tolist()) == {-1.0, 1.0}
    assert abs((t == 1).double().mean() - 0.75) < 0.01
    layer = BatchEnsembleLinear(K, D_IN, D_OUT)
    assert {id(p) for p in layer.fast_parameters()} == {id(layer.r), id(layer.s), id(layer.bias)}


@pytest.mark.parametrize("cls", [EnsembleLinear, BatchEnsembleLinear, SharedLinear])
def test_batch_not_multiple_of_members_is_rejected(cls):
    layer = cls(K, D_IN, D_OUT)
    with pytest.raises(ValueError, match="not a multiple of the 3 ensemble members"):
        layer(torch.randn(K * B + 1, D_IN))
    with pytest.raises(ValueError, match="batch size divisible by 3"):
        split_members(torch.randn(7, 2), 3)


def test_shared_linear_is_one_map_for_all_members():
    layer = SharedLinear(K, D_IN, D_OUT)
    x = torch.randn(B, D_IN)
    out = layer(x, shared_input=True)
    assert out.shape == (K, B, D_OUT)
    for k in range(K):
        torch.testing.assert_close(out[k], layer.linear(x))


def test_ensemble_batch_norm_matches_separate_batch_norms():
    bn = EnsembleBatchNorm(K, D_OUT)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    refs = []
    for k in range(K):
        ref = nn.BatchNorm1d(D_OUT, momentum=0.01, eps=1e-3)
        with torch.no_grad():
            ref.weight.copy_(bn.weight[k])
            ref.bias.copy_(bn.bias[k])
        refs.append(ref)
    x = torch.randn(K, B, D_OUT) * 3 + 1
    out = bn(x)
    for k in range(K):
        torch.testing.assert_close(out[k], refs[k](x[k]))
        torch.testing.assert_close(bn.running_mean[k], refs[k].running_mean)
        torch.testing.assert_close(bn.running_var[k], refs[k].running_var)
    bn.eval()
    for ref in refs:
        ref.eval()
    out = bn(x)
    for k in range(K):
        torch.testing.assert_close(out[k], refs[k](x[k]))


def test_member_dropout_stays_on_at_prediction_only_when_asked():
    x = torch.ones(K, B, 50)
    normal, mc = MemberDropout(K, 0.5), MemberDropout(K, 0.5, always_on=True)
    normal.eval()
    mc.eval()
    torch.testing.assert_close(normal(x), x)
    out = mc(x)
    assert torch.count_nonzero(out) < out.numel()
    assert not torch.equal(out[0], out[1])  # an independent mask per member


def _fast_weights(module):
    return torch.cat(
        [p.detach().reshape(-1) for m in module.modules() if hasattr(m, "r") for p in (m.r, m.s)]
    )


@pytest.mark.parametrize("kind", ["batch", "hyperbatch"])
def test_random_sign_init_reaches_the_fast_weights(kind):
    from ensemblevi.module import EnsembleConvVAE, EnsembleVAE

    def build(value):
        torch.manual_seed(0)
        return EnsembleVAE(200, n_members=4, ensemble=kind, n_hidden=64, random_sign_init=value)

    signs, normal = build(0.9), build(-0.3)
    # positive p: every r, s is +-1, and +1 with frequency p (binomial: 5 standard errors)
    t = _fast_weights(signs)
    n = t.numel()
    assert n > 2000 and set(t.unique().tolist()) == {-1.0, 1.0}
    assert abs((t == 1).double().mean() - 0.9) < 5 * (0.9 * 0.1 / n) ** 0.5
    # negative v: N(1, |v|); mean within 5 standard errors, std within 5% (n > 2000)
    t = _fast_weights(normal).double()
    assert abs(t.mean() - 1) < 5 * 0.3 / n**0.5
    assert abs(t.std() / 0.3 - 1) < 0.05
    # two values give different models from the same seed (before: identical state dicts)
    a, b = build(-0.5).state_dict(), build(0.9).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    conv = EnsembleConvVAE((8, 8), n_members=3, ensemble=kind, random_sign_init=0.5)
    assert set(_fast_weights(conv).unique().tolist()) == {-1.0, 1.0}


def test_layer_spec_builds_the_kinds_layers_by_keyword():
    from ensemblevi.nn import HyperBatchEnsembleLinear
    from ensemblevi.nn._base import LayerSpec
    from ensemblevi.nn._blocks import make_dropout, make_linear
    from ensemblevi.nn._hyperbatch import HyperDropout

    cases = {
        "single": EnsembleLinear,
        "deep": EnsembleLinear,
        "batch": BatchEnsembleLinear,
        "hyperbatch": HyperBatchEnsembleLinear,
        "mcdropout": SharedLinear,
    }
    for kind, cls in cases.items():
        spec = LayerSpec(ensemble=kind, n_members=K, n_hyper=2 if kind == "hyperbatch" else 0)
        assert type(make_linear(spec=spec, d_in=D_IN, d_out=D_OUT)) is cls
    mc = make_dropout(spec=LayerSpec(ensemble="mcdropout", n_members=K), p=0.2)
    assert isinstance(mc, MemberDropout) and mc.always_on
    tuned = LayerSpec(ensemble="hyperbatch", n_members=K, n_hyper=1, tuned_dropout=True)
    assert isinstance(make_dropout(spec=tuned, p=0.2), HyperDropout)
    with pytest.raises(ValueError, match="n_hyper"):
        LayerSpec(ensemble="hyperbatch", n_members=K)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        LayerSpec(ensemble="deeep", n_members=K)
    with pytest.raises(TypeError):
        make_linear(LayerSpec(ensemble="deep", n_members=K), D_IN, D_OUT)  # keyword-only


def test_active_member_is_validated_once_for_the_whole_network():
    net = nn.Sequential(EnsembleLinear(K, D_IN, D_OUT), EnsembleBatchNorm(K, D_OUT))
    with pytest.raises(IndexError, match="out of range: the ensemble has 3"):
        set_active_member(net, K)
    assert all(m.active_member is None for m in net)  # nothing switched on a bad index
    set_active_member(net, 2)
    assert [m.active_member for m in net] == [2, 2]


@pytest.mark.parametrize("name", ["_base", "_deep", "_batch", "_hyperbatch", "_norm_dropout"])
def test_layer_docstring_examples_run(name):
    import doctest
    import importlib

    import ensemblevi.nn as ev_nn

    module = importlib.import_module(f"ensemblevi.nn.{name}")
    globs = {"torch": torch, **{k: getattr(ev_nn, k) for k in ev_nn.__all__}}
    result = doctest.testmod(module, extraglobs=globs)
    assert result.attempted > 0 and result.failed == 0
