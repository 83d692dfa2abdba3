"""What a trained model depends on, as a record saved with it: the reuse check reads this.

A saved model is reused only when its record matches what a new training would see:

- ``counts``: a blake2b hash of the registered count matrix (CSR/CSC: shape, dtype,
  ``data``, ``indices``, ``indptr``; dense: shape, dtype and the C-ordered bytes);
- ``genes`` and ``cells``: hashes of ``var_names`` and ``obs_names`` (order included);
- ``obs``: a hash of each ``obs`` column the model registered (batch, labels);
- ``config``: the options the training used;
- ``ensemblevi``: the package version.

The same matrix stored differently (e.g. unsorted sparse indices) hashes differently: the
check errs towards retraining, never towards reusing a model of other data. The one reuse
path (:func:`reuse_problems`, :func:`save_with_record`) serves ``run``'s model and
``tl.seed_ensemble``'s seeds; :func:`option_changes` is the one "what changed" between two
option dicts (records, ``run.json``, ``train.json``). This module imports only other lowest
layers (it is one itself).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ensemblevi._compat import SAVE_KEYS, is_safe_save
from ensemblevi._files import write_json
from ensemblevi._version import __version__

#: the record's file name inside a saved model's directory
RECORD = "ensemblevi.json"


def _digest(*chunks: bytes | memoryview) -> str:
    h = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _array_bytes(a: np.ndarray) -> list[bytes | memoryview]:
    a = np.ascontiguousarray(a)
    # shape and dtype first: equal bytes of a (2, 3) and a (3, 2) matrix must not match
    return [f"{a.shape}{a.dtype.str}".encode(), memoryview(a).cast("B")]


def weights_digest(model) -> str:
    """A digest of a model's weights (every tensor of its module's state, names included).

    What a result computed from a model's weights records, so that it is reused (a stored
    latent) or trusted (a saved scANVI's source ensemble) only for the same weights.

    Parameters
    ----------
    model
        A scvi-tools model (``model.module`` a ``torch.nn.Module``).
    """
    import torch

    chunks: list[bytes | memoryview] = []
    for name, tensor in model.module.state_dict().items():
        chunks.append(name.encode())
        # as raw bytes: numpy has no bfloat16, and equal bytes are equal weights
        raw = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        chunks += [f"{tuple(tensor.shape)}{tensor.dtype}".encode(), memoryview(raw)]
    return _digest(*chunks)


def matrix_digest(x: Any) -> str:
    """A hash of a count matrix's content (scipy sparse, numpy or anything ``np.asarray`` reads).

    Parameters
    ----------
    x
        The matrix.
    """
    import scipy.sparse as sp

    if sp.issparse(x):
        x = sp.csr_matrix(x) if x.format not in ("csr", "csc") else x
        return _digest(
            f"{x.format}{x.shape}".encode(),
            *_array_bytes(x.data),
            *_array_bytes(x.indices),
            *_array_bytes(x.indptr),
        )
    return _digest(*_array_bytes(np.asarray(x)))


def _names_digest(names: Iterable[Any]) -> str:
    # JSON of the list: "a,b" + "c" and "a" + "b,c" differ
    return _digest(json.dumps([str(n) for n in names]).encode())


def data_fingerprint(adata, layer: str | None, obs_keys: Iterable[str | None] = ()) -> dict:
    """The data part of a model record: hashes of counts, genes, cells and used obs columns.

    Parameters
    ----------
    adata
        The AnnData the model is (or would be) trained on.
    layer
        Layer holding the counts (``None``: ``X``).
    obs_keys
        ``obs`` columns the model registers (``None`` entries are skipped).
    """
    counts = adata.X if layer is None else adata.layers[layer]
    obs = {key: _names_digest(adata.obs[key].astype(str)) for key in obs_keys if key is not None}
    return {
        "counts": matrix_digest(counts),
        "shape": list(counts.shape),
        "genes": _names_digest(adata.var_names),
        "cells": _names_digest(adata.obs_names),
        "obs": obs,
    }


def model_record(data: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
    """A model record: the data fingerprint, the training options and the version.

    Parameters
    ----------
    data
        From :func:`data_fingerprint`.
    config
        The options the training used (JSON-serialisable).

    Returns
    -------
    The record as the saved one reads back (through JSON), so the two compare equal.
    """
    record = {"data": dict(data), "config": dict(config), "ensemblevi": __version__}
    return json.loads(json.dumps(record, default=str))


def option_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every option whose value differs (sorted by key).

    Parameters
    ----------
    old, new
        Two option dicts (a missing key reads as ``None``).
    """
    keys = sorted(set(old) | set(new), key=str)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def differences(saved: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """What differs between a saved record and the wanted one, in words (empty: a match).

    Parameters
    ----------
    saved
        The saved model's record (``None``: there is none).
    wanted
        The record of the training that would happen now.
    """
    if saved is None:
        return ["the saved model has no record of its data and configuration"]
    out = []
    names = {
        "counts": "the count matrix",
        "shape": "the matrix shape",
        "genes": "the genes",
        "cells": "the cells (names or order)",
    }
    old_data, new_data = saved.get("data", {}), wanted["data"]
    for part, words in names.items():
        if old_data.get(part) != new_data.get(part):
            out.append(f"{words} changed")
    old_obs, new_obs = old_data.get("obs", {}), new_data.get("obs", {})
    for key in sorted(set(old_obs) | set(new_obs)):
        if old_obs.get(key) != new_obs.get(key):
            out.append(
                f"obs[{key!r}] changed"
                if key in old_obs and key in new_obs
                else f"obs[{key!r}] used by one and not the other"
            )
    out += option_changes(saved.get("config", {}), wanted["config"])
    if saved.get("ensemblevi") != wanted["ensemblevi"]:
        out.append(f"ensemblevi version {saved.get('ensemblevi')} -> {wanted['ensemblevi']}")
    return out


def read_record(model_dir: str | os.PathLike) -> dict | None:
    """The record saved with a model, or ``None`` (no model, no record, unreadable record).

    Parameters
    ----------
    model_dir
        The saved model's directory.
    """
    try:
        return json.loads((Path(model_dir) / RECORD).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def write_record(model_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Save ``record`` with the model in ``model_dir`` (atomically).

    Parameters
    ----------
    model_dir
        The saved model's directory.
    record
        From :func:`model_record`.
    """
    return write_json(Path(model_dir) / RECORD, dict(record))


def reuse_problems(
    model_dir: str | os.PathLike, wanted: Mapping[str, Any], *, trust: bool = False
) -> list[str] | None:
    """Why the model saved in ``model_dir`` may not be reused for ``wanted`` (empty: it may).

    Parameters
    ----------
    model_dir
        The saved model's directory.
    wanted
        The record of the training that would happen now.
    trust
        A model in scvi-tools' pickled format may be reused (loading it unpickles it).

    Returns
    -------
    ``None`` where no model is saved there; else what differs, in words.
    """
    model_dir = Path(model_dir)
    if not (model_dir / SAVE_KEYS.MODEL_FNAME).is_file():
        return None
    problems = differences(read_record(model_dir), wanted)
    if not trust and not is_safe_save(model_dir):
        problems.append(
            "the saved model is in scvi-tools' pickled format, which only "
            "unpickling reads (--trust-model / trust=True reuses it)"
        )
    return problems


def save_with_record(
    model_dir: str | os.PathLike, record: Mapping[str, Any], save: Callable[[Path], Any]
) -> Path:
    """Save a model with its record: the stale record goes first, the new one comes last.

    A model without a record is never reused, so a process killed in between costs a
    retraining, never a wrong reuse. Other files in the folder are left alone.

    Parameters
    ----------
    model_dir
        The model's directory.
    record
        From :func:`model_record`.
    save
        Called with ``model_dir``: saves the model there.
    """
    model_dir = Path(model_dir)
    (model_dir / RECORD).unlink(missing_ok=True)
    save(model_dir)
    return write_record(model_dir, record)
