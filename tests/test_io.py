import gzip
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from ensemblevi.data import heart_cell_atlas, preprocess, read, synthetic
from ensemblevi.data._io import HEART_FILE, HEART_OBS, write_h5ad_atomic


@pytest.fixture(scope="module")
def sim():
    return synthetic("hard", seed=0, n_cells=300, n_genes=400)


def test_read_round_trip(tmp_path, sim):
    path = write_h5ad_atomic(sim, tmp_path / "a.h5ad")
    back = read(path, layer="counts")
    assert back.shape == sim.shape
    assert (back.layers["counts"] != sim.layers["counts"]).nnz == 0
    assert back.uns["synthetic"]["seed"] == 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_refuses_overwrite_and_keeps_old_file(tmp_path, sim):
    path = tmp_path / "a.h5ad"
    write_h5ad_atomic(sim[:10].copy(), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_h5ad_atomic(sim, path)
    assert path.read_bytes() == before
    write_h5ad_atomic(sim, path, overwrite=True)
    assert anndata.read_h5ad(path).n_obs == sim.n_obs


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No file or directory"):
        read(tmp_path / "missing.h5ad")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unknown file type '\.csv'"):
        read(tmp_path / "x.csv")
    with pytest.raises(ValueError, match=r"without matrix\.mtx"):
        read(tmp_path)


def test_read_10x_matrix_directory(tmp_path):
    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.poisson(1.0, size=(6, 20)))  # genes x cells, as 10x writes it
    with gzip.open(tmp_path / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, x.astype(np.int64))
    genes = "\n".join(f"ENSG{i}\tG{i}\tGene Expression" for i in range(6)) + "\n"
    with gzip.open(tmp_path / "features.tsv.gz", "wt") as f:
        f.write(genes)
    with gzip.open(tmp_path / "barcodes.tsv.gz", "wt") as f:
        f.write("\n".join(f"AAAC{i}-1" for i in range(20)) + "\n")
    ad = read(tmp_path)
    assert ad.shape == (20, 6)
    np.testing.assert_array_equal(ad.X.toarray(), x.T.toarray())


def _heart_standin(path, n=60, n_genes=40):
    rng = np.random.default_rng(1)
    types = np.array(["Fibroblast", "Myeloid", "doublets", "NotAssigned"])[rng.integers(0, 4, n)]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(types),
            "cell_source": pd.Categorical(rng.choice(["Harvard-Nuclei", "Sanger-Cells"], n)),
            "donor": pd.Categorical(rng.choice(["D1", "D2", "H3"], n)),
            "percent_mito": rng.uniform(0, 0.1, n).astype(np.float32),
            "percent_ribo": rng.uniform(0, 0.1, n).astype(np.float32),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    x = sp.csr_matrix(rng.poisson(2.0, (n, n_genes)).astype(np.float32))
    ad = anndata.AnnData(X=x, obs=obs)
    ad.var_names = [f"G{i}" for i in range(n_genes)]
    ad.write_h5ad(path / HEART_FILE)
    return ad


def test_heart_cell_atlas_uses_local_file_without_network(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    standin = _heart_standin(tmp_path)
    before = (tmp_path / HEART_FILE).read_bytes()
    ad = heart_cell_atlas(tmp_path)
    keep = ~standin.obs["cell_type"].isin(["doublets", "NotAssigned"])
    assert ad.n_obs == int(keep.sum()) and ad.n_vars == 40
    assert set(HEART_OBS) <= set(ad.obs.columns)
    assert (tmp_path / HEART_FILE).read_bytes() == before


def test_heart_cell_atlas_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*hca_subsampled_20k\.h5ad"):
        heart_cell_atlas(tmp_path)


def test_preprocess_keeps_counts_and_selects_hvgs(sim):
    ad = sim.copy()
    ad.X = ad.X.copy()
    out = preprocess(ad, n_top_genes=100, batch_key="batch", copy=True)
    assert ad.shape == sim.shape and "log1p" not in ad.uns  # input untouched with copy=True
    assert out.n_vars == 100 and out.var["highly_variable"].all()
    # Counts are the original ones for the kept genes, X is their log-normalised form.
    orig = sim[out.obs_names, out.var_names].layers["counts"]
    assert (out.layers["counts"] != orig).nnz == 0
    expected = np.log1p(
        orig.toarray() / np.asarray(sim[out.obs_names].layers["counts"].sum(1)) * 1e4
    )
    np.testing.assert_allclose(out.X.toarray(), expected, rtol=2e-4, atol=2e-4)
    assert out.raw is not None and out.raw.n_vars > out.n_vars


def test_preprocess_from_layer_in_place(sim):
    ad = sim.copy()
    ad.X = np.log1p(ad.layers["counts"].toarray())
    assert preprocess(ad, n_top_genes=50, layer="counts") is None
    assert ad.n_vars == 50 and "counts" in ad.layers


def test_preprocess_errors(sim):
    with pytest.raises(ValueError, match=r"\['donor'\] not found"):
        preprocess(sim, batch_key="donor", copy=True)
    with pytest.raises(ValueError, match="No genes left"):
        preprocess(sim, min_counts=10**9, copy=True)
    with pytest.warns(UserWarning, match="keeping all"):
        out = preprocess(sim, n_top_genes=10_000, copy=True)
    assert out.n_vars == sim.n_vars


def test_pbmc3k_loads_and_validates(pbmc_path):
    ad = read(pbmc_path)
    assert ad.shape == (2638, 32738)
    assert {"CD14", "MS4A1", "NKG7"} <= set(ad.var_names)
    out = preprocess(ad, n_top_genes=1200, copy=True)
    assert out.n_vars == 1200 and "counts" in out.layers


def test_read_names_damaged_files(tmp_path, sim):
    good = write_h5ad_atomic(sim[:50].copy(), tmp_path / "good.h5ad")
    data = good.read_bytes()
    (tmp_path / "text.h5ad").write_text("cell,gene\n1,2\n")
    (tmp_path / "trunc.h5ad").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.h5ad").write_bytes(b"")
    (tmp_path / "fake.h5").write_text("not hdf5")
    for name in ("text.h5ad", "trunc.h5ad", "empty.h5ad", "fake.h5"):
        with pytest.raises(ValueError, match=r"is not a readable .*(re-export|again)") as info:
            read(tmp_path / name)
        assert name in str(info.value)
        # the reader's own error stays attached (its traceback shows under ours)
        assert isinstance(info.value.__cause__, Exception)
    assert good.read_bytes() == data  # reading never writes


def test_preprocess_refuses_zero_genes(sim):
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match=r"n_top_genes must be a positive"):
            preprocess(sim, n_top_genes=bad, copy=True)


def test_hvg_small_batch_falls_back_with_warning(sim):
    ad = sim.copy()
    ad.obs["lane"] = np.where(np.arange(ad.n_obs) < ad.n_obs - 1, "big", "single")
    # a 1-cell batch crashes scanpy's loess (segfault), so it must never reach it
    with pytest.warns(UserWarning, match=r"'single' \(1 cells\).*over all cells"):
        out = preprocess(ad, n_top_genes=60, batch_key="lane", copy=True)
    assert out.n_vars == 60
    plain = preprocess(sim, n_top_genes=60, copy=True)
    assert list(out.var_names) == list(plain.var_names)


def test_hvg_failing_loess_falls_back_naming_sizes(sim, monkeypatch):
    import scanpy as sc

    real = sc.pp.highly_variable_genes

    def loess_fails_per_batch(adata, **kw):
        if kw.get("batch_key") is not None:
            raise ValueError("b'svddc failed in l2fit.'")
        return real(adata, **kw)

    monkeypatch.setattr(sc.pp, "highly_variable_genes", loess_fails_per_batch)
    with pytest.warns(UserWarning, match=r"svddc failed.*'batch0' 104"):
        out = preprocess(sim, n_top_genes=60, batch_key="batch", copy=True)
    assert out.n_vars == 60


def test_hvg_two_small_real_batches(pbmc_path):
    ad = read(pbmc_path)[:300].copy()
    ad.obs["batch"] = np.repeat(["x", "y"], 150)
    with pytest.warns(UserWarning, match=r"Per-batch highly variable gene selection failed"):
        out = preprocess(ad, n_top_genes=1200, batch_key="batch", copy=True)
    assert out.n_vars == 1200


def test_preprocess_refuses_nan_batch_and_duplicate_genes(sim):
    ad = sim.copy()
    ad.obs["batch"] = ad.obs["batch"].astype(object)
    ad.obs.iloc[[3, 7], ad.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(ValueError, match=r"obs\['batch'\] has 2 missing.*notna"):
        preprocess(ad, batch_key="batch", copy=True)
    ad = sim.copy()
    names = list(ad.var_names)
    names[5] = names[2]
    ad.var_names = names
    with pytest.raises(ValueError, match=rf"\['{names[2]}'\].*var_names_make_unique"):
        preprocess(ad, copy=True)


@pytest.fixture(scope="module")
def tiny_model(kind_models):
    """The session's deep ensemble (conftest.py): saved and loaded here, never changed."""
    return kind_models["deep"]


def test_model_save_keeps_other_files(tmp_path, tiny_model, sim):
    from ensemblevi.model import EnsembleSCVI

    d = tmp_path / "d"
    d.mkdir()
    write_h5ad_atomic(sim[:20].copy(), d / "data.h5ad")
    (d / "notes.txt").write_text("mine")
    tiny_model.save(d)  # a folder with other files is fine: no model file there yet
    tiny_model.save(d, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == [
        "data.h5ad",
        "model.json",
        "model.pt",
        "notes.txt",
    ]
    assert (d / "notes.txt").read_text() == "mine"
    assert anndata.read_h5ad(d / "data.h5ad").n_obs == 20
    with pytest.raises(FileExistsError, match=r"model\.pt already exists.*overwrite=True"):
        tiny_model.save(d)
    tiny_model.save(d, prefix="second_")  # another prefix is another model: no conflict
    second = EnsembleSCVI.load(d, adata=tiny_model.adata, prefix="second_")
    assert second.n_members == tiny_model.n_members


def test_model_save_interrupted_keeps_old_model(tmp_path, tiny_model, monkeypatch):
    from ensemblevi.model import _persistence

    tiny_model.save(tmp_path)
    before = (tmp_path / "model.pt").read_bytes()

    def dies(dir_path, prefix, **kw):
        (Path(dir_path) / "model.pt").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(_persistence, "write_saved_model", dies)
    with pytest.raises(KeyboardInterrupt):
        tiny_model.save(tmp_path, overwrite=True)
    assert (tmp_path / "model.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]  # no temp


@pytest.mark.parametrize("content", [b"", b"garbage \x00\x01 not a torch file", "truncate"])
def test_load_names_damaged_model_file(tmp_path, tiny_model, content):
    from ensemblevi.model import EnsembleSCVI

    tiny_model.save(tmp_path)
    model_file = tmp_path / "model.pt"
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2] if content == "truncate" else content)
    for adata in (None, tiny_model.adata):
        with pytest.raises(ValueError, match=r"model\.pt is not a readable saved model") as info:
            EnsembleSCVI.load(tmp_path, adata=adata)
        assert str(model_file) in str(info.value) and "train the model again" in str(info.value)
