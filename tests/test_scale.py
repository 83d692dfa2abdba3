"""Large-data and device paths: backed files, the compiled likelihood, CUDA parity."""

import itertools

import anndata
import numpy as np
import pytest
import torch

from ensemblevi.data import synthetic, validate_counts
from ensemblevi.model import EnsembleSCVI
from ensemblevi.module import _likelihood as lik

ARCH = {"n_hidden": 16, "n_latent": 4, "seed": 0}


@pytest.fixture(autouse=True)
def _quiet():
    """Third-party warnings and Lightning's log lines hidden for each test, restored after."""
    from ensemblevi._warnings import quiet_third_party

    with quiet_third_party(loggers=True):
        yield


def test_backed_h5ad_validates_trains_and_summarises(tmp_path):
    """A backed file gives the in-memory checks and summaries, and trains.

    scvi-tools reads a backed minibatch in sorted row order (h5py needs it), so training
    on a backed file sees the same cells per step in another order: the weights match an
    in-memory training only in distribution, not exactly.
    """
    path = tmp_path / "lean.h5ad"
    synthetic("lopez2020", seed=1, n_cells=240, lean=True).write_h5ad(path)
    memory, backed = anndata.read_h5ad(path), anndata.read_h5ad(path, backed="r")
    r_mem, r_back = validate_counts(memory), validate_counts(backed)
    assert r_back.as_dict() == r_mem.as_dict()
    for adata in (memory, backed):
        EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    model = EnsembleSCVI(memory, n_members=2, **ARCH)
    model.train(max_epochs=2, seed=0, batch_size=60, enable_progress_bar=False)
    kw = {"n_samples": 2, "return_frames": False, "progress": False, "seed": 1}
    o_mem = model.get_uncertainty(memory, **kw)
    o_back = model.get_uncertainty(backed, **kw)
    np.testing.assert_allclose(o_back["genes"].to_numpy(), o_mem["genes"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(o_back["cells"].to_numpy(), o_mem["cells"].to_numpy(), rtol=1e-5)
    on_disk = EnsembleSCVI(backed, n_members=2, **ARCH)
    on_disk.train(max_epochs=3, seed=0, batch_size=60, enable_progress_bar=False)
    elbo = on_disk.history["elbo_train"].to_numpy(dtype=float).ravel()
    assert np.isfinite(elbo).all() and elbo[-1] < elbo[0]


def _collection_files(tmp_path, adata, cuts):
    paths = []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        paths.append(tmp_path / f"part{i}.h5ad")
        adata[a:b].copy().write_h5ad(paths[-1])
    return paths


def test_anncollection_validates_trains_and_summarises(tmp_path):
    """Several backed files as one AnnCollection (scvi-tools' CollectionAdapter).

    Same checks as in memory, training equal to training on the same cells as one backed
    file (both read minibatches in sorted row order), the same summaries, and clear errors
    for what a collection cannot do.
    """
    from anndata.experimental import AnnCollection
    from scvi.dataloaders._anncollection import CollectionAdapter

    whole = synthetic("lopez2020", seed=2, n_cells=200, lean=True)
    whole.layers["counts"] = whole.X.copy()
    path = tmp_path / "whole.h5ad"
    whole.write_h5ad(path)
    parts = _collection_files(tmp_path, whole, [0, 70, 200])
    coll = CollectionAdapter(AnnCollection([anndata.read_h5ad(p, backed="r") for p in parts]))
    backed = anndata.read_h5ad(path, backed="r")
    r_coll = validate_counts(coll, layer="counts").as_dict()
    r_whole = validate_counts(whole, layer="counts").as_dict()
    assert r_coll == {**r_whole, "source": r_coll["source"]}
    with pytest.raises(ValueError, match="read from a layer, not X"):
        validate_counts(coll)
    with pytest.raises(ValueError, match="Layer 'spliced' not found"):
        validate_counts(coll, layer="spliced")
    bad = whole[70:].copy()
    bad.layers["counts"].data[3] = -2.0
    bad.write_h5ad(tmp_path / "bad.h5ad")
    files = [anndata.read_h5ad(p, backed="r") for p in (parts[0], tmp_path / "bad.h5ad")]
    with pytest.raises(ValueError, match="negative"):
        validate_counts(CollectionAdapter(AnnCollection(files)), layer="counts")

    models = []
    for adata in (coll, backed):
        EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
        models.append(EnsembleSCVI(adata, n_members=2, **ARCH))
        models[-1].train(max_epochs=2, seed=0, batch_size=50, enable_progress_bar=False)
    params = [list(m.module.parameters()) for m in models]
    for p_coll, p_file in zip(*params, strict=True):
        torch.testing.assert_close(p_coll, p_file, rtol=0, atol=0)
    kw = {"n_samples": 2, "return_frames": False, "progress": False, "seed": 1}
    o_coll, o_file = models[0].get_uncertainty(coll, **kw), models[0].get_uncertainty(backed, **kw)
    np.testing.assert_allclose(o_coll["genes"].to_numpy(), o_file["genes"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(o_coll["cells"].to_numpy(), o_file["cells"].to_numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="AnnCollection does not have"):
        models[0].get_uncertainty(coll, key_added="ev", **kw)


def test_compiled_likelihood_matches_eager():
    """The torch.compile path gives the fused kernel's values and gradients (ZINB and NB,
    random upstream gradients)."""
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(9, 13, generator=g, dtype=torch.float64) * 3, generator=g)
    mu = (torch.rand(3, 9, 13, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    theta = (torch.rand(3, 1, 13, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    zi = torch.randn(3, 9, 13, generator=g, dtype=torch.float64).requires_grad_()
    weights = torch.randn(3, 9, generator=g, dtype=torch.float64)

    def value_and_grads(fn, *params):
        out = fn(x, *params)
        return out, torch.autograd.grad((out * weights).sum(), params)

    for fn, params in [
        (lik.zinb_log_prob_sum, (mu, theta, zi)),
        (lik.nb_log_prob_sum, (mu, theta)),
    ]:
        with lik.compiled_likelihood() as run:
            a, ga = value_and_grads(fn, *params)
        if run.failed:  # no compiler toolchain: eager ran on both sides, nothing to compare
            pytest.skip(f"torch.compile unavailable here: {run.failed}")
        # the comparison below is compiled against eager only if compiled code ran
        assert run.compiled_calls == 2, "the block fell back to eager without saying why"
        b, gb = value_and_grads(fn, *params)
        torch.testing.assert_close(a, b)
        for u, v in zip(ga, gb, strict=True):
            torch.testing.assert_close(u, v)
    assert lik._BLOCK.get() is None  # the setting is scoped to the block


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_losses_match_cpu():
    adata = synthetic("lopez2020", seed=2, n_cells=200)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    losses = {}
    for device in ("cpu", "cuda"):
        model = EnsembleSCVI(adata, n_members=3, **ARCH)
        model.to_device(device)
        loader = model._make_data_loader(adata=adata, batch_size=50, shuffle=False)
        batch = {k: v.to(device) for k, v in next(iter(loader)).items()}
        model.module.eval()
        with torch.no_grad():
            _, _, out = model.module(batch)
        losses[device] = out.loss.double().cpu()
        elbo = model.get_elbo(adata, batch_size=50)
        losses[device + "_elbo"] = elbo.double()
    torch.testing.assert_close(losses["cuda"], losses["cpu"], rtol=1e-4, atol=1e-3)
