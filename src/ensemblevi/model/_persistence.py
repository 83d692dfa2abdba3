"""Atomic ``save`` and a gene-checking ``load`` for the ensemble model classes."""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, Self

import pandas as pd
from anndata import AnnData

from ensemblevi._compat import existing_model_file, saved_model_file, saved_var_names


class SafePersistenceMixin:
    """scvi-tools' ``save``/``load`` made atomic and strict about genes.

    Sits before ``scvi.model.base.BaseModelClass`` in a model class's bases.
    """

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs: Any,
    ) -> None:
        """``scvi-tools``' save, made atomic, that touches only the files it writes.

        The model is written to a temporary folder inside ``dir_path`` and its files are
        renamed into place one by one, so a crash while saving leaves the previous model (or
        nothing) under the final names, never a partial one. Other files in ``dir_path``
        (an input ``.h5ad``, notes) are never removed.

        Parameters
        ----------
        dir_path
            Folder of the saved model (created if needed; it may hold other files).
        prefix
            Prefix of the file names (``{prefix}model.pt``).
        overwrite
            Replace a model saved there before. Without it, only an existing model file of
            this name (or its AnnData with ``save_anndata``) is refused.
        save_anndata
            Also save the AnnData (``{prefix}adata.h5ad``).
        **kwargs
            Passed to scvi-tools' ``save``.
        """
        from ensemblevi._files import TMP_PREFIX, move_into

        dir_path = os.path.abspath(os.fspath(dir_path))
        model_file = saved_model_file(dir_path, prefix)
        own = [model_file] + ([os.path.join(dir_path, f"{prefix or ''}adata.h5ad")]
                              if save_anndata else [])  # fmt: skip
        existing = [f for f in own if os.path.exists(f)]
        if existing and not overwrite:
            raise FileExistsError(
                f"{existing[0]} already exists; pass overwrite=True to replace the saved model "
                "(or save to another folder)."
            )
        os.makedirs(dir_path, exist_ok=True)
        # inside dir_path: same file system for the renames, and a folder an interrupted
        # save leaves behind carries the prefix that clean_temporaries removes
        tmp = os.path.join(dir_path, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
        try:
            super().save(tmp, prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs)
            move_into(tmp, dir_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        prefix: str | None = None,
        **kwargs: Any,
    ) -> Self:
        """``scvi-tools``' load; refuses an AnnData whose genes differ from the model's.

        scvi-tools only warns when the genes differ, and a model then silently reads the
        wrong columns; here that is a ``ValueError`` that names the differences. A damaged
        or truncated model file is a ``ValueError`` naming the file, not torch's unpickling
        traceback.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        adata
            AnnData to attach (registered with :meth:`setup_anndata`; same genes, same
            order); ``None``: the one saved with the model.
        prefix
            Prefix the model was saved with.
        **kwargs
            Passed to scvi-tools' ``load`` (``accelerator``, ``device``, ...).
        """
        model_file = existing_model_file(dir_path, prefix, cls.__name__)
        try:
            saved_vars = saved_var_names(dir_path, prefix)
        except Exception as err:  # torch raises UnpicklingError, EOFError, RuntimeError, ...
            raise ValueError(
                f"{model_file} is not a readable saved model ({type(err).__name__}: {err}); it "
                "is truncated or damaged, e.g. by a process killed while copying it. Restore "
                "it from a copy or train the model again."
            ) from err
        if adata is not None:
            given = pd.Index(adata.var_names.astype(str))
            if not saved_vars.equals(given):
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
        return super().load(dir_path, adata=adata, prefix=prefix, **kwargs)
