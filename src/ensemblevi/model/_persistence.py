"""Saving and loading models without pickles: the one place of ensemblevi's save format.

A model is saved as ``model.pt`` (its weights, tensors only: read back with
``torch.load(weights_only=True)``) and ``model.json`` (everything else: scvi-tools'
attribute dict with the registry and constructor arguments, the genes, the save format's
version), written atomically. Loading reads these two files and builds the model as
scvi-tools' ``BaseModelClass.load`` does, so loading a model never runs code it carries.

A folder in scvi-tools' own format (one pickled ``model.pt``: ensemblevi before save
format 2, ``scvi.model.SCVI``) is refused with :class:`~ensemblevi._compat.UntrustedModelError`
unless ``trust=True``; then scvi-tools' own load reads it. The file layout itself (the
JSON encoding) is in :mod:`ensemblevi._compat` (``write_saved_model``,
``read_saved_model``), below every layer that reads a saved model.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, Self

import pandas as pd
from anndata import AnnData

from ensemblevi._compat import (
    SAVE_KEYS,
    UntrustedModelError,
    _initialize_model,
    existing_model_file,
    is_safe_save,
    parse_device_args,
    read_saved_model,
    saved_model_file,
    write_saved_model,
)

__all__ = ["SafePersistenceMixin", "UntrustedModelError", "load_model", "save_model"]


def save_model(
    model,
    dir_path: str | os.PathLike,
    *,
    prefix: str | None = None,
    overwrite: bool = False,
    save_anndata: bool = False,
    **anndata_write_kwargs: Any,
) -> None:
    """Save any scvi-tools model in ensemblevi's format, atomically, touching only its files.

    Parameters
    ----------
    model
        A model (``BaseModelClass``, data registered with ``setup_anndata``).
    dir_path
        Folder of the saved model (created if needed; it may hold other files).
    prefix
        Prefix of the file names.
    overwrite
        Replace a model saved there before.
    save_anndata
        Also save the AnnData (``{prefix}adata.h5ad``).
    **anndata_write_kwargs
        Passed to ``AnnData.write``.
    """
    from ensemblevi._files import TMP_PREFIX, move_into

    dir_path = os.path.abspath(os.fspath(dir_path))
    model_file = saved_model_file(dir_path, prefix)
    own = [model_file] + (
        [os.path.join(dir_path, f"{prefix or ''}adata.h5ad")] if save_anndata else []
    )
    existing = [f for f in own if os.path.exists(f)]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; pass overwrite=True to replace the saved model "
            "(or save to another folder)."
        )
    # scvi-tools' attribute dict: the public attributes ending in _
    attrs = {a: v for a, v in model._get_user_attributes() if a[-1] == "_"}
    state = model.module.state_dict()
    os.makedirs(dir_path, exist_ok=True)
    # inside dir_path: same file system for the renames, and a folder an interrupted
    # save leaves behind carries the prefix that clean_temporaries removes
    tmp = os.path.join(dir_path, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(tmp)
        if save_anndata:
            model.adata.write(
                os.path.join(tmp, f"{prefix or ''}{SAVE_KEYS.ADATA_FNAME}"), **anndata_write_kwargs
            )
        write_saved_model(
            tmp,
            prefix,
            state_dict=state,
            var_names=model.get_var_names(),
            attrs=attrs,
            class_name=type(model).__name__,
        )
        move_into(tmp, dir_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_genes(dir_path, saved_vars: pd.Index, adata: AnnData) -> None:
    """Refuse an AnnData whose genes (or their order) differ from a saved model's.

    Parameters
    ----------
    dir_path
        The saved model's folder (named in the error).
    saved_vars
        The model's genes.
    adata
        The data to attach.
    """
    given = pd.Index(adata.var_names.astype(str))
    if saved_vars.equals(given):
        return
    missing = saved_vars.difference(given)
    extra = given.difference(saved_vars)
    order = " (same genes, other order)" if not len(missing) and not len(extra) else ""
    raise ValueError(
        f"The model at {dir_path} was trained on {len(saved_vars)} genes; this "
        f"AnnData has {len(given)}{order}. Missing here: {len(missing)} "
        f"(e.g. {list(missing[:5])}); not in the model: {len(extra)} "
        f"(e.g. {list(extra[:5])}). Subset and order the AnnData as "
        "adata[:, model_var_names] before loading."
    )


def load_model(
    cls,
    dir_path: str | os.PathLike,
    adata: AnnData | None = None,
    *,
    prefix: str | None = None,
    trust: bool = False,
    accelerator: str = "auto",
    device: int | str = "auto",
):
    """Load a model of class ``cls`` saved by :func:`save_model`, without unpickling.

    Builds the model as scvi-tools' ``BaseModelClass.load`` does (``setup_anndata`` with
    the saved registry, the saved constructor arguments and attributes, the weights).

    Parameters
    ----------
    cls
        The model class (its name must match the saved one).
    dir_path
        The folder given to :func:`save_model`.
    adata
        AnnData to attach (same genes, same order); ``None``: the one saved with the model
        (``adata.h5ad``).
    prefix
        Prefix the model was saved with.
    trust
        Also read a model in scvi-tools' pickled format (through scvi-tools' own load).
        Unpickling runs any code the file carries: only for files you trust.
    accelerator, device
        Where the model goes, as in scvi-tools.

    Raises
    ------
    UntrustedModelError
        The folder needs unpickling and ``trust`` is ``False`` (nothing was unpickled).
    ValueError
        Damaged files, other genes, or a model of another class.
    """
    from scvi.data._constants import _MODEL_NAME_KEY, _SETUP_ARGS_KEY, _SETUP_METHOD_NAME

    existing_model_file(dir_path, prefix, cls.__name__)
    if not is_safe_save(dir_path, prefix):
        saved = read_saved_model(dir_path, prefix, trust=trust, weights=False)  # refuses
        if adata is not None:
            check_genes(dir_path, saved.var_names, adata)
        load = (
            super(SafePersistenceMixin, cls).load
            if issubclass(cls, SafePersistenceMixin)
            else cls.load
        )
        return load(
            os.fspath(dir_path), adata=adata, prefix=prefix, accelerator=accelerator, device=device
        )
    _, _, dev = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
    )
    saved = read_saved_model(dir_path, prefix, trust=trust, map_location=dev)
    attrs = dict(saved.attrs)
    registry = attrs.pop("registry_", None)
    if not isinstance(registry, dict) or _SETUP_ARGS_KEY not in registry:
        raise ValueError(f"{dir_path}: the saved model has no data registry; it is damaged.")
    saved_class = registry.get(_MODEL_NAME_KEY, cls.__name__)
    if saved_class != cls.__name__:
        raise ValueError(
            f"{dir_path} holds a {saved_class}, not a {cls.__name__}; load it "
            f"with {saved_class}.load."
        )
    if registry.get(_SETUP_METHOD_NAME, "setup_anndata") != "setup_anndata":
        raise ValueError(
            f"{dir_path}: models set up with "
            f"{registry.get(_SETUP_METHOD_NAME)} are not supported here."
        )
    if adata is None:
        path = os.path.join(os.fspath(dir_path), f"{prefix or ''}{SAVE_KEYS.ADATA_FNAME}")
        if os.path.exists(path):
            import anndata

            adata = anndata.read_h5ad(path)
        else:
            raise ValueError(
                f"{dir_path} holds no AnnData saved with the model (adata.h5ad); "
                "pass the data it was trained on: load(dir_path, adata=...)."
            )
    check_genes(dir_path, saved.var_names, adata)
    cls.setup_anndata(adata, source_registry=registry, **registry[_SETUP_ARGS_KEY])
    model = _initialize_model(cls, adata, registry, attrs, None)
    model.module.on_load(model, pyro_param_store=None)
    model.module.load_state_dict(saved.state_dict)
    model.to_device(dev)
    model.module.eval()
    model._validate_anndata(adata)
    return model


class SafePersistenceMixin:
    """``save``/``load`` in ensemblevi's format: atomic, strict about genes, no pickles.

    Sits before ``scvi.model.base.BaseModelClass`` in a model class's bases.
    """

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs: Any,
    ) -> None:
        """Save the model (weights and a JSON description), atomically.

        The model is written to a temporary folder inside ``dir_path`` and its files are
        renamed into place one by one, so a crash while saving leaves the previous model (or
        nothing) under the final names, never a partial one. Other files in ``dir_path``
        (an input ``.h5ad``, notes) are never removed. The weights go to ``model.pt``
        (tensors only) and everything else to ``model.json``: :meth:`load` reads them
        without unpickling anything.

        Parameters
        ----------
        dir_path
            Folder of the saved model (created if needed; it may hold other files).
        prefix
            Prefix of the file names (``{prefix}model.pt``, ``{prefix}model.json``).
        overwrite
            Replace a model saved there before. Without it, only an existing model file of
            this name (or its AnnData with ``save_anndata``) is refused.
        save_anndata
            Also save the AnnData (``{prefix}adata.h5ad``).
        **anndata_write_kwargs
            Passed to ``AnnData.write``.
        """
        save_model(
            self,
            dir_path,
            prefix=prefix,
            overwrite=overwrite,
            save_anndata=save_anndata,
            **anndata_write_kwargs,
        )

    @staticmethod
    def load_registry(
        dir_path: str | os.PathLike, prefix: str | None = None, *, trust: bool = False
    ) -> dict:
        """The data registry saved with a model, read from its JSON (nothing is unpickled).

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        prefix
            Prefix the model was saved with.
        trust
            Also read a folder in scvi-tools' pickled format (see :meth:`load`).
        """
        return read_saved_model(dir_path, prefix, trust=trust, weights=False).attrs["registry_"]

    @staticmethod
    def view_setup_args(
        dir_path: str | os.PathLike, prefix: str | None = None, *, trust: bool = False
    ) -> None:
        """Print the arguments a saved model's data was set up with.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        prefix
            Prefix the model was saved with.
        trust
            Also read a folder in scvi-tools' pickled format (see :meth:`load`).
        """
        from scvi.data import AnnDataManager

        registry = SafePersistenceMixin.load_registry(dir_path, prefix, trust=trust)
        AnnDataManager.view_setup_method_args(registry)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        prefix: str | None = None,
        *,
        trust: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
        backup_url: str | None = None,
        allowed_classes_names_list: list[str] | None = None,
        datamodule: Any = None,
    ) -> Self:
        """Load a saved model; refuses other genes, and never unpickles unless ``trust``.

        scvi-tools only warns when the genes differ, and a model then silently reads the
        wrong columns; here that is a ``ValueError`` that names the differences. A damaged
        or truncated model file is a ``ValueError`` naming the file.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        adata
            AnnData to attach (registered with :meth:`setup_anndata`; same genes, same
            order); ``None``: the one saved with the model.
        prefix
            Prefix the model was saved with.
        trust
            Also read a model in scvi-tools' pickled format (saved by scvi-tools, or by an
            ensemblevi before save format 2), through scvi-tools' own load. Unpickling runs
            any code the file carries, so a shared or downloaded model could run code on
            your machine: pass ``True`` only for files from a source you trust. Saving the
            loaded model again converts it.
        accelerator, device
            Where the model goes, as in scvi-tools.
        backup_url, allowed_classes_names_list, datamodule
            scvi-tools' options, refused with the reason (``model.base._refused``).

        Raises
        ------
        UntrustedModelError
            The folder needs unpickling and ``trust`` is ``False``; nothing was unpickled.
        """
        from ensemblevi.model.base._refused import REFUSED

        given = {
            "backup_url": backup_url,
            "datamodule": datamodule,
            "allowed_classes_names_list": allowed_classes_names_list,
        }
        for name, value in given.items():
            if value is not None:
                raise TypeError(f"{cls.__name__}.load got {name}: {REFUSED[('load', name)]}.")
        return load_model(
            cls, dir_path, adata, prefix=prefix, trust=trust, accelerator=accelerator, device=device
        )
