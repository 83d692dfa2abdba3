"""How an EnsembleSCVI builds its module: from an AnnData at ``__init__`` or from a
datamodule at ``train`` (a model made with ``adata=None``), in one place."""

from __future__ import annotations

import inspect
from typing import Any

from ensemblevi._seeding import forked_rng
from ensemblevi.nn._base import set_member_stream

from ._memory import check_weights_memory
from ._shards import member_slice


class ModuleBuilderMixin:
    """Builds ``self.module`` from the data's sizes, with every check the build needs.

    The host sets ``_module_cls``, ``_build_plan`` (``(n_members, seed, shard)``) and
    ``_module_kwargs`` (the module's arguments other than the data's sizes).
    """

    def _build_module(self, **data_sizes: Any) -> None:
        """Build ``self.module`` for data of these sizes: the one place a module is made.

        Called by ``__init__`` (sizes from the AnnData) or by :meth:`train` (sizes from the
        datamodule). Checks the weights fit in memory before allocating them, seeds the
        initialisation and, for a shard, slices its members out of the whole ensemble.

        Parameters
        ----------
        **data_sizes
            ``n_input``, ``n_batch``, ``n_labels``, ``n_continuous_cov``,
            ``n_cats_per_cov`` (and the latent library size's prior).
        """
        n_members, seed, shard = self._build_plan
        module_args = {**data_sizes, **self._module_kwargs}
        # a raw allocation error (or the OOM killer) is all --members 100000 would give
        check_weights_memory(
            lambda n: self._module_cls(n_members=n, **module_args),
            n_members + (shard[1] if shard else 0),
        )
        with forked_rng(seed):
            full = self._module_cls(n_members=shard[1] if shard else n_members, **module_args)
        if shard is None:
            self.module = full
            return
        with forked_rng():  # its initial weights are overwritten: leave the caller's streams
            self.module = self._module_cls(n_members=n_members, **module_args)
        self.module.load_state_dict(
            member_slice(full.state_dict(), self.module.state_dict(), shard[0])
        )
        set_member_stream(self.module, *shard)

    def _build_module_from_datamodule(self, datamodule: Any) -> None:
        """Build the module of a model made without an AnnData from ``datamodule``'s sizes."""
        if not hasattr(datamodule, "n_vars") or not hasattr(datamodule, "n_batch"):
            raise ValueError(
                "This EnsembleSCVI was built without an AnnData, so its module is sized from "
                "the datamodule: set datamodule.n_vars and datamodule.n_batch (and n_labels, "
                "n_continuous_cov, n_cats_per_cov where the data has them)."
            )
        if not self._module_kwargs["use_observed_lib_size"]:
            raise ValueError(
                "use_observed_lib_size=False needs the library-size prior of an AnnData; a "
                "model built from a datamodule must use the observed library size."
            )
        self._build_module(
            n_input=datamodule.n_vars,
            n_batch=datamodule.n_batch,
            n_labels=getattr(datamodule, "n_labels", 1),
            n_continuous_cov=getattr(datamodule, "n_continuous_cov", 0),
            n_cats_per_cov=getattr(datamodule, "n_cats_per_cov", None),
        )

    def _get_init_params(self, locals: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """scvi-tools' saved constructor arguments, read with the model class's signature.

        ``locals`` are those of ``EnsembleSCVI.__init__`` (its ``__class__`` cell names the
        class). A subclass whose ``__init__`` only changes defaults
        (``def __init__(self, adata=None, n_members=2, **kwargs)``) names them otherwise,
        and scvi-tools, reading them with the subclass's signature, would drop
        ``**module_kwargs`` from what ``load`` rebuilds the model with.

        Parameters
        ----------
        locals
            ``locals()`` of the model's ``__init__``.
        """
        owner = locals.get("__class__", type(self))
        params = inspect.signature(owner.__init__).parameters.values()
        given = {k: v for k, v in locals.items() if k not in ("self", "adata", "__class__")}
        named = {p.name for p in params if p.kind != p.VAR_KEYWORD and p.name in given}
        var = [p.name for p in params if p.kind == p.VAR_KEYWORD]
        return {
            "kwargs": {k: given[k] for k in var if k in given},
            "non_kwargs": {k: given[k] for k in named},
        }
