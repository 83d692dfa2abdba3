"""Keeping, saving and loading the scVI ensemble a scANVI ensemble started from.

An :class:`~ensemblevi.model.EnsembleSCANVI` made with ``from_ensemble_scvi`` keeps that
:class:`~ensemblevi.model.EnsembleSCVI` as ``source_scvi``: its novelty rule, not scANVI's
latent space (trained to separate the labelled types, so it folds an unseen type onto
them), decides which cells ``tl.label_uncertainty`` calls unknown (``docs/new_samples.md``).
This mixin saves it beside the model and loads it back, so a saved and reloaded model
decides as the one that was saved.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Self

from anndata import AnnData
from scvi import settings

#: after the model's own prefix: the file prefix of the scVI ensemble it started from
SOURCE_PREFIX = "source_scvi_"


class SourceScviMixin:
    """``save``/``load`` that keep a model's ``source_scvi`` with it.

    Sits before :class:`~ensemblevi.model.EnsembleSCVI` in a model class's bases.
    """

    source_scvi: Any = None

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs: Any,
    ) -> None:
        """Save the model as ``EnsembleSCVI.save`` does, with the scVI ensemble it started from.

        The scVI ensemble the model started from (if any) is saved first, in the same
        folder under ``{prefix}source_scvi_``; the model's JSON records a digest of its
        weights, so that :meth:`load` takes back only the ensemble saved with this model.

        Parameters
        ----------
        dir_path, prefix, overwrite, save_anndata, **anndata_write_kwargs
            As in :meth:`ensemblevi.model.EnsembleSCVI.save`.
        """
        from ensemblevi._compat import SAVE_KEYS, saved_model_file
        from ensemblevi._fingerprint import weights_digest

        folder = os.path.abspath(os.fspath(dir_path))
        own = [saved_model_file(folder, prefix)]
        if save_anndata:
            own.append(os.path.join(folder, f"{prefix or ''}{SAVE_KEYS.ADATA_FNAME}"))
        existing = [f for f in own if os.path.exists(f)]
        if existing and not overwrite:  # refused as the model's save would, before writing
            raise FileExistsError(
                f"{existing[0]} already exists; pass overwrite=True to replace the saved "
                "model (or save to another folder)."
            )
        source = self.source_scvi
        if source is not None:
            source.save(dir_path, prefix=f"{prefix or ''}{SOURCE_PREFIX}", overwrite=True)
        self.source_scvi_weights_ = None if source is None else weights_digest(source)
        super().save(
            dir_path,
            prefix=prefix,
            overwrite=overwrite,
            save_anndata=save_anndata,
            **anndata_write_kwargs,
        )

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
        **refused: Any,
    ) -> Self:
        """Load a saved model as ``EnsembleSCVI.load`` does, with the ensemble it started from.

        The source ensemble is read from the same folder, under the name :meth:`save`
        gives it (never a path read from the files), and only when its weights are those
        the model recorded; otherwise the model loads without it, with a warning, and its
        ``unknown`` rule is decided in its own latent space.

        Parameters
        ----------
        dir_path, adata, prefix, trust, accelerator, device
            As in :meth:`ensemblevi.model.EnsembleSCVI.load` (the source ensemble is never
            unpickled).
        **refused
            scvi-tools' ``backup_url``, ``allowed_classes_names_list``, ``datamodule``:
            refused with the reason, as :meth:`ensemblevi.model.EnsembleSCVI.load` does.
        """
        from ensemblevi._fingerprint import weights_digest

        from ._ensemble_scvi import EnsembleSCVI

        model = super().load(
            dir_path, adata, prefix, trust=trust, accelerator=accelerator, device=device, **refused
        )
        stamp = getattr(model, "source_scvi_weights_", None)
        if stamp is None:
            return model
        name = f"{prefix or ''}{SOURCE_PREFIX}"
        problem = None
        try:
            source = EnsembleSCVI.load(
                dir_path, model.adata, name, accelerator=accelerator, device=device
            )
        except (OSError, ValueError) as err:
            problem = f"it could not be read ({err})"
        else:
            if weights_digest(source) != stamp:
                problem = "its weights are not those saved with this model"
        if problem is not None:
            warnings.warn(
                f"The scVI ensemble {name}model.* in {dir_path} that this model started from "
                f"is left out: {problem}. label_uncertainty decides unknown in the scANVI's "
                "own latent space unless given novelty_model=; save the model again with "
                "its source_scvi to keep them together.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            return model
        model.source_scvi = source
        return model
