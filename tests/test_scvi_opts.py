"""The scvi-tools options EnsembleSCVI takes: size factors, the Normal likelihood, a
logistic-normal latent with another variance activation, per-cell dispersion.

References: a trained ``scvi.model.SCVI`` with the same option, whose weights are copied
into member 1 of a deep ensemble (module outputs, loss, ELBO, marginal likelihood, and
scvi-tools' own model methods through ``model.members[1]``); scvi-tools' ZINB/NB
log-likelihoods under autograd for the fused kernel with per-cell dispersion; a slow
importance-sampling loop for the logistic-normal marginal likelihood.
"""

import warnings

import numpy as np
import pytest
import scanpy as sc
import scvi
import torch
from scvi.distributions._negative_binomial import log_nb_positive, log_zinb_positive

import ensemblevi as ev
from ensemblevi._constants import logmeanexp
from ensemblevi.model import EnsembleSCVI
from ensemblevi.module._from_scvi import load_scvi_member
from ensemblevi.module._likelihood import nb_log_prob_sum, normal_log_prob_sum, zinb_log_prob_sum

MEMBER = 1
KINDS = [("single", 1), ("deep", 2), ("batch", 2), ("hyperbatch", 2), ("mcdropout", 2)]


def _counts(size_factor: bool = False):
    rng = np.random.default_rng(0)
    np.random.seed(0)  # noqa: NPY002 (synthetic_iid draws from numpy's global generator)
    adata = scvi.data.synthetic_iid(batch_size=60, n_genes=30)
    if size_factor:
        adata.obs["size_factor"] = rng.uniform(0.5, 4.0, adata.n_obs)
    return adata


def _lognormal():
    adata = _counts()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    return adata


# name: (data, setup, model options)
CONFIGS = {
    "size-factor": (
        lambda: _counts(True),
        {"batch_key": "batch", "size_factor_key": "size_factor"},
        {},
    ),
    "normal": (_lognormal, {"batch_key": "batch"}, {"gene_likelihood": "normal"}),
    "ln-softplus-latent-lib": (
        _counts,
        {"batch_key": "batch"},
        {
            "latent_distribution": "ln",
            "var_activation": torch.nn.Softplus(),
            "use_observed_lib_size": False,
        },
    ),
    "gene-cell-nb": (
        _counts,
        {"batch_key": "batch", "labels_key": "labels"},
        {"dispersion": "gene-cell", "gene_likelihood": "nb"},
    ),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    make, setup, opts = CONFIGS[request.param]
    adata = make()
    arch = {"n_hidden": 16, "n_latent": 4, **opts}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.SCVI.setup_anndata(adata, **setup)
        ref = scvi.model.SCVI(adata, **arch)
        ref.train(max_epochs=1, batch_size=60, enable_progress_bar=False)
        ens_adata = adata.copy()
        EnsembleSCVI.setup_anndata(ens_adata, **setup)
        ens = EnsembleSCVI(ens_adata, n_members=2, ensemble="deep", seed=0, **arch)
    load_scvi_member(ens.module, MEMBER, ref.module)
    ref.module.eval()
    ens.module.eval()
    ens.is_trained_ = True
    loader = ref._make_data_loader(adata=adata, batch_size=adata.n_obs, shuffle=False)
    return request.param, ref, ens, next(iter(loader))


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what}: {m}")


def _px_params(px, likelihood):
    if likelihood == "normal":
        return {"loc": px.loc, "scale": px.scale, "normal_mu": px.normal_mu}
    params = {"scale": px.scale, "mu": px.mu, "theta": px.theta}
    if likelihood == "zinb":
        params["zi_logits"] = px.zi_logits
    return params


@torch.no_grad()
def test_module_outputs_match_scvi(pair):
    name, ref, ens, tensors = pair
    vae, module = ref.module, ens.module
    lik = vae.gene_likelihood
    inf_ref = vae.inference(**vae._get_inference_input(tensors))
    with module.member(MEMBER):
        inf = module.inference(**module._get_inference_input(tensors))
    _close(inf["qz"].loc, inf_ref["qz"].loc, f"{name} qz loc")
    _close(inf["qz"].scale, inf_ref["qz"].scale, f"{name} qz scale")
    if inf_ref["ql"] is not None:
        _close(inf["ql"].scale, inf_ref["ql"].scale, f"{name} ql scale")
    inf_ref["z"] = vae.z_encoder.z_transformation(inf_ref["qz"].loc)
    if inf_ref["ql"] is not None:
        inf_ref["library"] = inf_ref["ql"].loc
    for transform_batch in (None, 1):
        gen_ref = vae.generative(
            **vae._get_generative_input(tensors, inf_ref), transform_batch=transform_batch
        )
        with module.member(MEMBER):
            gen = module.generative(
                **module._get_generative_input(tensors, inf_ref), transform_batch=transform_batch
            )
        ref_params = _px_params(gen_ref["px"], lik)
        for key, value in _px_params(gen["px"], lik).items():
            _close(value, ref_params[key], f"{name} {key} (transform_batch={transform_batch})")
        # the all-member path holds the same numbers in the member's slot
        pred = module.predictive(tensors, use_mean=True, transform_batch=transform_batch)
        _close(pred.z[0, MEMBER], inf_ref["z"], f"{name} predictive z")
        if lik == "normal":
            _close(pred.rate[0, MEMBER], gen_ref["px"].loc, "predictive rate")
            _close(pred.scale[0, MEMBER], gen_ref["px"].normal_mu, "predictive scale")
            std = pred.std.expand(1, 2, *gen_ref["px"].scale.shape)[0, MEMBER]
            _close(std, gen_ref["px"].scale, "predictive std")
            assert pred.theta is None
        else:
            _close(pred.rate[0, MEMBER], gen_ref["px"].mu, "predictive rate")
            theta = pred.theta.expand(1, 2, *gen_ref["px"].theta.shape)[0, MEMBER]
            _close(theta, gen_ref["px"].theta, "predictive theta")
        if name == "size-factor":  # the likelihood's library is the size factor
            sf = torch.log(tensors[scvi.REGISTRY_KEYS.SIZE_FACTOR_KEY])
            _close(pred.library[0, MEMBER], sf, "predictive library")
            _close(pred.rate[0, MEMBER], sf.exp() * pred.scale[0, MEMBER], "rate = sf * scale")


@torch.no_grad()
def test_loss_elbo_and_marginal_ll_match_scvi(pair):
    name, ref, ens, tensors = pair
    vae, module = ref.module, ens.module
    torch.manual_seed(3)
    _, _, out_ref = vae(tensors, loss_kwargs={"kl_weight": 0.6})
    torch.manual_seed(3)  # the same noise: z (and l) are drawn with the same shapes
    with module.member(MEMBER):
        _, _, out = module(tensors, loss_kwargs={"kl_weight": 0.6})
    _close(out.loss, out_ref.loss, f"{name} loss")
    rec_ref = out_ref.reconstruction_loss["reconstruction_loss"]
    _close(out.reconstruction_loss["reconstruction_loss"], rec_ref, f"{name} reconstruction")
    torch.manual_seed(3)
    with module.member(MEMBER):
        elbo = module.member_elbo(tensors)[0]
    _close(elbo, -(rec_ref + sum(out_ref.kl_local.values())), f"{name} ELBO")
    torch.manual_seed(4)
    with module.member(MEMBER):
        ll = module.marginal_ll(tensors, n_mc_samples=6, n_mc_samples_per_pass=6)
    if vae.latent_distribution == "normal":
        torch.manual_seed(4)
        ll_ref = vae.marginal_ll(tensors, n_mc_samples=6, n_mc_samples_per_pass=6)
    else:
        ll_ref = _ln_marginal_ll(vae, tensors, n=6, seed=4)
    _close(ll, ll_ref, f"{name} marginal log-likelihood")


def _ln_marginal_ll(vae, tensors, n, seed):
    """Importance sampling over the normal draws ``u`` of q, decoding ``softmax(u)``.

    scvi-tools 1.4 evaluates the prior and q at ``softmax(u)``, which is not the variable
    sampled; the ensemble weighs the draws themselves, as here.
    """
    inputs = vae._get_inference_input(tensors)
    inf = vae.inference(**inputs)
    qz, ql = inf["qz"], inf["ql"]
    torch.manual_seed(seed)  # replays the module's draws: one rsample each, then n samples
    qz.rsample()
    if ql is not None:
        ql.rsample()
    u = qz.sample((n,))
    library = ql.sample((n,)) if ql is not None else inf["library"].expand(n, -1, -1)
    x = tensors[scvi.REGISTRY_KEYS.X_KEY]
    terms = []
    for s in range(n):
        step = {**inf, "z": torch.softmax(u[s], -1), "library": library[s]}
        px = vae.generative(**vae._get_generative_input(tensors, step))["px"]
        log_w = px.log_prob(x).sum(-1)
        log_w = log_w + torch.distributions.Normal(0.0, 1.0).log_prob(u[s]).sum(-1)
        log_w = log_w - qz.log_prob(u[s]).sum(-1)
        if ql is not None:
            means, variances = vae._compute_local_library_params(tensors["batch"].long())
            pl = torch.distributions.Normal(means, variances.sqrt())
            log_w = log_w + (pl.log_prob(library[s]) - ql.log_prob(library[s])).sum(-1)
        terms.append(log_w)
    return logmeanexp(torch.stack(terms), dim=0)


def test_member_view_runs_scvi_code_as_scvi(pair):
    name, ref, ens, _ = pair
    view = ens.members[MEMBER]
    for method, kwargs in [
        ("get_latent_representation", {}),
        ("get_normalized_expression", {"return_numpy": True}),
        ("get_normalized_expression", {"transform_batch": "batch_1", "return_numpy": True}),
        ("get_elbo", {}),
        ("get_reconstruction_error", {}),
    ]:
        outs = []
        for model in (ref, view):
            torch.manual_seed(7)
            outs.append(getattr(model, method)(**kwargs))
        got, want = outs
        if isinstance(want, dict):
            got, want = got["reconstruction_loss"], want["reconstruction_loss"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{name} {method}")
    if ref.module.gene_likelihood != "normal":  # scvi-tools' own needs a dispersion
        torch.manual_seed(8)
        params = view.get_likelihood_parameters()
        torch.manual_seed(8)
        want = ref.get_likelihood_parameters()
        for key, value in want.items():
            np.testing.assert_allclose(params[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_ensemble_path_with_normal_likelihood_and_per_cell_dispersion():
    """Both members of a deep ensemble hold one scVI (Normal, gene-cell): the all-member
    path decodes scVI's numbers in each slot; the mixture outputs combine the members."""
    make, setup, opts = CONFIGS["normal"]
    adata = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.SCVI.setup_anndata(adata, **setup)
        ref = scvi.model.SCVI(adata, n_hidden=16, n_latent=4, dispersion="gene-cell", **opts)
        EnsembleSCVI.setup_anndata(adata, **setup)
        ens = EnsembleSCVI(
            adata, n_members=2, n_hidden=16, n_latent=4, dispersion="gene-cell", seed=0, **opts
        )
    for k in range(2):
        load_scvi_member(ens.module, k, ref.module)
    ens.is_trained_ = True
    ref.module.eval()
    ens.module.eval()
    # mean expression without latent noise: the decoded posterior mean of scVI
    loader = ref._make_data_loader(adata=adata, batch_size=adata.n_obs, shuffle=False)
    tensors = next(iter(loader))
    with torch.no_grad():
        pred = ens.module.predictive(tensors, use_mean=True)
        inf = ref.module.inference(**ref.module._get_inference_input(tensors))
        inf["z"] = inf["qz"].loc
        px = ref.module.generative(**ref.module._get_generative_input(tensors, inf))["px"]
    for k in range(2):
        _close(pred.std[0, k], px.scale, "gene-cell standard deviation")
    # log((e^a + e^b) / 2) of the members' ELBOs (each from its own latent draw)
    table = ens.get_elbo(return_table=True, return_mean=False, seed=1)
    mixture = np.logaddexp(table["member_0"], table["member_1"]) - np.log(2)
    np.testing.assert_allclose(table["mixture"], mixture, rtol=1e-6)
    # what posterior_predictive_sample draws from (its sparse output compiles numba code)
    torch.manual_seed(2)
    samples = ens.module.sample(tensors, n_samples=200)
    assert samples.shape == (adata.n_obs, adata.n_vars, 200)
    # each draw is a member's: both members are scVI, so these are draws of scVI's own
    # posterior predictive; per gene, 24,000 draws each pin mean and spread to ~1%
    ref_samples = ref.module.sample(tensors, n_samples=200)
    for stat in (lambda t: t.mean((0, 2)), lambda t: t.std((0, 2))):
        torch.testing.assert_close(stat(samples), stat(ref_samples), rtol=0.03, atol=0.02)


@pytest.mark.parametrize(("kind", "k"), KINDS)
def test_every_kind_takes_every_option(kind, k):
    adata = _counts(True)
    logged = _lognormal()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch", size_factor_key="size_factor")
    EnsembleSCVI.setup_anndata(logged, batch_key="batch")
    variants = [
        (adata, {"dispersion": "gene-cell", "latent_distribution": "ln"}),
        (logged, {"gene_likelihood": "normal", "var_activation": torch.nn.Softplus()}),
    ]
    for data, opts in variants:
        model = EnsembleSCVI(data, n_members=k, ensemble=kind, n_hidden=8, n_latent=3, **opts)
        model.module.train()
        tensors = next(iter(model._make_data_loader(adata=data, batch_size=32)))
        _, _, out = model.module(tensors)
        out.loss.backward()  # the fused likelihoods take per-cell theta
        assert torch.isfinite(out.loss)
        model.module.eval()
        model.is_trained_ = True
        assert np.isfinite(model.get_elbo())
        assert np.isfinite(model.get_marginal_ll(n_mc_samples=2))
        per_cell = model.get_reconstruction_error(return_mean=False)["reconstruction_loss"]
        assert per_cell.shape == (data.n_obs,)
        expr = model.get_normalized_expression(transform_batch=["batch_0", "batch_1"], n_samples=2)
        assert expr.shape == data.shape
        with torch.no_grad():
            sample = model.module.sample(tensors, n_samples=3)  # posterior_predictive_sample's
        assert sample.shape == (32, data.n_vars, 3) and torch.isfinite(sample).all()
        assert np.isfinite(model.members[k - 1].get_elbo())


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_fused_likelihood_with_per_cell_theta_matches_autograd(likelihood):
    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(5, 7, generator=gen, dtype=torch.float64) * 4)
    x[0, :3] = 30.0  # counts beyond the lookup tables
    mu = (torch.rand(2, 5, 7, generator=gen, dtype=torch.float64) * 5 + 0.1).requires_grad_()
    theta = (torch.rand(2, 5, 7, generator=gen, dtype=torch.float64) * 3 + 0.2).requires_grad_()
    pi = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64).requires_grad_()
    weights = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    if likelihood == "nb":
        ours = nb_log_prob_sum(x, mu, theta)
        ref = log_nb_positive(x, mu, theta).sum(-1)
        inputs = (mu, theta)
    else:
        ours = zinb_log_prob_sum(x, mu, theta, pi)
        ref = log_zinb_positive(x, mu, theta, pi).sum(-1)
        inputs = (mu, theta, pi)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(
        torch.autograd.grad((ours * weights).sum(), inputs),
        torch.autograd.grad((ref * weights).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


def test_normal_log_prob_sum_is_torch_normal():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    loc = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    scale = torch.rand(3, 1, 6, generator=gen, dtype=torch.float64) + 0.1
    ref = torch.distributions.Normal(loc, scale).log_prob(x).sum(-1)
    torch.testing.assert_close(normal_log_prob_sum(x, loc, scale), ref)


def test_count_check_is_where_the_likelihood_is_known():
    logged = _lognormal()
    EnsembleSCVI.setup_anndata(logged, batch_key="batch")  # structure only: accepted
    for likelihood in ("zinb", "nb", "poisson"):
        with pytest.raises(ValueError, match=r"non-integer.*raw integer counts"):
            EnsembleSCVI(logged, gene_likelihood=likelihood)
    EnsembleSCVI(logged, gene_likelihood="normal", n_members=2)
    bad = _counts()
    bad.X = bad.X.astype(np.float32)
    bad.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        EnsembleSCVI.setup_anndata(bad)


def test_bad_options_are_refused_by_name():
    adata = _counts(True)
    with pytest.raises(ValueError, match="not_there"):
        EnsembleSCVI.setup_anndata(adata, size_factor_key="not_there")
    adata.obs.loc[adata.obs_names[2], "size_factor"] = 0.0
    with pytest.raises(ValueError, match=r"size_factor.*1 value.*not positive"):
        EnsembleSCVI.setup_anndata(adata, size_factor_key="size_factor")
    adata.obs["size_factor"] = 1.5
    EnsembleSCVI.setup_anndata(adata, size_factor_key="size_factor")
    with pytest.warns(UserWarning, match="use_observed_lib_size=False is overridden"):
        model = EnsembleSCVI(adata, use_observed_lib_size=False)  # as scvi-tools does
    assert model.module.use_observed_lib_size and model.module.l_encoder is None
    with pytest.raises(ValueError, match="latent_distribution must be"):
        EnsembleSCVI(adata, latent_distribution="lognormal")
    with pytest.raises(TypeError, match="var_activation must be a callable"):
        EnsembleSCVI(adata, var_activation="softplus")
    with pytest.raises(ValueError, match="dispersion must be"):
        EnsembleSCVI(adata, dispersion="cell")
    with pytest.raises(ValueError, match="gene_likelihood must be"):
        EnsembleSCVI(adata, gene_likelihood="gaussian")


def test_options_survive_save_and_load(tmp_path):
    adata = _counts(True)
    EnsembleSCVI.setup_anndata(adata, batch_key="batch", size_factor_key="size_factor")
    opts = {
        "latent_distribution": "ln",
        "var_activation": torch.nn.Softplus(),
        "dispersion": "gene-cell",
    }
    model = EnsembleSCVI(adata, n_members=2, n_hidden=8, n_latent=3, seed=0, **opts)
    model.is_trained_ = True
    model.save(tmp_path / "m")
    loaded = EnsembleSCVI.load(tmp_path / "m", adata=adata)
    assert loaded.module.latent_distribution == "ln" and loaded.module.use_size_factor_key
    assert isinstance(loaded.module.z_encoder.var_activation, torch.nn.Softplus)
    a = model.get_normalized_expression(return_numpy=True, seed=0)
    b = loaded.get_normalized_expression(return_numpy=True, seed=0)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_uncertainty_noise_of_the_normal_likelihood_is_its_variance():
    """With gene-wise standard deviations ``sigma_kg`` and the observed library ``l``, the
    noise part is ``L^2 mean_k sigma_kg^2 / l^2`` whatever the latent draws."""
    adata = _lognormal()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    model = EnsembleSCVI(adata, n_members=3, gene_likelihood="normal", n_hidden=8, seed=0)
    model.is_trained_ = True
    parts = model.get_uncertainty(n_samples=2, library_size=100.0, progress=False)
    sigma2 = torch.exp(2 * model.module.px_r.detach()).mean(0).numpy()  # (G,)
    library = np.asarray(adata.X.sum(1)).reshape(-1, 1)
    want = 100.0**2 * sigma2[None, :] / library**2
    np.testing.assert_allclose(parts["var_noise"].to_numpy(), want, rtol=1e-4)


def test_count_only_outputs_refuse_the_normal_likelihood_by_name():
    adata = _lognormal()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    model = EnsembleSCVI(adata, n_members=2, gene_likelihood="normal", n_hidden=8, seed=0)
    model.is_trained_ = True
    with pytest.raises(ValueError, match="gene_likelihood='normal'"):
        model.get_feature_correlation_matrix()
    with pytest.raises(ValueError, match="randomised PIT of a count model"):
        ev.metrics.predictive_calibration(model, progress=False)


@pytest.mark.parametrize("name", ["size-factor", "ln-softplus-latent-lib"])
def test_from_scvi_takes_models_with_these_options(name):
    """from_scvi of trained scVI models with the option gives their own outputs per member."""
    make, setup, opts = CONFIGS[name]
    adata = make()
    arch = {"n_hidden": 16, "n_latent": 4, **opts}
    refs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.SCVI.setup_anndata(adata, **setup)
        for seed in (0, 1):
            torch.manual_seed(seed)
            ref = scvi.model.SCVI(adata, **arch)
            ref.train(max_epochs=1, batch_size=60, enable_progress_bar=False)
            refs.append(ref)
        ens = EnsembleSCVI.from_scvi(refs)
    loader = refs[0]._make_data_loader(adata=adata, batch_size=adata.n_obs, shuffle=False)
    tensors = next(iter(loader))
    ens.module.eval()
    for k, ref in enumerate(refs):
        ref.module.eval()
        want = ref.module.inference(**ref.module._get_inference_input(tensors))
        with ens.module.member(k):
            got = ens.module.inference(**ens.module._get_inference_input(tensors))
        _close(got["qz"].loc, want["qz"].loc, f"member {k} posterior mean")
        _close(got["qz"].scale, want["qz"].scale, f"member {k} posterior scale")
