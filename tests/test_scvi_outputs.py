"""scvi-tools' output types, custom dataloaders, the LR monitor and the inspection methods.

The reference is ``scvi.model.SCVI`` itself: an ensemble built from its weights
(``EnsembleSCVI.from_scvi``) must return the same types, shapes and, on the same noise,
the same values.
"""

import warnings

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import LearningRateMonitor

from ensemblevi.model import EnsembleSCVI
from ensemblevi.model.base._refused import REFUSED

ARCH = {"n_hidden": 16, "n_latent": 3}


@pytest.fixture(scope="module")
def pair():
    """A trained scvi.model.SCVI and the one-member ensemble holding its weights."""
    warnings.simplefilter("ignore")
    adata = scvi.data.synthetic_iid(batch_size=60, n_genes=30)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    scvi.settings.seed = 0
    ref = scvi.model.SCVI(adata, **ARCH)
    ref.train(max_epochs=1, enable_progress_bar=False)
    return adata, ref, EnsembleSCVI.from_scvi([ref])


def _same_noise(fn_ref, fn_ours, seed=7):
    torch.manual_seed(seed)
    a = fn_ref()
    torch.manual_seed(seed)
    return a, fn_ours()


def _value(out):
    return out["reconstruction_loss"] if isinstance(out, dict) else out


CALLS = [
    ("get_elbo", {}),
    ("get_reconstruction_error", {}),
    # one importance sample per pass draws the noise in scvi-tools' order
    ("get_marginal_ll", {"n_mc_samples": 3}),
]


@pytest.mark.parametrize("return_mean", [True, False])
@pytest.mark.parametrize(("name", "kwargs"), CALLS)
def test_likelihoods_have_scvi_types_and_values(pair, name, kwargs, return_mean):
    adata, ref, ens = pair
    extra = {"n_mc_samples_per_pass": 1} if name == "get_marginal_ll" else {}
    a, b = _same_noise(
        lambda: getattr(ref, name)(return_mean=return_mean, **kwargs),
        lambda: getattr(ens, name)(return_mean=return_mean, seed=None, **kwargs, **extra),
    )
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
    a, b = _value(a), _value(b)
    assert type(a) is type(b) and np.ndim(a) == np.ndim(b)
    assert getattr(a, "dtype", None) == getattr(b, "dtype", None)
    if not return_mean:
        assert b.shape == (adata.n_obs,) and b.device.type == "cpu"
        np.testing.assert_allclose(b, a.cpu(), rtol=1e-4)
    elif name != "get_marginal_ll":  # scvi-tools' marginal mean is over minibatch means
        assert float(b) == pytest.approx(float(a), rel=1e-5)


def test_member_and_table_types(pair):
    _, _, ens = pair
    assert isinstance(ens.get_elbo(member=0), torch.Tensor) and ens.get_elbo(member=0).ndim == 0
    assert type(ens.get_marginal_ll(member=0, n_mc_samples=2)) is np.float64
    table = ens.get_elbo(return_table=True)
    assert list(table.index) == ["member_0", "mixture"]
    assert table["mixture"] == pytest.approx(table["member_0"])  # K = 1: the mixture is it


def test_custom_dataloader_matches_scvi(pair):
    adata, ref, ens = pair
    idx = np.arange(5, 85)
    for name in ("get_elbo", "get_reconstruction_error"):
        ref_fn, ens_fn = getattr(ref, name), getattr(ens, name)
        torch.manual_seed(7)
        a = _value(ref_fn(dataloader=ref._make_data_loader(adata, idx, 32)))
        torch.manual_seed(7)
        b = _value(ens_fn(dataloader=ens._make_data_loader(adata, idx, 32), seed=None))
        assert float(b) == pytest.approx(float(a), rel=1e-5)
    per_cell = ens.get_elbo(dataloader=ens._make_data_loader(adata, idx, 32), return_mean=False)
    assert per_cell.shape == (len(idx),)
    ll = ens.get_marginal_ll(dataloader=ens._make_data_loader(adata, idx), n_mc_samples=2)
    assert type(ll) is np.float64
    loader = ens._make_data_loader(adata, idx, 32)
    z = ens.get_latent_representation(dataloader=loader)
    # atol: a minibatch of 32 against scvi's 128 sums in another order (float32 noise ~1e-8)
    ref_z = ref.get_latent_representation(indices=idx)
    np.testing.assert_allclose(z, ref_z, rtol=1e-5, atol=1e-6)
    assert ens.get_latent_representation(dataloader=loader, return_members=True).shape == (
        1,
        len(idx),
        3,
    )
    lib = ens.get_latent_library_size(dataloader=loader, give_mean=False)
    np.testing.assert_allclose(lib, ref.get_latent_library_size(indices=idx, give_mean=False))


def test_custom_dataloader_conflicts_are_named_errors(pair):
    adata, _, ens = pair
    loader = ens._make_data_loader(adata)
    with pytest.raises(ValueError, match="either adata or dataloader"):
        ens.get_elbo(adata, dataloader=loader)
    with pytest.raises(ValueError, match="batch_size, indices cannot apply"):
        ens.get_reconstruction_error(dataloader=loader, indices=[0, 1], batch_size=4)
    with pytest.raises(ValueError, match="data_loader_kwargs cannot apply"):
        ens.get_marginal_ll(dataloader=loader, data_loader_kwargs={"drop_last": True})
    with pytest.raises(ValueError, match="one-pass iterator"):
        ens.get_latent_representation(dataloader=iter(loader), return_members=True)
    with pytest.raises(ValueError, match="no minibatch"):
        ens.get_elbo(dataloader=[])


@pytest.mark.parametrize("name", ["get_elbo", "get_marginal_ll", "get_reconstruction_error"])
def test_forward_kwargs_are_refused_with_the_documented_reason(pair, name):
    _, _, ens = pair
    with pytest.raises(TypeError, match="members\\[k\\]") as info:
        getattr(ens, name)(inference_kwargs={"n_samples": 2})
    assert REFUSED[(name, "**kwargs")] in str(info.value)


def test_lr_monitor_logs_scvi_keys():
    warnings.simplefilter("ignore")
    adata = scvi.data.synthetic_iid(batch_size=40, n_genes=20)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    args = {
        "max_epochs": 1,
        "log_every_n_steps": 1,
        "check_val_every_n_epoch": 1,
        "enable_progress_bar": False,
        "plan_kwargs": {"reduce_lr_on_plateau": True},
    }
    ref = scvi.model.SCVI(adata, n_hidden=8)
    ref.train(callbacks=[LearningRateMonitor()], **args)
    expected = {k for k in ref.history if k.startswith("lr-")}
    assert expected == {"lr-Adam"}
    for ensemble, n in (("single", 1), ("deep", 2), ("batch", 2)):
        model = EnsembleSCVI(adata, n_members=n, ensemble=ensemble, n_hidden=8)
        model.train(callbacks=[LearningRateMonitor()], **args)
        keys = {k for k in model.history if k.startswith("lr-")}
        # BatchEnsemble's fast weights have their own rate: two named groups
        assert keys == ({"lr-Adam/shared", "lr-Adam/fast"} if ensemble == "batch" else expected)


def test_inspection_methods_print_the_setup(pair, tmp_path, capsys):
    _, ref, ens = pair
    ens.view_anndata_setup()
    ens.view_anndata_setup(hide_state_registries=True)
    ens.save(tmp_path / "m")
    EnsembleSCVI.view_setup_args(tmp_path / "m")
    out = capsys.readouterr().out
    assert "EnsembleSCVI.setup_anndata" in out and "'batch_key': 'batch'" in out
    ref.view_anndata_setup()  # scvi-tools' own works too once ensemblevi is imported
    assert "batch State Registry" in capsys.readouterr().out


def test_normalized_expression_takes_scvi_arguments(pair):
    adata, ref, ens = pair
    idx = np.arange(10, 50)
    # a custom dataloader gives the same expression as the AnnData path (numpy, as scvi)
    loader = ens._make_data_loader(adata, indices=idx, batch_size=16)
    via_loader = ens.get_normalized_expression(dataloader=loader, seed=3)
    via_adata = ens.get_normalized_expression(indices=idx, batch_size=16, seed=3)
    assert isinstance(via_loader, np.ndarray)
    np.testing.assert_allclose(via_loader, via_adata.to_numpy(), rtol=1e-6)
    # n_samples_overall: that many rows, each one cell's expression draw
    draws = ens.get_normalized_expression(indices=idx, n_samples_overall=7, seed=0)
    assert draws.shape == (7, adata.n_vars)
    np.testing.assert_allclose(draws.sum(1), 1.0, rtol=1e-5)  # library_size 1: proportions
    # importance weights are one member's: refused on the ensemble, scvi's own on a member
    with pytest.raises(ValueError, match="member=k"):
        ens.get_normalized_expression(weights="importance", n_samples=3)
    with pytest.raises(TypeError, match="member=k"):
        ens.get_normalized_expression(truncation=True)
    torch.manual_seed(2)
    want = ref.get_normalized_expression(
        indices=idx, n_samples=4, weights="importance", return_numpy=True
    )
    torch.manual_seed(2)
    got = ens.get_normalized_expression(
        indices=idx, n_samples=4, weights="importance", return_numpy=True, member=0
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
