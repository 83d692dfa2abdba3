import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from ensemblevi.data import validate_counts


def _adata(x, **layers):
    ad = AnnData(X=x, obs=pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])]))
    ad.var_names = [f"g{j}" for j in range(x.shape[1])]
    ad.obs["batch"] = "b0"
    for k, v in layers.items():
        ad.layers[k] = v
    return ad


@pytest.fixture
def counts():
    return np.random.default_rng(0).poisson(3.0, size=(30, 12)).astype(np.float32)


@pytest.mark.parametrize("fmt", [np.asarray, sp.csr_matrix, sp.csc_matrix])
def test_integer_valued_float_passes(counts, fmt):
    rep = validate_counts(_adata(fmt(counts)))
    assert rep.n_cells == 30 and rep.n_genes == 12
    assert rep.total_counts == pytest.approx(counts.sum())
    assert rep.nnz == np.count_nonzero(counts)


def test_lognormalised_names_problem_and_suggests_counts_layer(counts):
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    ad = _adata(sp.csr_matrix(lognorm), counts=sp.csr_matrix(counts))
    with pytest.raises(ValueError) as err:
        validate_counts(ad)
    msg = str(err.value)
    assert "non-integer" in msg and "adata.X" in msg and "raw integer counts" in msg
    assert "layer='counts'" in msg and "cell 'c" in msg
    assert validate_counts(ad, layer="counts").n_cells == 30


def test_negative_values(counts):
    x = counts.copy()
    x[3, 4] = -2
    with pytest.raises(ValueError, match=r"1 negative value.*cell 'c3', gene 'g4'"):
        validate_counts(_adata(x))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf(counts, bad):
    x = counts.copy()
    x[5, 1] = bad
    x[6, 2] = bad
    with pytest.raises(ValueError, match=r"2 NaN or infinite value.*cell 'c5', gene 'g1'"):
        validate_counts(_adata(sp.csr_matrix(x)))


def test_empty_matrix():
    with pytest.raises(ValueError, match=r"empty \(0 cells x 5 genes\)"):
        validate_counts(AnnData(X=np.zeros((0, 5), dtype=np.float32)))


def test_missing_layer_names_available(counts):
    with pytest.raises(ValueError, match=r"Layer 'raw' not found.*\['counts'\]"):
        validate_counts(_adata(counts, counts=counts), layer="raw")


def test_missing_obs_column(counts):
    with pytest.raises(ValueError, match=r"\['donor'\] not found in adata.obs.*'batch'"):
        validate_counts(_adata(counts), obs_keys=["batch", "donor"])


def test_all_zero_cells_and_genes_warn_and_are_kept(counts):
    x = counts.copy()
    x[[0, 7], :] = 0
    x[:, 3] = 0
    ad = _adata(sp.csr_matrix(x))
    with pytest.warns(UserWarning, match=r"2 of 30 cells and 1 of 12 genes have no counts"):
        rep = validate_counts(ad)
    assert rep.n_zero_cells == 2 and rep.n_zero_genes == 1 and ad.shape == (30, 12)


def test_integer_dtype_negative(counts):
    x = counts.astype(np.int32)
    x[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        validate_counts(_adata(x))


def test_input_not_modified(counts):
    ad = _adata(sp.csr_matrix(counts))
    before = ad.X.copy()
    validate_counts(ad)
    assert (ad.X != before).nnz == 0


def test_duplicate_gene_names_refused(counts):
    ad = _adata(counts)
    ad.var_names = ["g0", "g1", "g1", *[f"g{j}" for j in range(3, 11)], "g0"]
    match = r"2 gene name\(s\).*\['g1', 'g0'\].*var_names_make_unique"
    with pytest.raises(ValueError, match=match):
        validate_counts(ad)
    ad.var_names_make_unique()
    validate_counts(ad)


def test_missing_obs_values_named_with_count_and_fix(counts):
    from ensemblevi.data._validate import missing_obs_values, require_obs_columns

    ad = _adata(counts)
    ad.obs["batch"] = pd.Categorical(["b0", "b1", None] * 10)
    with pytest.raises(ValueError, match=r"obs\['batch'\] has 10 missing value.*'c2'.*notna"):
        validate_counts(ad, obs_keys=["batch"])
    require_obs_columns(ad, ["batch"], complete=False)  # existence only
    assert missing_obs_values(ad) == {"batch": 10}


def test_setup_anndata_refuses_nan_batch(counts):
    from ensemblevi.model import EnsembleSCVI

    ad = _adata(counts)
    ad.obs["batch"] = ["b0", np.nan] * 15
    with pytest.raises(ValueError, match=r"obs\['batch'\] has 15 missing"):
        EnsembleSCVI.setup_anndata(ad, batch_key="batch")


@pytest.mark.parametrize("fmt", [np.asarray, sp.csr_matrix])
def test_check_finite_counts(counts, fmt):
    from ensemblevi.data._validate import check_finite_counts

    x = counts.copy()
    x[4, 2] = np.nan
    x[9, 0] = np.inf
    ad = _adata(fmt(counts), counts=fmt(x))
    check_finite_counts(ad)
    with pytest.raises(ValueError, match=r"layers\['counts'\] has 2 NaN or infinite"):
        check_finite_counts(ad, layer="counts")
    check_finite_counts(ad, layer="counts", indices=[0, 1, 2])  # only those cells
    with pytest.raises(ValueError, match="has 1 NaN"):
        check_finite_counts(ad, layer="counts", indices=[9, 1])


@pytest.mark.parametrize("fmt", [np.asarray, sp.csr_matrix])
def test_check_finite_counts_scans_a_matrix_once_and_a_new_one_again(counts, fmt, monkeypatch):
    from ensemblevi.data import _validate

    scans = []
    real = _validate._n_not_finite
    monkeypatch.setattr(_validate, "_n_not_finite", lambda x: scans.append(1) or real(x))
    ad = _adata(fmt(counts), counts=fmt(counts.copy()))
    for _ in range(3):
        _validate.check_finite_counts(ad, layer="counts")
    assert len(scans) == 1  # remembered as finite
    bad = counts.copy()
    bad[3, 1] = np.nan
    ad.layers["counts"] = fmt(bad)  # a new matrix: scanned again, and refused
    with pytest.raises(ValueError, match="has 1 NaN"):
        _validate.check_finite_counts(ad, layer="counts")
    with pytest.raises(ValueError, match="has 1 NaN"):  # a bad matrix is never remembered
        _validate.check_finite_counts(ad, layer="counts")
    n = len(scans)
    _validate.check_finite_counts(ad[5:].copy(), layer="counts")  # a copy: scanned again
    assert len(scans) == n + 1


def test_get_elbo_on_nan_counts_is_a_named_error():
    import logging
    import warnings

    from ensemblevi.data import synthetic
    from ensemblevi.model import EnsembleSCVI

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    ad = synthetic("lopez2020", seed=0, n_cells=60, n_genes=20)
    EnsembleSCVI.setup_anndata(ad, layer="counts")
    model = EnsembleSCVI(ad, n_members=2, n_hidden=8, n_latent=2, seed=0)
    model.train(max_epochs=1, batch_size=30, enable_progress_bar=False)
    assert np.isfinite(float(model.get_elbo()))
    ad.layers["counts"] = ad.layers["counts"].toarray()
    ad.layers["counts"][5, 3] = np.nan  # e.g. a step that wrote into the counts after setup
    with pytest.raises(ValueError, match=r"layers\['counts'\] has 1 NaN or infinite count"):
        model.get_elbo()
