import gzip

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from ensemblevi.data import (
    HEART_FILE,
    HEART_OBS,
    heart_cell_atlas,
    preprocess,
    read,
    synthetic,
    write_h5ad_atomic,
)


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
