"""Reading count data from disk and writing results back without risking the inputs."""

from __future__ import annotations

import os
from pathlib import Path

from anndata import AnnData

from ensemblevi._files import atomic_file

from ._validate import require_obs_columns, validate_counts

HEART_FILE = "hca_subsampled_20k.h5ad"
HEART_OBS = ("cell_type", "cell_source", "donor", "percent_mito", "percent_ribo")


def read(path: str | os.PathLike, layer: str | None = None, validate: bool = True) -> AnnData:
    """Read count data into memory and check it with :func:`validate_counts`.

    Parameters
    ----------
    path
        An ``.h5ad`` file, a 10x ``.h5`` file, or a 10x matrix directory (``matrix.mtx[.gz]``
        with its barcodes and features files). The file is only read, never written.
    layer
        Layer that holds the raw counts (``None``: ``X``).
    validate
        Run :func:`validate_counts` on the result.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        An unknown file type, or a file that cannot be read (truncated, damaged, another
        format under this extension): the message names the file and the fix.
    """
    import anndata
    import scanpy as sc

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No file or directory at {str(path)!r}. Check the path.")
    if path.is_dir():
        if not any(path.glob("matrix.mtx*")):
            raise ValueError(
                f"{str(path)!r} is a directory without matrix.mtx[.gz]; point read() at a 10x "
                "matrix directory, a 10x .h5 file or an .h5ad file."
            )
        adata = sc.read_10x_mtx(path)
    elif path.suffix == ".h5ad":
        adata = _read_file(anndata.read_h5ad, path, "AnnData (.h5ad)", "adata.write_h5ad")
    elif path.suffix == ".h5":
        adata = _read_file(sc.read_10x_h5, path, "10x HDF5 matrix (.h5)", "Cell Ranger")
    else:
        raise ValueError(
            f"Cannot read {str(path)!r}: unknown file type {path.suffix!r}. Supported: .h5ad, "
            "10x .h5 and 10x matrix directories (convert other formats with scanpy first)."
        )
    if validate:
        validate_counts(adata, layer=layer)
    return adata


def _read_file(reader, path: Path, kind: str, writer: str) -> AnnData:
    """``reader(path)``, with a damaged or mislabelled file named in a short error."""
    try:
        return reader(path)
    except MemoryError:
        raise
    except Exception as err:  # h5py's OSError, or KeyError/ValueError deep in the reader
        text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ValueError(
            f"{str(path)!r} is not a readable {kind} file ({type(err).__name__}: {text}). It "
            "may be truncated or damaged (e.g. an interrupted copy or download), or another "
            f"format with this extension. Copy or download it again, or re-export it "
            f"({writer})."
        ) from err


def write_h5ad_atomic(adata: AnnData, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``adata`` to ``path`` through a temporary file in the same folder.

    An interrupted write leaves either the old file or none, never a truncated one.

    Parameters
    ----------
    adata
        The data to write.
    path
        The ``.h5ad`` file.
    overwrite
        Replace an existing file (else :class:`FileExistsError`).
    """
    with atomic_file(path, overwrite=overwrite) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def heart_cell_atlas(
    save_path: str | os.PathLike = "data/",
    download: bool = False,
    remove_nuisance_clusters: bool = True,
) -> AnnData:
    """The adult human heart atlas subsample the project's science started from.

    Loads ``hca_subsampled_20k.h5ad`` (18,641 cells x 26,662 genes after removing doublets
    and unassigned cells; obs ``cell_type``, ``cell_source``, ``donor``, ``percent_mito``,
    ``percent_ribo``) through :func:`scvi.data.heart_cell_atlas_subsampled`, which uses a file
    already in ``save_path`` as it is.

    Parameters
    ----------
    save_path
        Folder that holds (or will hold) ``hca_subsampled_20k.h5ad``.
    download
        Allow scvi-tools to download the file when it is absent. Off by default so that
        nothing reaches the network unless asked.
    remove_nuisance_clusters
        Drop the ``doublets`` and ``NotAssigned`` cells, as scvi-tools does.
    """
    import scvi

    target = Path(save_path) / HEART_FILE
    if not target.exists() and not download:
        raise FileNotFoundError(
            f"Heart atlas file not found: expected {str(target)!r}. Copy "
            f"{HEART_FILE} there (scvi.data.heart_cell_atlas_subsampled downloads it on a "
            "machine with network access), or pass download=True where the network is "
            "reachable."
        )
    adata = scvi.data.heart_cell_atlas_subsampled(
        save_path=str(save_path), remove_nuisance_clusters=remove_nuisance_clusters
    )
    validate_counts(adata, warn_zeros=False)
    # the atlas's own annotation columns must be there; a gap in one is for the analysis
    # that uses it to judge, not a reason to refuse the data
    require_obs_columns(adata, HEART_OBS, complete=False)
    return adata
