"""Reference mapping (scArches) and minified mode of EnsembleSCVI.

Checked against scvi-tools' own ``SCVI.prepare_query_anndata`` / ``load_query_data`` (the
same padding, the same trainable entries after surgery, the same library-size priors) and,
for every ensemble kind, against the reference model it was built from (frozen weights
unchanged by query training, reference cells' outputs unchanged).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch
from scvi.data import synthetic_iid

from ensemblevi.model import EnsembleSCVI
from ensemblevi.module._from_scvi import load_scvi_member
from ensemblevi.nn import MemberDropout

warnings.filterwarnings("ignore", category=UserWarning)

N_GENES = 40
SMALL = {"n_hidden": 16, "n_latent": 4}


def _data(n_genes: int = N_GENES, batches: tuple[str, ...] | None = None, n_cats: int = 0):
    adata = synthetic_iid(batch_size=60, n_genes=n_genes, n_batches=2)
    if batches is not None:
        adata.obs["batch"] = adata.obs.batch.cat.rename_categories(list(batches))
    if n_cats:
        rng = np.random.default_rng(n_cats)
        adata.obs["cat1"] = rng.integers(0, n_cats, adata.n_obs).astype(str)
    return adata


def _quiet_train(model, **kwargs):
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False, **kwargs)


@pytest.fixture(scope="module")
def scvi_reference():
    adata = _data()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    model = scvi.model.SCVI(adata, **SMALL)
    _quiet_train(model)
    return model


def test_prepare_query_anndata_matches_scvi(scvi_reference):
    ours_ref = EnsembleSCVI.from_scvi([scvi_reference])
    query = _data(n_genes=N_GENES + 5)
    query.var_names = [f"new{i}" for i in range(7)] + list(query.var_names[7:])
    query.layers["counts"] = sp.csr_matrix(query.X)
    expected = scvi.model.SCVI.prepare_query_anndata(query, scvi_reference, inplace=False)
    got = EnsembleSCVI.prepare_query_anndata(query, ours_ref, inplace=False)
    assert list(got.var_names) == list(expected.var_names) == list(scvi_reference.adata.var_names)
    np.testing.assert_array_equal(_dense(got.X), _dense(expected.X))
    np.testing.assert_array_equal(_dense(got.layers["counts"]), _dense(expected.layers["counts"]))
    names = EnsembleSCVI.prepare_query_anndata(query, ours_ref, return_reference_var_names=True)
    assert list(names) == list(scvi_reference.adata.var_names)
    assert query.n_vars == N_GENES + 5  # not in place
    EnsembleSCVI.prepare_query_anndata(query, ours_ref)
    np.testing.assert_array_equal(_dense(query.X), _dense(expected.X))


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _scvi_pairs(ours, theirs):
    """(name, our tensor as scVI lays it out, scVI's tensor) of member 0 and an scVI module."""
    for part, ours_stack, theirs_stack in (
        ("enc", ours.z_encoder.encoder, theirs.z_encoder.encoder),
        ("dec", ours.decoder.px_decoder, theirs.decoder.px_decoder),
    ):
        for i, layer in enumerate(ours_stack.layers):
            lin, bn = theirs_stack.fc_layers[i][0], theirs_stack.fc_layers[i][1]
            yield f"{part}{i}.w", layer["linear"].weight, lambda t: t[0].T, lin.weight
            yield f"{part}{i}.b", layer["linear"].bias, lambda t: t[0], lin.bias
            yield f"{part}{i}.bn", layer["bn"].weight, lambda t: t[0], bn.weight
    yield "z_heads", ours.z_encoder.heads.weight, None, theirs.z_encoder.mean_encoder.weight
    yield "x_heads", ours.decoder.heads.weight, None, theirs.decoder.px_scale_decoder[0].weight
    yield "px_r", ours.px_r, lambda t: t[0], theirs.px_r


def _learns(p, view):
    if not p.requires_grad or p.grad is None:
        return None
    return (view(p.grad) if view else p.grad) != 0


@pytest.mark.parametrize(
    "options",
    [
        {"freeze": {}, "arch": {}},
        {
            "freeze": {
                "freeze_expression": False,
                "freeze_decoder_first_layer": False,
                "freeze_batchnorm_encoder": False,
                "freeze_batchnorm_decoder": True,
            },
            "arch": {"use_observed_lib_size": False, "dispersion": "gene-batch"},
        },
    ],
    ids=["defaults", "options"],
)
def test_surgery_matches_scvi(options):
    """Same trainable entries as scvi-tools' surgery, covariate blocks mapped one by one."""
    adata = _data(n_cats=3)
    setup = {"batch_key": "batch", "labels_key": "labels", "categorical_covariate_keys": ["cat1"]}
    scvi.model.SCVI.setup_anndata(adata, **setup)
    arch = {
        **SMALL,
        "n_layers": 2,
        "encode_covariates": True,
        "dropout_rate": 0.0,
        **options["arch"],
    }
    ref = scvi.model.SCVI(adata, **arch)
    _quiet_train(ref)
    ours_adata = adata.copy()
    EnsembleSCVI.setup_anndata(ours_adata, **setup)
    ours_ref = EnsembleSCVI.from_scvi([ref], adata=ours_adata)

    query = _data(batches=("batch_2", "batch_3"), n_cats=4)  # 2 new batches, 1 new category
    theirs = scvi.model.SCVI.load_query_data(query.copy(), ref, **options["freeze"])
    ours = EnsembleSCVI.load_query_data(query.copy(), ours_ref, **options["freeze"])

    # reference columns at their categories' positions: [genes | batch 0..3 | cat 0..3]
    w_ref = ref.module.decoder.px_decoder.fc_layers[0][0].weight.detach()  # (out, 4 + 2 + 3)
    w = ours.module.decoder.px_decoder.layers[0]["linear"].weight[0].T.detach()
    n_lat = arch["n_latent"]
    torch.testing.assert_close(w[:, : n_lat + 2], w_ref[:, : n_lat + 2])
    torch.testing.assert_close(w[:, n_lat + 4 : n_lat + 7], w_ref[:, n_lat + 2 :])
    if not arch.get("use_observed_lib_size", True):
        torch.testing.assert_close(
            ours.module.library_log_means, theirs.module.library_log_means.cpu()
        )
        torch.testing.assert_close(ours.module.px_r[0][:, :2], ref.module.px_r[:, :2].cpu())

    # the same weights and noise in both, one backward pass each: the same entries learn
    load_scvi_member(ours.module, 0, theirs.module.cpu())
    for model in (theirs, ours):
        model.module.eval()
        tensors = next(iter(model._make_data_loader(model.adata, indices=range(16))))
        torch.manual_seed(0)  # the same latent noise in both (drawn in the same order)
        model.module(tensors)[2].loss.backward()
    for name, p_ours, view, p_theirs in _scvi_pairs(ours.module, theirs.module):
        a, b = _learns(p_ours, view), _learns(p_theirs, None)
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any()), name
        else:
            assert torch.equal(a, b), name
    for part in ("z_encoder", "decoder"):
        ours_bn = getattr(ours.module, part)
        ours_bn = (ours_bn.encoder if part == "z_encoder" else ours_bn.px_decoder).layers[0]["bn"]
        theirs_bn = getattr(theirs.module, part)
        theirs_bn = theirs_bn.encoder if part == "z_encoder" else theirs_bn.px_decoder
        assert ours_bn.momentum == theirs_bn.fc_layers[0][1].momentum, part
    if ours.module.l_encoder is not None:
        assert all(p.requires_grad for p in ours.module.l_encoder.parameters())


#: where the new batches' columns of the decoder's first layer are, per kind
NEW_COLUMNS = {
    "single": [("weight", 1)],
    "deep": [("weight", 1)],
    "batch": [("weight", 0), ("r", 1)],
    "hyperbatch": [("weight", 0), ("weight_hyper", 0), ("r", 1)],
    "mcdropout": [("linear.weight", 1)],
}


@pytest.mark.parametrize("kind", ["single", "deep", "batch", "hyperbatch", "mcdropout"])
def test_query_training_keeps_the_reference(kind):
    adata = _data()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    split = {"train_size": 0.8} if kind == "hyperbatch" else {}
    ref = EnsembleSCVI(adata, n_members=2, ensemble=kind, seed=0, **SMALL)
    _quiet_train(ref, **split)
    query = _data(batches=("batch_2", "batch_3"))
    model = EnsembleSCVI.load_query_data(
        query, ref, freeze_batchnorm_decoder=True, freeze_dropout=kind != "mcdropout"
    )
    assert model.n_members == ref.n_members and model.ensemble == kind
    drops = [layer["dropout"] for layer in model.module.z_encoder.encoder.layers]
    assert all(isinstance(d, MemberDropout) and d.p == (kind == "mcdropout") * 0.1 for d in drops)
    first = "decoder.px_decoder.layers.0.linear."
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    _quiet_train(model, **split)  # scvi-tools' default weight decay is on
    after = model.module.state_dict()
    old = ref.module.state_dict()
    n_in = SMALL["n_latent"]  # decoder input: [z | batch_0, batch_1 | batch_2, batch_3]
    for key, value in old.items():
        axis = dict(NEW_COLUMNS[kind]).get(key[len(first) :]) if key.startswith(first) else None
        if axis is None:
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
            continue
        # genes/latent entries frozen exactly; the reference batches' columns get no gradient
        # from query cells; the new batches' columns learn
        torch.testing.assert_close(
            after[key].narrow(axis, 0, n_in), value.narrow(axis, 0, n_in), rtol=0, atol=0
        )
        torch.testing.assert_close(
            after[key].narrow(axis, n_in, 2), value.narrow(axis, n_in, 2), atol=1e-6, rtol=0
        )
        new = after[key].narrow(axis, n_in + 2, 2)
        assert not torch.equal(new, before[key].narrow(axis, n_in + 2, 2)), key
    if kind != "mcdropout":  # MC dropout's members are new masks at every call
        z_ref = ref.get_latent_representation(adata, return_members=True)
        z = model.get_latent_representation(adata, return_members=True)
        np.testing.assert_allclose(z, z_ref, atol=1e-5)
        x_ref = ref.get_normalized_expression(adata, return_members=True)
        x = model.get_normalized_expression(adata, return_members=True)
        np.testing.assert_allclose(x, x_ref, rtol=1e-3, atol=1e-7)
    assert np.isfinite(model.get_elbo())
    last = model.members[model.n_members - 1]
    assert last.get_latent_representation().shape == (query.n_obs, SMALL["n_latent"])


def test_saved_reference_and_bad_input(tmp_path):
    adata = _data()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    ref = EnsembleSCVI(adata, n_members=2, ensemble="mcdropout", seed=0, **SMALL)
    _quiet_train(ref)
    ref.save(tmp_path / "ref")
    query = _data(batches=("batch_2", "batch_3"))
    from_dir = EnsembleSCVI.load_query_data(query.copy(), str(tmp_path / "ref"))
    from_obj = EnsembleSCVI.load_query_data(query.copy(), ref)
    for key, value in from_obj.module.state_dict().items():
        if "px_decoder.layers.0.linear" not in key:  # new columns: fresh initialisations
            torch.testing.assert_close(from_dir.module.state_dict()[key], value, msg=key)

    no_batch = query.copy()
    del no_batch.obs["batch"]
    with pytest.raises(KeyError, match="'batch' \\(batch_key\\)"):
        EnsembleSCVI.load_query_data(no_batch, ref)
    with pytest.raises(ValueError, match="prepare_query_anndata"):
        EnsembleSCVI.load_query_data(query[:, 1:].copy(), ref)
    with pytest.raises(ValueError, match="mcdropout"):
        EnsembleSCVI.load_query_data(query.copy(), ref, freeze_dropout=True)
    with pytest.raises(ValueError, match="freeze_classifier"):
        EnsembleSCVI.load_query_data(query.copy(), ref, freeze_classifier=False)
    with pytest.raises(FileNotFoundError, match="reference_model"):
        EnsembleSCVI.load_query_data(query.copy(), str(tmp_path / "nothing"))
    with pytest.raises(NotImplementedError, match=r"minify_adata.*per member"):
        ref.minify_adata()
    assert ref.minified_data_type is None


def test_scvi_reference_is_refused(scvi_reference):
    query = _data(batches=("batch_2", "batch_3"))
    with pytest.raises(TypeError, match="from_scvi"):
        EnsembleSCVI.load_query_data(query, scvi_reference)


def test_single_batch_reference_gains_a_batch():
    """A one-batch reference has no batch columns; the query's old-batch column is zero."""
    adata = synthetic_iid(batch_size=80, n_genes=N_GENES, n_batches=1)
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    ref = EnsembleSCVI(adata, n_members=2, ensemble="batch", encode_covariates=True, **SMALL)
    _quiet_train(ref)
    query = synthetic_iid(batch_size=80, n_genes=N_GENES, n_batches=2)
    query.obs["batch"] = query.obs.batch.cat.rename_categories(["batch_0", "new"])
    model = EnsembleSCVI.load_query_data(query, ref)
    for stack in (model.module.z_encoder.encoder, model.module.decoder.px_decoder):
        w = stack.layers[0]["linear"].weight
        assert torch.all(w[-2] == 0) and torch.any(w[-1] != 0)
    model.is_trained_ = True  # untrained: the reference's function exactly
    np.testing.assert_allclose(
        model.get_latent_representation(adata, return_members=True),
        ref.get_latent_representation(adata, return_members=True),
        atol=1e-6,
    )
