"""The ``scvi.model.SCVI`` parameters that EnsembleSCVI refuses, each with why and what instead.

``tests/test_scvi_contract.py`` checks every public method and parameter of
``scvi.model.SCVI``: EnsembleSCVI either accepts it by name or lists it here, and then
calling with it raises an error containing the listed text. ``**kwargs`` stands for
scvi-tools' catch-all keyword arguments of that method.
"""

from __future__ import annotations

from typing import Any

_FORWARD_KWARGS = (
    "scvi-tools passes them to the module's forward pass, but the ensemble's value comes "
    "from EnsembleVAE's all-member evaluation path, which takes no such arguments; call "
    "model.members[k].{method}(..., **kwargs) to run scvi-tools' own code on member k"
)

_MUDATA = (
    "EnsembleSCVI is set up on an AnnData of RNA counts, not a MuData; prepare the RNA "
    "modality with EnsembleSCVI.prepare_query_anndata(mdata['rna'], reference_model)"
)

#: ``(method, parameter)`` -> why EnsembleSCVI refuses it and what to use instead.
REFUSED: dict[tuple[str, str], str] = {
    ("__init__", "registry"): (
        "a model built from a registry alone (scvi-tools' setup_datamodule path) is not "
        "supported; build it with adata=None and pass the datamodule to train(datamodule=...), "
        "or with an AnnData registered by EnsembleSCVI.setup_anndata"
    ),
    ("load_query_data", "registry"): (
        "mapping a query without an AnnData is not supported; register the query AnnData "
        "and pass it as adata"
    ),
    ("load_query_data", "datamodule"): (
        "mapping a query through a custom datamodule is not supported; pass the query "
        "AnnData as adata (train(datamodule=...) takes a datamodule afterwards)"
    ),
    ("load_query_data", "transfer_batch"): (
        "only transfer_batch=True is supported (the query's new batches are appended to the "
        "reference's, as scvi-tools does by default)"
    ),
    **{
        ("prepare_query_mudata", p): _MUDATA
        for p in ("mdata", "reference_model", "return_reference_var_names", "inplace")
    },
    ("get_normalized_expression", "weights"): (
        "importance weights belong to one member's posterior; the ensemble averages its "
        "members with equal weight. Pass member=k (with weights='importance') for member k, "
        "scvi-tools' own computation"
    ),
    ("get_normalized_expression", "**importance_weighting_kwargs"): (
        "importance weighting is per member; pass them with member=k and weights='importance'"
    ),
    ("get_elbo", "**kwargs"): _FORWARD_KWARGS.format(method="get_elbo"),
    ("get_reconstruction_error", "**kwargs"): _FORWARD_KWARGS.format(
        method="get_reconstruction_error"
    ),
    ("load", "backup_url"): (
        "ensemblevi never downloads a model while loading it (no network at load time, and a "
        "downloaded file is untrusted); download it yourself, check it, and load the folder"
    ),
    ("load", "allowed_classes_names_list"): (
        "it is scvi-tools' allow-list for unpickling; ensemblevi's own saves are read without "
        "unpickling, and a pickled folder is read only with trust=True"
    ),
    ("load", "datamodule"): (
        "loading a model without an AnnData (scvi-tools' datamodule path) is not supported; "
        "pass the AnnData as adata, or none to use the one saved with the model"
    ),
    ("get_marginal_ll", "**kwargs"): (
        "scvi-tools passes them to the module's marginal_ll, but the ensemble's importance "
        "sampler takes only n_mc_samples and n_mc_samples_per_pass; call "
        "model.members[k].get_marginal_ll(..., **kwargs) to run scvi-tools' own code on member k"
    ),
}


def refuse_kwargs(method: str, kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` with :data:`REFUSED`'s text if ``kwargs`` is not empty.

    Parameters
    ----------
    method
        The EnsembleSCVI method whose catch-all keyword arguments ``kwargs`` are.
    kwargs
        What the caller passed beyond the method's named parameters.
    """
    if kwargs:
        raise TypeError(
            f"EnsembleSCVI.{method} got unexpected keyword arguments {sorted(kwargs)}: "
            f"{REFUSED[(method, '**kwargs')]}."
        )
