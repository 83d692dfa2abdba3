"""Batch embeddings (``batch_representation="embedding"``) and models built without AnnData.

The references are independent of the code under test: ``scvi.model.SCVI`` with the same
weights (a member loaded with ``load_scvi_member`` must compute what scVI computes), the
embedding table itself (the batch representation of a cell is its batch's row), and a
model built from an AnnData with the same seed (a model built at ``train`` from a
datamodule must start from the same weights).
"""

import warnings

import numpy as np
import pytest
import scvi
import torch
from scvi import REGISTRY_KEYS
from scvi.dataloaders import DataSplitter

import ensemblevi as ev
from ensemblevi.model import EnsembleSCVI
from ensemblevi.module._from_scvi import load_scvi_member

ARCH = {"n_hidden": 16, "n_latent": 4}
EMB = {"batch_representation": "embedding", "batch_embedding_kwargs": {"embedding_dim": 3}}


def _adata():
    adata = scvi.data.synthetic_iid(batch_size=60, n_genes=30, n_batches=3)
    adata.obs["cont"] = np.random.default_rng(0).uniform(size=adata.n_obs)
    return adata


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize(
    "extra",
    [{}, {"encode_covariates": True, "use_observed_lib_size": False}],
    ids=["decoder-only", "encoded-latent-library"],
)
def test_member_with_scvi_weights_computes_what_scvi_computes(extra):
    adata = _adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.SCVI.setup_anndata(adata, batch_key="batch", continuous_covariate_keys=["cont"])
        refs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            ref = scvi.model.SCVI(adata, **ARCH, **EMB, **extra)
            ref.train(max_epochs=1, batch_size=60, enable_progress_bar=False)
            refs.append(ref)
        ens = EnsembleSCVI.from_scvi(refs)
    assert ens.module.batch_representation == "embedding"
    vae, module = refs[1].module.eval(), ens.module.eval()
    loader = refs[1]._make_data_loader(adata=adata, batch_size=adata.n_obs, shuffle=False)
    tensors = next(iter(loader))
    with torch.no_grad():
        inf_ref = vae.inference(**vae._get_inference_input(tensors))
        with module.member(1):
            inf = module.inference(**module._get_inference_input(tensors))
        _close(inf["qz"].loc, inf_ref["qz"].loc, "qz mean")
        _close(inf["qz"].scale, inf_ref["qz"].scale, "qz scale")
        inf_ref["z"] = inf_ref["qz"].loc
        if inf_ref["ql"] is not None:
            _close(inf["ql"].loc, inf_ref["ql"].loc, "ql mean")
            inf_ref["library"] = inf_ref["ql"].loc
        for tb in (None, 2):
            gen_ref = vae.generative(
                **vae._get_generative_input(tensors, inf_ref), transform_batch=tb
            )
            with module.member(1):
                gen = module.generative(
                    **module._get_generative_input(tensors, inf_ref), transform_batch=tb
                )
            _close(gen["px"].mu, gen_ref["px"].mu, f"mu (transform_batch={tb})")
            _close(gen["px"].zi_logits, gen_ref["px"].zi_logits, "zi_logits")
            # the all-member path (K members' embeddings at once) in member 1's slot
            pred = module.predictive(tensors, use_mean=True, transform_batch=tb)
            _close(pred.scale[0, 1], gen_ref["px"].scale, "predictive scale")
    # the model outputs: scVI's batch representation, member by member
    for k, ref in enumerate(refs):
        want = ref.get_batch_representation()
        np.testing.assert_allclose(ens.members[k].get_batch_representation(), want, rtol=1e-6)
        np.testing.assert_allclose(ens.get_batch_representation(member=k), want, rtol=1e-6)
    stacked = ens.get_batch_representation(return_members=True)
    assert stacked.shape == (2, adata.n_obs, 3)
    # float32 matmuls summed in another order (one torch thread under pytest-xdist): an
    # absolute floor for latent coordinates near 0 (one of 720 was 1.1e-4, off by 1.5e-8)
    np.testing.assert_allclose(
        ens.get_latent_representation(member=1),
        refs[1].get_latent_representation(),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("ensemble", ["deep", "batch", "hyperbatch", "mcdropout", "single"])
def test_embedding_tables_per_kind_train_and_round_trip(ensemble, tmp_path):
    adata = _adata()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = EnsembleSCVI(
            adata, n_members=3, ensemble=ensemble, seed=0, **ARCH, **EMB, encode_covariates=True
        )
        model.train(max_epochs=1, batch_size=60, enable_progress_bar=False)
    table = model.module.get_embedding(REGISTRY_KEYS.BATCH_KEY).weight.detach()
    per_member = ensemble == "deep"
    assert table.shape == ((3 if per_member else 1), 3, 3)
    codes = adata.obs["batch"].cat.codes.to_numpy()
    reps = model.get_batch_representation(return_members=True)
    for k in range(model.n_members):
        # closed form: each cell's row of its member's table
        np.testing.assert_allclose(reps[k], table[k if per_member else 0][codes.copy()].numpy())
    if not per_member and model.n_members > 1:
        np.testing.assert_array_equal(reps[0], reps[-1])
    model.save(tmp_path / "m")
    loaded = EnsembleSCVI.load(tmp_path / "m", adata)
    np.testing.assert_array_equal(loaded.get_batch_representation(return_members=True), reps)
    with pytest.raises(KeyError):
        loaded.module.init_embedding(REGISTRY_KEYS.BATCH_KEY, 3)
    with pytest.raises(KeyError):
        loaded.module.remove_embedding(REGISTRY_KEYS.LABELS_KEY)
    loaded.module.remove_embedding(REGISTRY_KEYS.BATCH_KEY)
    with pytest.raises(KeyError):
        loaded.get_batch_representation()


def test_one_hot_default_and_bad_embedding_arguments():
    adata = _adata()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    model = EnsembleSCVI(adata, n_members=2, **ARCH)
    assert model.module.batch_representation == "one-hot"
    assert not any("embedding" in key for key in model.module.state_dict())
    with pytest.raises(ValueError, match="batch_representation='embedding'"):
        model.get_batch_representation()
    with pytest.raises(ValueError, match="batch_embedding_kwargs applies"):
        EnsembleSCVI(adata, batch_embedding_kwargs={"embedding_dim": 3})
    with pytest.raises(ValueError, match="must be 'one-hot' or 'embedding'"):
        EnsembleSCVI(adata, batch_representation="onehot")
    with pytest.raises(ValueError, match=r"\['max_norm'\] are not supported"):
        EnsembleSCVI(
            adata, batch_representation="embedding", batch_embedding_kwargs={"max_norm": 1.0}
        )
    with pytest.raises(ValueError, match="embeddings"):  # scVI with a table, ensemble without
        load_scvi_member(model.module, 0, _scvi_with_embedding(adata).module)


def _scvi_with_embedding(adata):
    adata = adata.copy()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    return scvi.model.SCVI(adata, **ARCH, **EMB)


def test_shard_embeddings_are_slices_of_the_whole_ensemble():
    adata = _adata()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    whole = EnsembleSCVI(adata, n_members=3, seed=5, **ARCH, **EMB)
    shard = EnsembleSCVI(
        adata, n_members=1, member_offset=2, n_members_total=3, seed=5, **ARCH, **EMB
    )
    key = REGISTRY_KEYS.BATCH_KEY
    torch.testing.assert_close(
        shard.module.get_embedding(key).weight[0], whole.module.get_embedding(key).weight[2]
    )


def _datamodule(adata):
    manager = EnsembleSCVI._get_most_recent_anndata_manager(adata)
    dm = DataSplitter(manager, batch_size=60)
    dm.n_vars, dm.n_batch = adata.n_vars, 3
    return dm


def test_model_without_anndata_builds_its_module_at_train():
    adata = _adata()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    with pytest.warns(UserWarning, match="without an AnnData"):
        model = EnsembleSCVI(adata=None, n_members=2, seed=3, **ARCH, **EMB)
    assert model._module_init_on_train and model.module is None
    assert model.n_members == 2 and model.ensemble == "deep"
    with pytest.raises(AttributeError, match="datamodule="):
        model.train(max_epochs=1)
    with pytest.raises(ValueError, match="n_obs"):
        model.train(datamodule=_datamodule(adata))
    assert model.module is None
    # the module a datamodule builds starts from the weights an AnnData-built one has
    reference = EnsembleSCVI(adata, n_members=2, seed=3, **ARCH, **EMB).module.state_dict()
    captured = {}

    class Capture(ev.train.EnsembleTrainingPlan):
        def on_train_start(self):
            captured.update({k: v.clone() for k, v in self.module.state_dict().items()})

    model._training_plan_cls = Capture
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, datamodule=_datamodule(adata), enable_progress_bar=False)
    assert captured.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(captured[key], value, msg=key)
    assert model.is_trained_
    # as in scvi-tools 1.4, a model built from a datamodule has no AnnData manager, so
    # outputs on an AnnData raise AttributeError (checked against scvi.model.SCVI)
    for method in ("get_batch_representation", "get_latent_representation"):
        with pytest.raises(AttributeError, match="_adata_manager"):
            getattr(model, method)(adata=adata)
    with pytest.raises(ValueError, match="observed library size"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            latent = EnsembleSCVI(adata=None, use_observed_lib_size=False)
        latent.train(max_epochs=1, datamodule=_datamodule(adata))
