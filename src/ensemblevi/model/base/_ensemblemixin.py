"""Helpers every ensemble output mixin uses: members, genes, cells and seeded minibatches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi.utils import track

from ensemblevi._seeding import forked_rng
from ensemblevi.data._validate import check_finite_counts


class EnsembleMixin:
    """Member selection, gene masks and seeded minibatches of an ensemble model.

    Expects what ``scvi.model.base.BaseModelClass`` provides (``module``, ``device``,
    ``_validate_anndata``, ``_make_data_loader``) and ``n_members``.
    """

    def _gene_mask(self, adata: AnnData, gene_list: Sequence[str] | None) -> np.ndarray:
        if gene_list is None:
            return np.ones(adata.n_vars, dtype=bool)
        gene_list = [gene_list] if isinstance(gene_list, str) else list(gene_list)
        missing = [g for g in gene_list if g not in adata.var_names]
        if missing:
            raise ValueError(
                f"{len(missing)} gene(s) of gene_list are not in adata.var_names, e.g. "
                f"{missing[:5]}. The model knows {adata.n_vars} genes; check the names "
                "(symbols vs Ensembl ids) and that the genes survived HVG selection."
            )
        return adata.var_names.isin(gene_list)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        """scvi-tools' check of ``adata``, after checking its genes against the model's.

        Every ``adata=`` entry point goes through here. The same genes in another order
        give a copy in the model's order (with a warning), so each output is computed and
        labelled gene by gene; missing or extra genes are refused with the fix. The
        model's own AnnData, or genes in the model's order, pass at the cost of one
        comparison of the names.
        """
        if adata is not None and adata is not getattr(self, "adata", None):
            adata = _in_model_gene_order(adata, _model_var_names(self))
        # registering an AnnData the model has not seen checks its counts on rows drawn
        # with numpy's global generator: the caller's streams must not move for that
        with forked_rng():
            return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    def _check_member(self, member: int | None) -> int | None:
        if member is not None and not 0 <= member < self.n_members:
            raise IndexError(f"member {member} out of range: the ensemble has {self.n_members}.")
        return member

    @contextmanager
    def _only(self, member: int | None):
        """Compute only ``member`` inside the block (all members for ``None``)."""
        if member is None:
            yield
        else:
            with self.module.member(self._check_member(member)):
                yield

    def _check_dataloader(
        self,
        method: str,
        adata: AnnData | None,
        dataloader: Iterable | None,
        **ignored: Any,
    ) -> None:
        """Refuse ``adata`` or loader arguments next to a custom ``dataloader``.

        scvi-tools raises for ``adata`` and ignores the others; here nothing is ignored.
        ``ignored`` are the arguments a custom loader makes meaningless (``indices``,
        ``batch_size``, ``data_loader_kwargs``), given as ``name=value``.
        """
        if dataloader is None:
            return
        if adata is not None:
            raise ValueError(
                f"{method}: pass either adata or dataloader, not both (a custom dataloader "
                "already holds the cells)."
            )
        given = sorted(
            name for name, value in ignored.items() if value is not None and not _empty(value)
        )
        if given:
            raise ValueError(
                f"{method}: {', '.join(given)} cannot apply to a custom dataloader, which "
                "already fixes the cells and minibatches; build the loader with them instead, "
                "e.g. model._make_data_loader(adata, indices=..., batch_size=...)."
            )

    def _seeded_batches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        seed: int | None,
        description: str | None = None,
        dataloader: Iterable[dict[str, torch.Tensor]] | None = None,
        data_loader_kwargs: dict | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Minibatches on the model's device, module in eval mode, under a private seeded RNG.

        The global RNG is left as it was, so outputs are reproducible for a ``seed`` without
        disturbing the caller's random state. ``description`` shows a progress bar. A custom
        ``dataloader`` (minibatches as scvi-tools' loaders yield them) replaces the one built
        from ``adata``, ``indices``, ``batch_size`` and ``data_loader_kwargs``.
        """
        if dataloader is None:
            if isinstance(adata, AnnData):
                # a NaN count makes every output nan without an error; integer matrices skip it
                check_finite_counts(adata, self.registry_["setup_args"].get("layer"), indices)
            dataloader = self._make_data_loader(
                adata=adata, indices=indices, batch_size=batch_size, **(data_loader_kwargs or {})
            )
        self.module.eval()
        device = self.device
        with forked_rng(seed):
            bar = {"description": description or "", "disable": description is None}
            for tensors in track(dataloader, style="tqdm", **bar):
                yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in tensors.items()}

    def _cell_names(self, adata: AnnData, indices: Sequence[int] | None) -> pd.Index:
        """Names of the cells ``indices`` (all for ``None``) of an already validated AnnData."""
        return adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]


def _empty(value: Any) -> bool:
    """An empty dict of loader keyword arguments (what callers pass for none)."""
    return isinstance(value, dict) and not value


def _model_var_names(model) -> pd.Index | None:
    """The genes the model was set up with, in its order (``None``: not known)."""
    if getattr(model, "adata", None) is not None:
        return model.adata.var_names
    try:  # a model loaded without its AnnData: the registry keeps the names
        state = model.registry_["field_registries"]["X"]["state_registry"]
    except (AttributeError, KeyError, TypeError):
        return None
    names = state.get("column_names")
    return None if names is None else pd.Index(names)


def _in_model_gene_order(adata: AnnData, genes: pd.Index | None) -> AnnData:
    """``adata`` with its genes in the model's order (``genes``), or a named error."""
    if genes is None or adata.var_names.equals(genes):  # the fast path: one comparison
        return adata
    given = pd.Index(adata.var_names)
    missing, extra = genes.difference(given), given.difference(genes)
    if len(missing) or len(extra) or not given.is_unique:
        parts = (
            [
                f"{len(missing):,} of the model's {len(genes):,} genes are missing (e.g. "
                f"{list(missing[:3])})"
            ]
            if len(missing)
            else []
        )
        if len(extra):
            parts.append(f"{len(extra):,} genes are not the model's (e.g. {list(extra[:3])})")
        problem = "; ".join(parts) or "its gene names are not unique"
        raise ValueError(
            f"The AnnData's genes do not match the model's: {problem}. Pass the model's genes "
            "in its order (adata[:, model.adata.var_names], after adding any missing gene "
            "with zero counts), or map new data with a different gene set through "
            "load_query_data (scArches), which pads missing genes."
        )
    import warnings

    warnings.warn(
        f"The AnnData has the model's {len(genes):,} genes in another order; the model reads "
        "a copy in its own order, so outputs are computed and labelled gene by gene (functions "
        "that write results into the AnnData write them into that copy: pass "
        "adata[:, model.adata.var_names].copy() to keep them).",
        UserWarning,
        stacklevel=4,
    )
    out = adata[:, genes].copy()
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):  # the copy is registered on its own
        out.uns.pop(key, None)
    return out
