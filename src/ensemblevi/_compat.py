"""Every place where ensemblevi relies on scvi-tools beyond its documented public API.

Kept in one module so that a new scvi-tools release that changes one of them fails
loudly and by name (:func:`ensemblevi._scvi_check.check_scvi_tools`, run by the test suite),
instead of somewhere deep inside a model method. Public API (``BaseModelClass``, the mixins,
``TrainingPlan``, ``AnnDataManager``, the distributions) is imported where it is used.

Rank 0 of the package's layering: nothing from ensemblevi is imported here except
``_constants``. What the model layer adds on top of scvi-tools' mixins (which of their
methods it overrides, runs as they are, or refuses) is checked by
:func:`ensemblevi.model.check_member_contract`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd

# scvi-tools 1.4.2's view_anndata_setup/view_setup_args call rich.pretty.pprint but import
# only rich.table and rich.console, which in rich 15 no longer import rich.pretty: without
# this import both fail with "module 'rich' has no attribute 'pretty'" (scvi.model.SCVI too).
import rich.pretty  # noqa: F401
import scvi
import torch

# Private helpers and constants (not in scvi-tools' public API).
# parse_device_args and _initialize_model: what scvi-tools' BaseModelClass.load does after
# reading the file; ensemblevi's own load reads its JSON + tensors, then does the same
from scvi.model._utils import (  # noqa: F401
    _get_batch_code_from_category,
    _init_library_size,
    parse_device_args,
)
from scvi.model.base._constants import SAVE_KEYS  # the saved-model file layout
from scvi.model.base._save_load import _initialize_model  # noqa: F401


def saved_model_file(dir_path: str | os.PathLike, prefix: str | None = None) -> str:
    """Path of the weights file that ``save`` writes into ``dir_path``.

    Parameters
    ----------
    dir_path
        The directory a model was saved to.
    prefix
        The ``prefix`` given to ``save``.
    """
    return os.path.join(os.fspath(dir_path), f"{prefix or ''}{SAVE_KEYS.MODEL_FNAME}")


def existing_model_file(dir_path: str | os.PathLike, prefix: str | None, cls_name: str) -> str:
    """:func:`saved_model_file`, or an error naming what the folder holds instead.

    Parameters
    ----------
    dir_path
        The directory a model was saved to.
    prefix
        The ``prefix`` given to ``save``.
    cls_name
        The model class, for the conversion hint.
    """
    model_file = saved_model_file(dir_path, prefix)
    legacy = os.path.join(os.fspath(dir_path), f"{prefix or ''}model_params.pt")
    if not os.path.exists(model_file) and os.path.exists(legacy):
        raise ValueError(  # scvi-tools raises ValueError here too
            f"{dir_path} holds a model saved by scvi-tools < 0.15 ({legacy}); convert it "
            f"first with {cls_name}.convert_legacy_save(dir_path, output_dir_path)."
        )
    if not os.path.exists(model_file):
        raise FileNotFoundError(
            f"No saved model at {model_file}; pass the directory given to model.save()."
        )
    return model_file


#: ensemblevi's own save (format 2): ``model.pt`` holds tensors only (read with
#: ``torch.load(weights_only=True)``), and everything else (the attribute dict with the
#: registry, the genes) is JSON in ``model.json`` beside it. Format 1 is scvi-tools' own:
#: one pickled ``model.pt``, which only unpickling reads (ensemblevi before format 2,
#: ``scvi.model.SCVI`` folders).
SAVE_FORMAT = "ensemblevi-model"
SAVE_FORMAT_VERSION = 2
ATTRS_FNAME = "model.json"

#: callables a model's init_params_ may hold (``var_activation``), saved by name
_SAFE_CALLABLES = {
    "torch.exp": torch.exp,
    "torch.nn.functional.softplus": torch.nn.functional.softplus,
    "torch.sigmoid": torch.sigmoid,
}
#: activation modules a model's init_params_ may hold, saved by name with their numeric
#: settings: only these classes are ever built on load (no class is looked up by name)
_SAFE_MODULES = {
    "torch.nn.Softplus": (torch.nn.Softplus, ("beta", "threshold")),
    "torch.nn.Sigmoid": (torch.nn.Sigmoid, ()),
    "torch.nn.ReLU": (torch.nn.ReLU, ()),
    "torch.nn.Identity": (torch.nn.Identity, ()),
}


class UntrustedModelError(ValueError):
    """A saved model can be read only by unpickling it, which can run code it carries.

    Raised for a model in scvi-tools' pickled format (older ensemblevi saves,
    ``scvi.model.SCVI`` folders) and for a ``model.pt`` that holds anything but tensors.
    ``trust=True`` (``--trust-model`` on the command line) reads it anyway.
    """


def untrusted_model(path: str | os.PathLike, why: str) -> UntrustedModelError:
    """The error for a model file that only unpickling reads.

    Parameters
    ----------
    path
        The file.
    why
        What it is, e.g. ``"is in scvi-tools' pickled format"``.
    """
    return UntrustedModelError(
        f"{path} {why}: reading it means unpickling it, and unpickling a file can run any "
        "code it carries (a shared or downloaded model can be crafted to). Load it only if "
        "you trust where it came from: pass trust=True (Python) or --trust-model (command "
        "line). Models saved by this ensemblevi need neither; saving a trusted model again "
        "(model.save) converts it."
    )


def saved_attrs_file(dir_path: str | os.PathLike, prefix: str | None = None) -> str:
    """Path of the JSON half of ensemblevi's own save (``{prefix}model.json``); the
    parameters are :func:`saved_model_file`'s."""
    return os.path.join(os.fspath(dir_path), f"{prefix or ''}{ATTRS_FNAME}")


def _encode(obj, where: str):
    """A JSON value for ``obj``; numpy arrays, DataFrames and tuples tagged to come back."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, np.generic):
        return _encode(obj.item(), where)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufUO":
            raise TypeError(f"{where}: a {obj.dtype} array cannot be saved as JSON")
        kind = "U" if obj.dtype.kind == "U" else obj.dtype.str
        return {
            "__ev__": "ndarray",
            "dtype": kind,
            "shape": list(obj.shape),
            "data": [_encode(v, where) for v in obj.ravel().tolist()],
        }
    if isinstance(obj, pd.DataFrame):
        return {
            "__ev__": "dataframe",
            "columns": [_encode(c, where) for c in obj.columns],
            "index": _encode(obj.index.to_numpy(), where),
            "index_name": obj.index.name,
            "data": [_encode(obj[c].to_numpy(), where) for c in obj.columns],
        }
    if isinstance(obj, tuple):
        return {"__ev__": "tuple", "items": [_encode(v, where) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, where) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__ev__" not in obj:
            return {k: _encode(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return {
            "__ev__": "dict",
            "items": [[_encode(k, where), _encode(v, where)] for k, v in obj.items()],
        }
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # e.g. a Hyperparameter in init_params_: its spec accepts the dict of its fields
        return _encode(dataclasses.asdict(obj), where)
    for name, fn in _SAFE_CALLABLES.items():
        if obj is fn:
            return {"__ev__": "callable", "name": name}
    for name, (cls, fields) in _SAFE_MODULES.items():
        if type(obj) is cls:
            return {
                "__ev__": "module",
                "name": name,
                "kwargs": {f: float(getattr(obj, f)) for f in fields},
            }
    raise TypeError(
        f"{where} is a {type(obj).__name__}, which ensemblevi's save format (JSON, so that "
        "loading never runs code) cannot hold; pass a plain value (numbers, strings, lists, "
        "dicts) or one of " + ", ".join([*_SAFE_CALLABLES, *_SAFE_MODULES]) + "."
    )


def _decode(obj):
    """The value :func:`_encode` wrote; only data is built (no class is looked up by name)."""
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag = obj.get("__ev__")
    if tag is None:
        return {k: _decode(v) for k, v in obj.items()}
    if tag == "ndarray":
        dtype = np.dtype(str) if obj["dtype"] == "U" else np.dtype(obj["dtype"])
        if dtype.kind not in "biufUO":
            raise ValueError(f"unexpected array type {obj['dtype']!r}")
        values = [_decode(v) for v in obj["data"]]
        if dtype.kind == "O":
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
        else:
            arr = np.asarray(values, dtype=dtype)
        return arr.reshape([int(n) for n in obj["shape"]])
    if tag == "dataframe":
        index = pd.Index(_decode(obj["index"]), name=obj.get("index_name"))
        columns = [_decode(c) for c in obj["columns"]]
        data = dict(zip(columns, (_decode(c) for c in obj["data"]), strict=True))
        return pd.DataFrame(data, index=index, columns=columns)
    if tag == "tuple":
        return tuple(_decode(v) for v in obj["items"])
    if tag == "dict":
        return {_hashable(_decode(k)): _decode(v) for k, v in obj["items"]}
    if tag == "callable":
        return _SAFE_CALLABLES[obj["name"]]
    if tag == "module":
        cls, fields = _SAFE_MODULES[obj["name"]]
        kwargs = {f: float(obj["kwargs"][f]) for f in fields}
        return cls(**kwargs)
    raise ValueError(f"unknown tag {tag!r}")


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def write_saved_model(
    dir_path: str | os.PathLike,
    prefix: str | None,
    *,
    state_dict: dict,
    var_names,
    attrs: dict,
    class_name: str,
) -> None:
    """Write a model in ensemblevi's own format: weights in ``model.pt``, the rest JSON.

    Parameters
    ----------
    dir_path
        The folder (written directly; the caller makes the save atomic).
    prefix
        File name prefix.
    state_dict
        The module's weights (tensors).
    var_names
        The genes, in order.
    attrs
        scvi-tools' attribute dict (``registry_``, ``init_params_``, ``history_``, ...).
    class_name
        The model class, for the reader's messages.
    """
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state_dict):
        odd = sorted(set(state_dict) - set(tensors))
        raise TypeError(
            f"the module's state holds non-tensors ({odd[:3]}); ensemblevi's save "
            "format holds tensors only."
        )
    doc = {
        "format": SAVE_FORMAT,
        "version": SAVE_FORMAT_VERSION,
        "class": class_name,
        "var_names": [str(v) for v in np.asarray(var_names).tolist()],
        "attr_dict": {k: _encode(v, k) for k, v in attrs.items()},
    }
    text = json.dumps(doc)  # encoded first: a value JSON cannot hold fails before any write
    # serialised in memory, written by Python: torch's own file writer turns a full disk
    # into a RuntimeError ("unexpected pos"), Python's write gives the OSError (ENOSPC)
    buffer = io.BytesIO()
    torch.save({SAVE_KEYS.MODEL_STATE_DICT_KEY: tensors}, buffer)
    with open(saved_model_file(dir_path, prefix), "wb") as fh:
        fh.write(buffer.getbuffer())
    with open(saved_attrs_file(dir_path, prefix), "w", encoding="utf-8") as fh:
        fh.write(text)


@dataclasses.dataclass
class SavedModel:
    """A saved model as read from disk.

    Parameters
    ----------
    attrs
        scvi-tools' attribute dict (``registry_``, ``init_params_``, ...).
    var_names
        The genes, in order.
    state_dict
        The module's weights (``None`` where only the description was read).
    version
        The save format (1: scvi-tools' pickled file, read with ``trust=True``).
    """

    attrs: dict
    var_names: pd.Index
    state_dict: dict | None
    version: int


def is_safe_save(dir_path: str | os.PathLike, prefix: str | None = None) -> bool:
    """Whether ``dir_path`` holds ensemblevi's own save (readable without unpickling).

    Parameters
    ----------
    dir_path
        The directory a model was saved to.
    prefix
        The ``prefix`` given to ``save``.
    """
    return os.path.isfile(saved_attrs_file(dir_path, prefix))


#: attribute names a saved attr dict may set on a model (scvi-tools saves those ending in _)
_ATTR_NAME = re.compile(r"^[a-z][A-Za-z0-9_]*_$")


def read_saved_model(
    dir_path: str | os.PathLike,
    prefix: str | None = None,
    *,
    trust: bool = False,
    weights: bool = True,
    map_location: str | torch.device = "cpu",
) -> SavedModel:
    """Read a saved model without unpickling anything, unless ``trust`` allows it.

    Parameters
    ----------
    dir_path
        The directory a model was saved to.
    prefix
        The ``prefix`` given to ``save``.
    trust
        Read a model that only unpickling reads (scvi-tools' format, or a ``model.pt``
        holding other objects than tensors). Unpickling runs any code the file carries:
        only for files from a source you trust.
    weights
        Read the weights too (``False``: the genes and attributes only).
    map_location
        Where the weights go.

    Raises
    ------
    UntrustedModelError
        The model needs unpickling and ``trust`` is ``False``; nothing was unpickled.
    ValueError
        The files are damaged.
    """
    model_file = saved_model_file(dir_path, prefix)
    attrs_file = saved_attrs_file(dir_path, prefix)
    if not is_safe_save(dir_path, prefix):
        if not trust:
            raise untrusted_model(
                model_file,
                "is in scvi-tools' pickled format (a model "
                "saved by scvi-tools, or by ensemblevi before its save "
                f"format {SAVE_FORMAT_VERSION})",
            )
        saved = torch.load(model_file, map_location=map_location, weights_only=False)
        return SavedModel(
            saved[SAVE_KEYS.ATTR_DICT_KEY],
            pd.Index(np.asarray(saved[SAVE_KEYS.VAR_NAMES_KEY]).astype(str)),
            saved[SAVE_KEYS.MODEL_STATE_DICT_KEY],
            1,
        )
    try:
        with open(attrs_file, encoding="utf-8") as fh:
            doc = json.load(fh)
        if doc.get("format") != SAVE_FORMAT or not isinstance(doc.get("version"), int):
            raise ValueError(f"not an ensemblevi model description (format {doc.get('format')!r})")
        if doc["version"] > SAVE_FORMAT_VERSION:
            raise ValueError(
                f"saved by a newer ensemblevi (save format {doc['version']}; this "
                f"one reads up to {SAVE_FORMAT_VERSION}): update ensemblevi"
            )
        raw = doc["attr_dict"]
        bad = [k for k in raw if not _ATTR_NAME.match(str(k))]
        if bad:
            raise ValueError(f"attribute names {bad[:3]} are not ones a model saves")
        attrs = {k: _decode(v) for k, v in raw.items()}
        var_names = pd.Index([str(v) for v in doc["var_names"]])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{attrs_file} is not a readable ensemblevi model description ({err}); "
            "it is damaged or was edited. Restore it from a copy or train the "
            "model again."
        ) from err
    state = None
    if weights:
        try:
            try:
                saved = torch.load(model_file, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as err:
                if not zipfile.is_zipfile(model_file):  # not torch's format at all: damaged
                    raise RuntimeError(str(err).splitlines()[-1]) from err
                if not trust:
                    raise untrusted_model(
                        model_file,
                        "holds objects other than tensors, which ensemblevi never saves there",
                    ) from err
                saved = torch.load(model_file, map_location=map_location, weights_only=False)
        except (RuntimeError, EOFError, KeyError, OSError) as err:
            raise ValueError(
                f"{model_file} is not a readable saved model ({type(err).__name__}: "
                f"{err}); it is truncated or damaged, e.g. by a process killed "
                "while copying it. Restore it from a copy or train the model "
                "again."
            ) from err
        state = saved.get(SAVE_KEYS.MODEL_STATE_DICT_KEY) if isinstance(saved, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{model_file} holds no model weights; it is damaged.")
    return SavedModel(attrs, var_names, state, int(doc["version"]))


def saved_var_names(
    dir_path: str | os.PathLike, prefix: str | None = None, *, trust: bool = False
) -> pd.Index:
    """Gene names stored with a saved model (read from its JSON; no weights are loaded).

    Parameters
    ----------
    dir_path
        The directory a model was saved to.
    prefix
        The ``prefix`` given to ``save``.
    trust
        Allow unpickling a model in scvi-tools' format (see :func:`read_saved_model`).
    """
    return read_saved_model(dir_path, prefix, trust=trust, weights=False).var_names


@contextmanager
def data_split_seed(seed: int | None) -> Iterator[None]:
    """Make scvi-tools' train/validation split use ``seed`` without reseeding anything else.

    scvi-tools draws the split from ``scvi.settings.seed``, whose setter also reseeds torch,
    numpy and Python globally. The private ``_seed`` is set instead and restored afterwards.

    Parameters
    ----------
    seed
        Seed of the split; ``None`` leaves the split as scvi-tools would draw it.
    """
    if seed is None:
        yield
        return
    previous = scvi.settings._seed
    scvi.settings._seed = int(seed)
    try:
        yield
    finally:
        scvi.settings._seed = previous


def batch_codes(adata_manager, transform_batch) -> list[int | None]:
    """Batch categories (names or codes, one or a list) as codes, as scvi-tools reads them.

    Parameters
    ----------
    adata_manager
        The model's ``AnnDataManager``.
    transform_batch
        ``None``, one batch category or a list of them.
    """
    return _get_batch_code_from_category(adata_manager, transform_batch)


@functools.cache
def _named_scvi(cls: type) -> type:
    return type("SCVI", (cls,), {"__module__": cls.__module__, "__doc__": cls.__doc__})


@contextmanager
def base_accepts_no_data(model: object) -> Iterator[None]:
    """Let scvi-tools' ``BaseModelClass.__init__`` run for ``adata=None``.

    scvi-tools 1.4 builds a model without data (its module made at ``train``) only for
    classes named ``SCVI`` or ``GIMVI``: a check on the class name, not on any ability. Its
    own initialiser runs here with the instance seen as a subclass of that name.

    Why a class swap and not a hook: ``BaseModelClass.__init__`` has no argument, class
    attribute or method that allows ``adata=None`` (the name test is inline), and
    re-implementing its body here would copy a dozen private attributes that change between
    releases. The swap lasts for that one call and is undone also on an error;
    :func:`ensemblevi._scvi_check.scvi_tools_problems` fails the import if scvi-tools drops
    the name test.

    Parameters
    ----------
    model
        The model being initialised.
    """
    cls = type(model)
    if cls.__name__ in ("SCVI", "GIMVI"):
        yield
        return
    model.__class__ = _named_scvi(cls)
    try:
        yield
    finally:
        model.__class__ = cls
