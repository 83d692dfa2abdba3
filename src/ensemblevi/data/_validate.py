"""Checks that a matrix holds raw counts, with errors that say what to do about it."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

_CHUNK_ROWS = 4096  # rows checked at a time, so a dense 20k x 30k matrix is never copied whole


@dataclass(frozen=True)
class CountsReport:
    """What :func:`validate_counts` found in a valid count matrix.

    Attributes
    ----------
    source
        Where the counts were read (``adata.X`` or a layer).
    n_cells, n_genes
        The matrix' shape.
    dtype
        Its dtype.
    sparse
        Whether it is sparse.
    nnz
        Its non-zero entries.
    total_counts, max_count
        Sum and largest entry.
    n_zero_cells, n_zero_genes
        Cells and genes without any count.
    """

    source: str
    n_cells: int
    n_genes: int
    dtype: str
    sparse: bool
    nnz: int
    total_counts: float
    max_count: float
    n_zero_cells: int
    n_zero_genes: int

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.n_cells * self.n_genes)

    def as_dict(self) -> dict:
        return {**asdict(self), "density": self.density}


def _source_name(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


class _CollectionCounts:
    """Row-sliceable counts of an ``AnnCollection`` behind scvi-tools' ``CollectionAdapter``.

    The adapter's own layer object is a stand-in without a shape, so counts are read
    through views of the collection, a slice of rows at a time.
    """

    def __init__(self, collection, layer: str):
        self.collection, self.layer = collection, layer
        self.shape = (collection.n_obs, collection.n_vars)
        self.dtype = self[0:1].dtype

    def __getitem__(self, rows):
        return self.collection[rows].layers[self.layer]


def is_collection(adata) -> bool:
    """Whether ``adata`` is an ``AnnCollection`` in scvi-tools' ``CollectionAdapter``.

    Parameters
    ----------
    adata
        An AnnData or scvi-tools' ``CollectionAdapter``.
    """
    return _collection(adata) is not None


def _collection(adata):
    """The ``AnnCollection`` behind scvi-tools' ``CollectionAdapter``, else ``None``."""
    from anndata.experimental import AnnCollection

    coll = getattr(adata, "collection", None)
    return coll if isinstance(coll, AnnCollection) else None


def get_counts(adata: AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]``; a missing layer names the ones there are.

    For an ``AnnCollection`` wrapped in scvi-tools' ``CollectionAdapter`` the result reads
    rows lazily (``result[i:j]``), so the files behind it are never loaded whole.

    Parameters
    ----------
    adata
        An AnnData or scvi-tools' ``CollectionAdapter``.
    layer
        Layer holding the counts (``None``: ``X``).
    """
    coll = _collection(adata)
    if coll is not None:
        if layer is None:
            raise ValueError(
                "An AnnCollection (scvi-tools' CollectionAdapter) is read from a layer, not X: "
                "store the counts in a layer of every file (e.g. a.layers['counts'] = a.X) "
                "and pass layer='counts'."
            )
        if layer not in adata.layers.keys():
            raise ValueError(
                f"Layer {layer!r} not found in the collection's layers; available layers: "
                f"{list(adata.layers.keys()) or 'none'}. Pass one of those."
            )
        return _CollectionCounts(coll, layer)
    if layer is None:
        if adata.X is None:
            raise ValueError(
                "adata.X is empty (None). Put the raw counts in adata.X or name the layer "
                f"that holds them with layer=...; available layers: {list(adata.layers)}."
            )
        return adata.X
    if layer not in adata.layers:
        raise ValueError(
            f"Layer {layer!r} not found in adata.layers; available layers: "
            f"{list(adata.layers) or 'none'}. Pass layer=None to use adata.X, or one of those."
        )
    return adata.layers[layer]


def require_obs_columns(adata: AnnData, keys: Iterable[str | None], complete: bool = True) -> None:
    """Raise a ``ValueError`` naming every requested ``obs`` column that is missing.

    Parameters
    ----------
    adata
        The data.
    keys
        ``obs`` columns that must exist (``None`` entries are skipped).
    complete
        Also refuse a column with missing values (NaN, ``None``): scvi-tools would turn
        them into a category error (or a ``TypeError`` in scanpy) far from the cause.
    """
    keys = [k for k in keys if k is not None]
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise ValueError(
            f"Column(s) {missing} not found in adata.obs; available columns: "
            f"{list(adata.obs.columns) or 'none'}. Add the column(s) or pass the right key."
        )
    if complete:
        for key in dict.fromkeys(keys):
            check_obs_complete(adata, key)


def missing_obs_values(adata: AnnData) -> dict[str, int]:
    """Number of missing values (NaN, ``None``) per ``obs`` column that has any.

    Parameters
    ----------
    adata
        The data.
    """
    counts = adata.obs.isna().sum()
    return {str(k): int(v) for k, v in counts.items() if v}


def check_obs_complete(adata: AnnData, key: str) -> None:
    """Raise a ``ValueError`` when ``obs[key]`` has missing values, with their number and fix.

    Parameters
    ----------
    adata
        The data.
    key
        An ``obs`` column (batch, labels, covariate).
    """
    na = adata.obs[key].isna().to_numpy()
    if na.any():
        first = adata.obs_names[np.flatnonzero(na)[0]]
        raise ValueError(
            f"obs[{key!r}] has {int(na.sum())} missing value(s) (NaN) in {adata.n_obs} cells, "
            f"e.g. cell {first!r}; every cell needs a {key}. Drop those cells "
            f"(adata = adata[adata.obs[{key!r}].notna()].copy()) or give them a value of "
            "their own (e.g. 'unknown')."
        )


def check_size(
    adata: AnnData, *, min_cells: int = 1, min_genes: int = 1, what: str = "the data", why: str = ""
) -> None:
    """Raise a ``ValueError`` when ``adata`` has fewer cells or genes than a job needs.

    Parameters
    ----------
    adata
        The data (after any selection the job makes).
    min_cells, min_genes
        The least the job needs.
    what
        What the data is, in words ("the query", "the data after gene selection").
    why
        Why that many are needed (added to the message).
    """
    short = [
        f"{n:,} {unit} (needs at least {low:,})"
        for n, low, unit in ((adata.n_obs, min_cells, "cells"), (adata.n_vars, min_genes, "genes"))
        if n < low
    ]
    if short:
        raise ValueError(
            f"{what[0].upper()}{what[1:]} has {' and '.join(short)}"
            f"{': ' + why if why else ''}. Nothing was trained."
        )


def check_labels_column(adata: AnnData, key: str, option: str = "labels_key") -> None:
    """Raise a ``ValueError`` when ``obs[key]`` looks continuous, not a set of cell types.

    A float column with non-integer values, or a column with a distinct value for more
    than half of the cells (above 100 values), is a measurement or an id, not a label:
    each value would become a class of one or a few cells.

    Parameters
    ----------
    adata
        The data.
    key
        The ``obs`` column of the labels.
    option
        The option that named it (for the message).
    """
    col = adata.obs[key]
    values = col.dropna()
    n_levels = int(values.nunique())
    floats = pd.api.types.is_float_dtype(col.dtype) and bool(
        (np.asarray(values, dtype=np.float64) % 1 != 0).any()
    )
    if floats or (n_levels > 100 and n_levels > 0.5 * adata.n_obs):
        kind = "non-integer numbers" if floats else "values"
        raise ValueError(
            f"{option} {key!r} holds {n_levels:,} distinct {kind} in {adata.n_obs:,} cells: it "
            "looks like a measurement or an id, not cell types, and each value would be a "
            "type of its own. Pass the obs column of the cell types (categories or strings)."
        )


def check_unique_genes(adata: AnnData) -> None:
    """Raise a ``ValueError`` naming duplicated gene names (``var_names``).

    A duplicated name makes every look-up by gene (markers, DE tables, loading a model onto
    new data) read one of the columns and silently ignore the other.

    Parameters
    ----------
    adata
        The data.
    """
    names = adata.var_names
    if names.is_unique:
        return
    dup = names[names.duplicated()].unique()
    raise ValueError(
        f"{len(dup)} gene name(s) occur more than once in adata.var_names, e.g. "
        f"{list(dup[:5])}; a gene looked up by name would be read from one of its columns "
        "only. Make them unique first: adata.var_names_make_unique() (or use gene ids as "
        "var_names)."
    )


_FINITE: dict[int, tuple[weakref.ref, tuple]] = {}  # id -> (ref, fingerprint): found finite


def _fingerprint(x) -> tuple | None:
    """Buffer addresses, shape and type of a count matrix (``None``: not remembered)."""
    if isinstance(x, np.ndarray):
        return ("dense", x.__array_interface__["data"][0], x.shape, x.strides, x.dtype.str)
    if sp.issparse(x) and hasattr(x, "indptr"):
        buffers = (x.data, x.indices, x.indptr)
        return ("sparse", x.format, x.shape, *(b.__array_interface__["data"][0] for b in buffers))
    return None


def check_finite_counts(
    adata: AnnData, layer: str | None = None, indices: Iterable[int] | None = None
) -> None:
    """Raise a ``ValueError`` when the counts hold NaN or infinite values.

    A cheaper check than :func:`validate_counts`, for data given to a trained model: a NaN
    count makes every likelihood ``nan`` without an error. A matrix found finite is
    remembered (object, buffer addresses, shape) and not scanned again by the next
    inference call; a new matrix (``adata.X = ...``) is scanned again, values written
    into a checked one in place are not seen.

    Parameters
    ----------
    adata
        The data.
    layer
        Layer holding the counts (``None``: ``X``).
    indices
        Only these cells (``None``: all; a NaN elsewhere is only reported for them).
    """
    x = get_counts(adata, layer)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        return
    key, (ref, known) = _fingerprint(x), _FINITE.get(id(x), (lambda: None, None))
    if key is not None and ref() is x and known == key:
        return
    n_bad, ident = _n_not_finite(x), id(x)
    if not n_bad and key is not None:
        _FINITE[ident] = (weakref.ref(x, lambda _: _FINITE.pop(ident, None)), key)
    if n_bad and indices is not None:
        rows = np.unique(np.asarray(list(indices), dtype=int))
        if len(rows) < x.shape[0]:
            n_bad = _n_not_finite(x[rows])
    if n_bad:
        raise ValueError(
            f"{_source_name(layer)} has {n_bad} NaN or infinite count(s); every likelihood of "
            "those cells would be nan. Raw counts are always finite: reload the count matrix "
            "or drop the affected cells/genes (and check any step that wrote into it)."
        )


def _n_not_finite(x) -> int:
    """NaN and infinite values of a dense or sparse matrix, counted chunk by chunk."""
    vals = (rows.data if sp.issparse(rows) else rows for _, rows in _row_chunks(x))
    return sum(int(v.size - np.isfinite(v).sum()) for v in vals)


def check_setup_data(
    adata: AnnData,
    layer: str | None,
    obs_keys: Iterable[str | None],
    continuous_keys: Iterable[str],
    size_factor_key: str | None,
) -> None:
    """The checks of ``EnsembleSCVI.setup_anndata``: structure, not the likelihood's needs.

    Whether the data must be raw integer counts depends on the likelihood, so
    :func:`validate_counts` runs where the model is built. Here: the data exist, are not
    empty, are finite, gene names are unique, the ``obs`` columns exist without missing
    values, continuous covariates are finite and size factors positive and finite.

    Parameters
    ----------
    adata
        The data.
    layer
        Layer holding the data (``None``: ``X``).
    obs_keys
        Categorical ``obs`` columns (batch, labels, covariates; ``None`` entries skipped).
    continuous_keys
        Continuous covariate columns.
    size_factor_key
        The size factor column, or ``None``.
    """
    x = get_counts(adata, layer)  # a missing layer is named with the ones there are
    if 0 in x.shape:
        raise ValueError(
            f"{_source_name(layer)} is empty ({x.shape[0]} cells x {x.shape[1]} genes); a "
            "model needs at least one cell and one gene."
        )
    check_finite_counts(adata, layer=layer)
    check_unique_genes(adata)
    continuous_keys = list(continuous_keys)
    require_obs_columns(adata, [*obs_keys, size_factor_key, *continuous_keys])
    if size_factor_key is not None:
        check_size_factors(adata, size_factor_key)
    for key in continuous_keys:
        values = np.asarray(adata.obs[key], dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(
                f"Continuous covariate obs[{key!r}] has {int((~np.isfinite(values)).sum())} "
                "NaN or infinite values; fill or drop those cells first."
            )


def check_size_factors(adata: AnnData, key: str) -> None:
    """Raise a ``ValueError`` unless ``obs[key]`` holds positive, finite size factors.

    The likelihood uses ``log(size factor)`` as the log library, so a zero, negative or
    missing factor would make every likelihood of that cell ``nan`` or infinite.

    Parameters
    ----------
    adata
        The data.
    key
        The ``obs`` column of the size factors.
    """
    try:
        values = np.asarray(adata.obs[key], dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"Size factors obs[{key!r}] are not numbers ({err}); pass the column of "
            "per-cell size factors (positive floats) as size_factor_key."
        ) from err
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        first = adata.obs_names[np.flatnonzero(bad)[0]]
        raise ValueError(
            f"Size factors obs[{key!r}] have {int(bad.sum())} value(s) that are not positive "
            f"and finite, e.g. cell {first!r}: {values[bad][0]!r}. The library is their log: "
            "fix or drop those cells, or set up without size_factor_key to use total counts."
        )


def _row_chunks(x) -> Iterator[tuple[int, Any]]:
    """Yield (first row, rows) per chunk of rows: CSR chunks for sparse input, arrays else.

    Works on in-memory and backed matrices (h5py datasets, anndata's sparse datasets)
    alike, so validating an atlas never holds more than one chunk besides the data.
    """
    n = x.shape[0]
    if sp.issparse(x) and x.format != "csr":
        x = x.tocsr()
    for start in range(0, n, _CHUNK_ROWS):
        chunk = x[start : start + _CHUNK_ROWS]
        yield start, sp.csr_matrix(chunk) if sp.issparse(chunk) else np.asarray(chunk)


def _example(adata: AnnData, x, mask_fn) -> str:
    """Locate the first offending entry (cell, gene, value) for an error message."""
    if not sp.issparse(x) and not isinstance(x, np.ndarray):
        x = x[:]  # a backed matrix, read only on this error path
    if sp.issparse(x):
        coo = sp.coo_matrix(x)
        bad = np.flatnonzero(mask_fn(coo.data))
        if bad.size == 0:
            return ""
        i, j, v = coo.row[bad[0]], coo.col[bad[0]], coo.data[bad[0]]
    else:
        arr = np.asarray(x)
        idx = np.argwhere(mask_fn(arr))
        if idx.size == 0:
            return ""
        i, j = idx[0]
        v = arr[i, j]
    return f" e.g. cell {adata.obs_names[i]!r}, gene {adata.var_names[j]!r}: {v!r}"


def _integer_layers(adata: AnnData, exclude: str | None) -> list[str]:
    """Names of other layers (and raw) that look like counts, to suggest as the fix."""
    out = []
    coll = _collection(adata)
    if coll is not None:  # a sample of the collection stands in for its layers
        adata = coll[: min(200, coll.n_obs)].to_adata()
    for name, mat in adata.layers.items():
        if name == exclude:
            continue
        vals = mat.data if sp.issparse(mat) else np.asarray(mat[:200])
        vals = np.asarray(vals[:100_000])
        if (
            vals.size
            and np.all(np.isfinite(vals))
            and np.all(vals >= 0)
            and np.all(vals == np.round(vals))
        ):
            out.append(f"layer={name!r}")
    if adata.raw is not None:
        vals = adata.raw.X.data if sp.issparse(adata.raw.X) else np.asarray(adata.raw.X[:200])
        vals = np.asarray(vals[:100_000])
        if vals.size and np.all(vals >= 0) and np.all(vals == np.round(vals)):
            out.append("adata.raw.to_adata()")
    return out


def validate_counts(
    adata: AnnData,
    layer: str | None = None,
    obs_keys: Iterable[str | None] = (),
    warn_zeros: bool = True,
) -> CountsReport:
    """Check that ``adata`` holds raw counts where scVI-style models will read them.

    Parameters
    ----------
    adata
        The data. Nothing in it is changed.
    layer
        Layer holding the counts; ``None`` means ``adata.X``.
    obs_keys
        ``obs`` columns that must exist, without missing values (batch, labels,
        covariates).
    warn_zeros
        Warn, with their number, about cells or genes with no counts at all. They are not
        dropped: filtering is the caller's decision.

    Returns
    -------
    CountsReport
        Shape, sparsity, totals and the number of all-zero cells and genes.

    Raises
    ------
    ValueError
        For an empty matrix, a missing layer or column, a column with missing values,
        duplicated gene names, NaN/inf, negative or non-integer values. The message names
        the problem, where it is, an example entry and the fix.
    """
    src = _source_name(layer)
    x = get_counts(adata, layer)
    require_obs_columns(adata, obs_keys)
    check_unique_genes(adata)
    n_cells, n_genes = x.shape
    if n_cells == 0 or n_genes == 0:
        raise ValueError(
            f"{src} is empty ({n_cells} cells x {n_genes} genes). Check the file and any "
            "filtering done before this call; a model needs at least one cell and one gene."
        )

    n_nonfinite = n_negative = n_fraction = 0
    total = 0.0
    vmax = 0.0
    integer_dtype = np.issubdtype(x.dtype, np.integer) or x.dtype == bool
    nnz, sparse = 0, sp.issparse(x)
    cell_sum = np.zeros(n_cells)
    gene_sum = np.zeros(n_genes)
    for start, rows in _row_chunks(x):
        sparse = sp.issparse(rows)
        vals = rows.data if sparse else rows
        # |x| sums: zero-count cells/genes are reported even when negatives are present
        abs_rows = abs(rows)
        cell_sum[start : start + rows.shape[0]] = np.asarray(abs_rows.sum(axis=1)).ravel()
        gene_sum += np.asarray(abs_rows.sum(axis=0)).ravel()
        nnz += int(rows.count_nonzero() if sp.issparse(rows) else np.count_nonzero(rows))
        if not integer_dtype:
            finite = np.isfinite(vals)
            n_nonfinite += int(vals.size - finite.sum())
            vals = vals[finite]
            n_fraction += int(np.count_nonzero(vals != np.round(vals)))
        n_negative += int(np.count_nonzero(vals < 0))
        if vals.size:
            total += float(vals.sum(dtype=np.float64))
            vmax = max(vmax, float(vals.max()))

    if n_nonfinite:
        raise ValueError(
            f"{src} has {n_nonfinite} NaN or infinite value(s)"
            f"{_example(adata, x, lambda v: ~np.isfinite(v))}. Raw counts are always finite: "
            "reload the count matrix, or drop the affected cells/genes before training."
        )
    if n_negative:
        raise ValueError(
            f"{src} has {n_negative} negative value(s){_example(adata, x, lambda v: v < 0)}. "
            "Counts cannot be negative, so this looks scaled or batch-corrected "
            "(e.g. sc.pp.scale or regress_out). scVI-style models need the raw counts: "
            + _fix_hint(adata, layer)
        )
    if n_fraction:
        raise ValueError(
            f"{src} has {n_fraction} non-integer value(s)"
            f"{_example(adata, x, lambda v: np.isfinite(v) & (v != np.round(v)))}; it looks "
            "log-normalised or otherwise transformed. scVI-style models need raw integer "
            "counts: " + _fix_hint(adata, layer)
        )

    n_zero_cells = int(np.count_nonzero(cell_sum == 0))
    n_zero_genes = int(np.count_nonzero(gene_sum == 0))
    if warn_zeros and (n_zero_cells or n_zero_genes):
        warnings.warn(
            f"{src}: {n_zero_cells} of {n_cells} cells and {n_zero_genes} of {n_genes} genes "
            "have no counts at all. They are kept; filter them (sc.pp.filter_cells / "
            "sc.pp.filter_genes, or ensemblevi.data.preprocess) if they should not be modelled.",
            UserWarning,
            stacklevel=2,
        )
    return CountsReport(
        source=src,
        n_cells=n_cells,
        n_genes=n_genes,
        dtype=str(x.dtype),
        sparse=bool(sparse),
        nnz=nnz,
        total_counts=total,
        max_count=vmax,
        n_zero_cells=n_zero_cells,
        n_zero_genes=n_zero_genes,
    )


def _fix_hint(adata: AnnData, layer: str | None) -> str:
    candidates = _integer_layers(adata, exclude=layer)
    if candidates:
        return f"these look like counts, use one of them: {', '.join(candidates)}."
    return (
        "pass layer='<name>' for the layer that holds them (e.g. layers['counts'] saved before "
        "normalisation), or reload the raw count matrix."
    )
