"""The checks every tool runs on its arguments before any work: usage errors that name
the fix (``TypeError``/``ValueError``), never an ``AttributeError`` from deep inside."""

from __future__ import annotations

from typing import Any

from anndata import AnnData


def validated(model: Any, adata: AnnData | None, tool: str, *, register: bool = True) -> AnnData:
    """``model``'s check of ``adata`` (scvi-tools' ``_validate_anndata``), after checking
    that ``model`` is an ensemble model at all.

    Parameters
    ----------
    model
        What the caller passed as the model.
    adata
        What the caller passed as the data (``None``: the model's own).
    tool
        The tool's name under ``ev.tl``, for the message.
    register
        ``False``: check the types only (``adata`` was validated by the caller already).

    Returns
    -------
    The AnnData to use, registered with the model.

    Raises
    ------
    TypeError
        ``model`` is not an :class:`~ensemblevi.model.EnsembleSCVI` (an AnnData passed
        first, say), or ``adata`` is not an AnnData.
    """
    from ensemblevi.model import EnsembleSCVI

    if not isinstance(model, EnsembleSCVI):
        raise TypeError(
            f"ev.tl.{tool} takes the trained model first, then the data: "
            f"ev.tl.{tool}(model, adata) with an ev.model.EnsembleSCVI (or "
            f"EnsembleSCANVI); got {type(model).__name__} as the model."
        )
    if adata is not None and not isinstance(adata, AnnData):
        raise TypeError(
            f"ev.tl.{tool}(model, adata): adata must be an AnnData (or None for the "
            f"model's own), got {type(adata).__name__}."
        )
    if not register:
        return model.adata if adata is None else adata
    return model._validate_anndata(adata)
