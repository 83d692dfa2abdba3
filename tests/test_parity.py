"""A member of a deep ensemble holding a trained scVI's weights computes what scVI computes.

For each configuration a ``scvi.model.SCVI`` is trained briefly (so batch-norm statistics
and weights are not at their initial values), its weights are copied into member 1 of a
3-member deep EnsembleSCVI, and the inference, generative and loss outputs of
``scvi.module.VAE`` are compared with the member's: through the single-member path
(``module.member(1)``, which scvi-tools' mixins use) and through the all-member path
(``module.predictive``, which the ensemble outputs use).
"""

import warnings

import numpy as np
import pytest
import scvi
import torch

import ensemblevi as ev
from ensemblevi.model import EnsembleSCVI
from ensemblevi.module._from_scvi import load_scvi_member

CONFIGS = {
    "zinb-gene-batch": ({"batch_key": "batch"}, {}),
    "nb-genebatch-2layers": (
        {"batch_key": "batch"},
        {"gene_likelihood": "nb", "dispersion": "gene-batch", "n_layers": 2},
    ),
    "poisson-labels": ({"labels_key": "cell_type"}, {"gene_likelihood": "poisson"}),
    "zinb-genelabel": (
        {"batch_key": "batch", "labels_key": "cell_type"},
        {"dispersion": "gene-label"},
    ),
    "covariates": (
        {
            "batch_key": "batch",
            "categorical_covariate_keys": ["donor"],
            "continuous_covariate_keys": ["pct_mito"],
        },
        {"n_layers": 2},
    ),
    "latent-library": ({"batch_key": "batch"}, {"use_observed_lib_size": False}),
    "encode-covariates": (
        {
            "batch_key": "batch",
            "categorical_covariate_keys": ["donor"],
            "continuous_covariate_keys": ["pct_mito"],
        },
        {"encode_covariates": True, "dispersion": "gene-batch", "use_observed_lib_size": False},
    ),
}
MEMBER = 1


def _adata():
    adata = ev.data.synthetic("hard", seed=3, n_cells=150, n_genes=40)
    rng = np.random.default_rng(0)
    adata.obs["donor"] = rng.choice(["d1", "d2", "d3"], adata.n_obs)
    adata.obs["pct_mito"] = rng.uniform(0, 0.2, adata.n_obs)
    return adata


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    setup, arch = CONFIGS[request.param]
    adata = _adata()
    arch = {"n_hidden": 24, "n_latent": 5, **arch}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.SCVI.setup_anndata(adata, layer="counts", **setup)
        ref = scvi.model.SCVI(adata, **arch)
        ref.train(max_epochs=2, batch_size=50, enable_progress_bar=False)
        ens_adata = adata.copy()
        EnsembleSCVI.setup_anndata(ens_adata, layer="counts", **setup)
        ens = EnsembleSCVI(ens_adata, n_members=3, ensemble="deep", seed=0, **arch)
    load_scvi_member(ens.module, MEMBER, ref.module)
    ref.module.eval()
    ens.module.eval()
    loader = ref._make_data_loader(adata=adata, batch_size=adata.n_obs, shuffle=False)
    tensors = next(iter(loader))
    return request.param, ref.module, ens.module, tensors


def _assert_close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what}: {m}")


@torch.no_grad()
def test_inference_and_generative_match_scvi(pair):
    name, vae, module, tensors = pair
    inf_ref = vae.inference(**vae._get_inference_input(tensors))
    with module.member(MEMBER):
        inf = module.inference(**module._get_inference_input(tensors))
    _assert_close(inf["qz"].loc, inf_ref["qz"].loc, "qz mean")
    _assert_close(inf["qz"].scale, inf_ref["qz"].scale, "qz scale")
    if inf_ref["ql"] is not None:
        _assert_close(inf["ql"].loc, inf_ref["ql"].loc, "ql mean")
        _assert_close(inf["ql"].scale, inf_ref["ql"].scale, "ql scale")
    # decode the posterior means, as observed or as the batch-0 counterfactual
    for transform_batch in (None, 0):
        inf_ref["z"] = inf_ref["qz"].loc
        if inf_ref["ql"] is not None:
            inf_ref["library"] = inf_ref["ql"].loc
        gen_ref = vae.generative(
            **vae._get_generative_input(tensors, inf_ref), transform_batch=transform_batch
        )
        with module.member(MEMBER):
            gen = module.generative(
                **module._get_generative_input(tensors, inf_ref), transform_batch=transform_batch
            )
        px_ref, px = gen_ref["px"], gen["px"]
        _assert_close(px.scale, px_ref.scale, f"{name} scale (transform_batch={transform_batch})")
        if vae.gene_likelihood == "poisson":
            _assert_close(px.rate, px_ref.rate, "rate")
        else:
            _assert_close(px.mu, px_ref.mu, "mu")
            _assert_close(px.theta, px_ref.theta, "theta")
        if vae.gene_likelihood == "zinb":
            _assert_close(px.zi_logits, px_ref.zi_logits, "zi_logits")
        # the all-member path gives the same numbers in its member slot
        pred = module.predictive(tensors, use_mean=True, transform_batch=transform_batch)
        _assert_close(pred.scale[0, MEMBER], px_ref.scale, "predictive scale")
        _assert_close(pred.library[0, MEMBER], inf_ref["library"], "predictive library")
        if pred.theta is not None:
            theta = pred.theta.expand(1, 3, *px_ref.theta.shape)[0, MEMBER]
            _assert_close(theta, px_ref.theta, "predictive theta")


@torch.no_grad()
def test_loss_matches_scvi(pair):
    name, vae, module, tensors = pair
    torch.manual_seed(11)
    _, _, out_ref = vae(tensors, loss_kwargs={"kl_weight": 0.7})
    torch.manual_seed(11)  # same noise: z (and l) are drawn with the same shapes
    with module.member(MEMBER):
        _, _, out = module(tensors, loss_kwargs={"kl_weight": 0.7})
    rec, rec_ref = (o.reconstruction_loss["reconstruction_loss"] for o in (out, out_ref))
    _assert_close(rec, rec_ref, f"{name} reconstruction")
    for key, value in out_ref.kl_local.items():
        _assert_close(out.kl_local[key], value, key)
    _assert_close(out.loss, out_ref.loss, "loss")
    # the evaluation path (predictive -> member_elbo) with the same noise: scVI's ELBO
    torch.manual_seed(11)
    with module.member(MEMBER):
        elbo = module.member_elbo(tensors)[0]
    ref_elbo = -(
        out_ref.reconstruction_loss["reconstruction_loss"] + sum(out_ref.kl_local.values())
    )
    _assert_close(elbo, ref_elbo, "ELBO")


def test_load_scvi_member_rejects_other_architectures():
    adata = _adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
        ref = scvi.model.SCVI(adata, n_hidden=24, n_latent=5)
        EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
        wide = EnsembleSCVI(adata, n_members=2, n_hidden=32, n_latent=5)
        be = EnsembleSCVI(adata, n_members=2, ensemble="batch", n_hidden=24, n_latent=5)
    with pytest.raises(ValueError, match="architectures differ"):
        load_scvi_member(wide.module, 0, ref.module)
    with pytest.raises(ValueError, match="deep ensemble"):
        load_scvi_member(be.module, 0, ref.module)
    with pytest.raises(IndexError, match="out of range"):
        load_scvi_member(wide.module, 2, ref.module)


@torch.no_grad()
def test_module_outputs_are_the_module_keys_compat_checks(pair):
    """The ``MODULE_KEYS`` that ``_compat`` checks are exactly those the module writes."""
    from scvi.module._constants import MODULE_KEYS

    from ensemblevi._scvi_check import MIXIN_READ_KEYS, REQUIRED_MODULE_KEYS

    _, _, module, tensors = pair
    with module.member(MEMBER):
        inf, gen, out = module(tensors)
    written = set(inf) | set(gen) | set(out.kl_local)
    known = {getattr(MODULE_KEYS, name): name for name in MODULE_KEYS._fields}
    assert {known[k] for k in written if k in known} == set(REQUIRED_MODULE_KEYS)
    assert set(MIXIN_READ_KEYS) <= set(REQUIRED_MODULE_KEYS)
